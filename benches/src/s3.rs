//! One object-store operation in this process, for `benches/s3_bench.py`: the model is built (or
//! the file opened) before the timer starts; prints a JSON line with the seconds the operation
//! took and the bytes and requests exchanged. Credentials and endpoint come from the `AWS_*`
//! environment.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use safeckpt_store::{Location, RemoteSet, StoreOptions, upload_tensors};
use safeckpt_writer::WriteOptions;

use crate::model::StateDict;

pub(crate) fn run(op: &str, url: &str, size_mib: usize, tensor: Option<&str>, store: StoreOptions) -> Result<()> {
    let loc = match Location::parse(url, &store)? {
        Location::Object(o) => o,
        Location::Local(_) => bail!("{url} is not an object-store URL"),
    };
    let (seconds, extra) = match op {
        "write-local" => {
            let sd = StateDict::transformer(size_mib);
            let path = std::path::PathBuf::from(tensor.context("write-local needs --tensor PATH")?);
            safeckpt_writer::write_file(&path, &sd.raw(), None, &WriteOptions::new().fsync(false))?;
            (0.0, serde_json::json!({"bytes": sd.bytes()}))
        }
        "save" => {
            let sd = StateDict::transformer(size_mib);
            let t = Instant::now();
            let s = upload_tensors(&loc, &sd.raw(), None, &WriteOptions::new(), &|_| {})?;
            (t.elapsed().as_secs_f64(), serde_json::json!({"bytes": s.bytes}))
        }
        "load" => {
            let t = Instant::now();
            let set = RemoteSet::open(&loc)?;
            let names = set.names();
            let data = set.read_tensors(&names)?;
            let secs = t.elapsed().as_secs_f64();
            let bytes: usize = data.iter().map(|d| d.len()).sum();
            (secs, serde_json::json!({"bytes": bytes}))
        }
        "tensor" => {
            let name = tensor.context("tensor needs --tensor NAME")?;
            let t = Instant::now();
            let set = RemoteSet::open(&loc)?;
            let data = set.read_tensors(&[name])?;
            let secs = t.elapsed().as_secs_f64();
            let file: u64 = set.shards().iter().map(|f| f.size()).sum();
            (secs, serde_json::json!({"tensor_bytes": data[0].len(), "file_bytes": file}))
        }
        other => bail!("unknown operation `{other}`"),
    };
    let s = loc.store.stats();
    let mut doc = serde_json::json!({"seconds": seconds, "gets": s.gets, "bytes_in": s.bytes_in, "puts": s.puts, "bytes_out": s.bytes_out});
    if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    println!("{doc}");
    Ok(())
}
