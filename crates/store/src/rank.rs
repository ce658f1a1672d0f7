//! Multi-rank saves into an object store: the protocol of [`safeckpt_writer::rank`] with objects
//! for files. Each rank uploads its shard, then its done marker; the coordinator polls for the
//! markers, uploads the index last (the commit), then deletes the markers.

use std::time::{Duration, Instant};

use safeckpt_format::{Metadata, TensorSource};
use safeckpt_writer::WriteOptions;
use safeckpt_writer::index_file_name;
use safeckpt_writer::rank::{
    RankMarker, RankTensor, marker_file_name, parse_marker, plan_index, plan_rank, stored_names,
};

use crate::block_on;
use crate::error::{Result, StoreError};
use crate::location::ObjectLocation;
use crate::remote::get_all;
use crate::upload::{delete, put_bytes, upload_tensors};

/// Uploads this rank's shard below `dir`, then its done marker. Returns the marker.
#[allow(clippy::too_many_arguments)]
pub fn save_rank_to<S: TensorSource>(
    dir: &ObjectLocation,
    prefix: &str,
    rank: usize,
    world: usize,
    id: &str,
    tensors: &[RankTensor<S>],
    metadata: Option<Metadata>,
    opts: &WriteOptions,
) -> Result<RankMarker> {
    let marker = plan_rank(prefix, rank, world, id, tensors)?;
    let named = stored_names(tensors);
    upload_tensors(&dir.join(&marker.file), &named, metadata, &opts.clone().overwrite(true), &|_| {})?;
    let json = serde_json::to_vec(&marker).map_err(|e| StoreError::invalid(dir.url(), e.to_string()))?;
    put_bytes(&dir.join(&marker_file_name(prefix, rank, world)), json)?;
    Ok(marker)
}

/// Waits (up to `timeout`) for the markers of all `world` ranks of save `id` below `dir`, uploads
/// the index, deletes the markers. Returns the index's location.
pub fn commit_ranks_to(
    dir: &ObjectLocation,
    prefix: &str,
    world: usize,
    id: &str,
    timeout: Duration,
) -> Result<ObjectLocation> {
    if world == 0 {
        return Err(StoreError::invalid(dir.url(), "a world of 0 ranks"));
    }
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    let markers = loop {
        let mut found = Vec::with_capacity(world);
        let mut waiting = Vec::new();
        for rank in 0..world {
            let loc = dir.join(&marker_file_name(prefix, rank, world));
            match block_on(get_all(&loc, safeckpt_writer::rank::MAX_MARKER_LEN)) {
                Ok(bytes) => {
                    let m = parse_marker(std::path::Path::new(&loc.url()), &bytes)?;
                    if m.id != id {
                        waiting.push(format!("{rank} (its marker is from save `{}`)", m.id));
                    } else if m.rank != rank || m.world != world {
                        return Err(StoreError::invalid(
                            loc.url(),
                            format!("marker says rank {} of {}", m.rank, m.world),
                        ));
                    } else {
                        found.push(m);
                    }
                }
                Err(e) if e.is_not_found() => waiting.push(rank.to_string()),
                Err(e) => return Err(e),
            }
        }
        if waiting.is_empty() {
            break found;
        }
        if start.elapsed() >= timeout {
            return Err(StoreError::invalid(
                dir.url(),
                format!("after {timeout:.0?}, still waiting for rank(s) {} of save `{id}`", waiting.join(", ")),
            ));
        }
        std::thread::sleep(pause.min(timeout.saturating_sub(start.elapsed())));
        pause = (pause * 2).min(Duration::from_millis(500));
    };
    let index = plan_index(&markers)?;
    let loc = dir.join(&index_file_name(prefix));
    put_bytes(&loc, index.to_json().into_bytes())?;
    for rank in 0..world {
        delete(&dir.join(&marker_file_name(prefix, rank, world)))?;
    }
    Ok(loc)
}
