//! Ranged reads: nearby ranges coalesced into one request, long ones cut into parts, parts
//! fetched in parallel.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use crate::error::{Result, StoreError};
use crate::location::ObjectLocation;

/// Ranges closer than this are fetched by one request (the gap is read and dropped).
pub const COALESCE_GAP: u64 = 256 << 10;

/// The requests that cover `ranges`: sorted, merged where closer than [`COALESCE_GAP`], cut into
/// pieces of at most `part` bytes.
pub fn plan_requests(ranges: &[Range<u64>], part: u64) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.iter().filter(|r| r.start < r.end).cloned().collect();
    sorted.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::new();
    for r in sorted {
        match merged.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(COALESCE_GAP) => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    let part = part.max(1);
    let mut out = Vec::new();
    for m in merged {
        let mut s = m.start;
        while s < m.end {
            let e = s.saturating_add(part).min(m.end);
            out.push(s..e);
            s = e;
        }
    }
    out
}

/// Fetches `ranges` of an object; returns their bytes in the order asked.
pub(crate) async fn fetch_ranges(loc: &ObjectLocation, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
    let opts = &loc.store.opts;
    let requests = plan_requests(ranges, opts.part_size as u64);
    let parts: Vec<(Range<u64>, Bytes)> = futures::stream::iter(requests.into_iter().map(|r| async move {
        let bytes =
            loc.store.inner.get_range(&loc.path, r.clone()).await.map_err(|e| StoreError::object(loc.url(), e))?;
        loc.store.stats.got(bytes.len() as u64);
        if bytes.len() as u64 != r.end - r.start {
            return Err(StoreError::invalid(
                loc.url(),
                format!(
                    "asked for bytes {}..{}, got {} bytes (the object changed or is shorter)",
                    r.start,
                    r.end,
                    bytes.len()
                ),
            ));
        }
        Ok((r, bytes))
    }))
    .buffered(opts.concurrency.max(1))
    .try_collect()
    .await?;
    ranges.iter().map(|r| assemble(&parts, r.clone(), loc)).collect()
}

/// The bytes of `r` from the fetched `parts` (sorted, non-overlapping): a zero-copy slice when one
/// part holds it all.
fn assemble(parts: &[(Range<u64>, Bytes)], r: Range<u64>, loc: &ObjectLocation) -> Result<Bytes> {
    if r.start >= r.end {
        return Ok(Bytes::new());
    }
    let first = parts.partition_point(|(p, _)| p.end <= r.start);
    let missing = || StoreError::invalid(loc.url(), format!("bytes {}..{} were not fetched", r.start, r.end));
    let (p, b) = parts.get(first).ok_or_else(missing)?;
    if p.start <= r.start && r.end <= p.end {
        return Ok(b.slice((r.start - p.start) as usize..(r.end - p.start) as usize));
    }
    let mut out = BytesMut::with_capacity((r.end - r.start) as usize);
    let mut at = r.start;
    for (p, b) in &parts[first..] {
        if at >= r.end {
            break;
        }
        if p.start > at {
            return Err(missing());
        }
        let end = r.end.min(p.end);
        out.extend_from_slice(&b[(at - p.start) as usize..(end - p.start) as usize]);
        at = end;
    }
    if at < r.end {
        return Err(missing());
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_coalesce_and_split() {
        let r = plan_requests(&[0..10, 20..30, (1 << 20)..(1 << 20) + 5], 1 << 30);
        assert_eq!(r, [0..30, (1 << 20)..(1 << 20) + 5]);
        let whole = 0..100;
        let r = plan_requests(std::slice::from_ref(&whole), 30);
        assert_eq!(r, [0..30, 30..60, 60..90, 90..100]);
        let r = plan_requests(&[50..60, 0..10, 5..8, 9..9], 1 << 20);
        assert_eq!((r.len(), r.first()), (1, Some(&(0..60))));
    }
}
