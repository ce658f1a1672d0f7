//! One entry point for local paths and URLs: open a file or set, or save one, wherever it is.

use std::ops::Range;

use safeckpt_format::{Dtype, Metadata, TensorSource};
use safeckpt_reader::{ShardedReader, VerifyReport};
use safeckpt_writer::WriteOptions;

use crate::error::Result;
use crate::location::{Location, StoreOptions};
use crate::remote::RemoteSet;
use crate::upload::upload_tensors;

/// A file or sharded set, local (memory-mapped) or in an object store (read by ranged requests).
#[derive(Debug)]
pub enum AnySet {
    /// Local.
    Local(ShardedReader),
    /// In an object store.
    Remote(RemoteSet),
}

/// Opens a safetensors file or index given as a path or URL.
pub fn open(path_or_url: &str, opts: &StoreOptions) -> Result<AnySet> {
    Ok(match Location::parse(path_or_url, opts)? {
        Location::Local(p) => AnySet::Local(ShardedReader::open(p)?),
        Location::Object(o) => AnySet::Remote(RemoteSet::open(&o)?),
    })
}

/// Writes tensors as one safetensors file to a path or URL (atomically either way).
pub fn save<S: TensorSource>(
    path_or_url: &str,
    tensors: &[(impl AsRef<str> + Sync, S)],
    metadata: Option<Metadata>,
    opts: &WriteOptions,
    store: &StoreOptions,
) -> Result<u64> {
    Ok(match Location::parse(path_or_url, store)? {
        Location::Local(p) => safeckpt_writer::write_file(p, tensors, metadata, opts)?.bytes,
        Location::Object(o) => upload_tensors(&o, tensors, metadata, opts, &|_| {})?.bytes,
    })
}

impl AnySet {
    /// The global tensors (whole ones and split ones, not their pieces), sorted.
    pub fn global_names(&self) -> Vec<String> {
        match self {
            AnySet::Local(s) => s.global_names().into_iter().map(str::to_string).collect(),
            AnySet::Remote(s) => s.global_names().into_iter().map(str::to_string).collect(),
        }
    }

    /// Dtype and shape of a global tensor.
    pub fn global_info(&self, name: &str) -> Option<(Dtype, Vec<usize>)> {
        match self {
            AnySet::Local(s) => s.global(name).map(|g| (g.dtype(), g.shape().to_vec())),
            AnySet::Remote(s) => s.global_info(name),
        }
    }

    /// The bytes of a rectangular region of a global tensor.
    pub fn read_region(&self, name: &str, region: &[Range<usize>]) -> Result<Vec<u8>> {
        Ok(match self {
            AnySet::Local(s) => s.read_region(name, region)?,
            AnySet::Remote(s) => s.read_region(name, region)?,
        })
    }

    /// A whole global tensor.
    pub fn read_global(&self, name: &str) -> Result<Vec<u8>> {
        Ok(match self {
            AnySet::Local(s) => s.read_global(name)?,
            AnySet::Remote(s) => s.read_global(name)?,
        })
    }

    /// Verifies every checksum.
    pub fn verify(&self) -> Result<Vec<VerifyReport>> {
        Ok(match self {
            AnySet::Local(s) => s.verify()?,
            AnySet::Remote(s) => s.verify()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use safeckpt_format::RawTensor;

    use super::*;

    #[test]
    fn paths_and_memory_urls_behave_alike() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("m.safetensors");
        let data: Vec<u8> = (0..24).collect();
        let tensors = [("w", RawTensor::borrowed(Dtype::U8, vec![4, 6], &data))];
        let opts = StoreOptions::default();
        for target in [local.to_str().unwrap(), "memory:///any/m.safetensors", "file:///dev/null/../x"] {
            if target.starts_with("file:") {
                assert!(save(target, &tensors, None, &WriteOptions::new().fsync(false), &opts).is_err());
                continue;
            }
            save(target, &tensors, None, &WriteOptions::new().fsync(false), &opts).unwrap();
            let set = open(target, &opts).unwrap();
            assert_eq!(set.global_names(), ["w"]);
            assert_eq!(set.global_info("w"), Some((Dtype::U8, vec![4, 6])));
            assert_eq!(set.read_region("w", &[1..3, 2..4]).unwrap(), [8, 9, 14, 15]);
            assert_eq!(set.read_global("w").unwrap(), data);
            assert!(set.verify().unwrap().iter().all(|r| r.is_ok() && r.has_checksums));
        }
    }
}
