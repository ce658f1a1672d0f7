//! VarBuilder backends: whole tensors, tensor-parallel blocks (candle's `Shard` hints) on any
//! dimension, and tensors a multi-rank save stored as pieces.

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::Shard;
use safeckpt_candle::{sharded_var_builder, to_safetensors, var_builder};
use safeckpt_format::RawTensor;
use safeckpt_reader::chunk_range;
use safeckpt_writer::WriteOptions;
use safeckpt_writer::rank::{RankTensor, commit_ranks, save_rank};

/// (name, global tensor, dimension a multi-rank save splits it along, if any).
fn model() -> Vec<(&'static str, Tensor, Option<usize>)> {
    let cpu = &Device::Cpu;
    let w = Tensor::arange(0f32, 96.0, cpu).unwrap().reshape((8, 12)).unwrap();
    let b = Tensor::arange(100f32, 112.0, cpu).unwrap();
    let e = Tensor::arange(0f32, 192.0, cpu).unwrap().reshape((4, 6, 8)).unwrap().to_dtype(DType::BF16).unwrap();
    let i = Tensor::new(&[5i64, -1, 7, 9, 11, 13], cpu).unwrap();
    vec![("w", w, Some(0)), ("b", b, None), ("e", e, Some(2)), ("i", i, None)]
}

fn bytes_of(t: &Tensor) -> Vec<u8> {
    let flat = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => flat.to_vec1::<f32>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::BF16 => flat.to_vec1::<half::bf16>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::I64 => flat.to_vec1::<i64>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect(),
        other => panic!("{other:?}"),
    }
}

fn raw(t: &Tensor) -> RawTensor<'static> {
    RawTensor::owned(to_safetensors(t.dtype()).unwrap(), t.dims().to_vec(), bytes_of(t))
}

/// The model as one plain file, and as a four-rank save with `w` and `e` split into pieces.
fn write_both(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let plain = dir.join("plain.safetensors");
    let tensors: Vec<_> = model().iter().map(|(n, t, _)| (*n, raw(t))).collect();
    safeckpt_writer::write_file(&plain, &tensors, None, &WriteOptions::new().fsync(false)).unwrap();
    let ranks = dir.join("ranks");
    let opts = WriteOptions::new().fsync(false);
    for rank in 0..4 {
        let mut mine = Vec::new();
        for (name, t, split) in model() {
            match split {
                None if rank == 0 => mine.push(RankTensor::whole(name, raw(&t))),
                None => {}
                Some(dim) => {
                    let r = chunk_range(t.dims()[dim], rank, 4);
                    let piece = t.narrow(dim, r.start, r.end - r.start).unwrap().contiguous().unwrap();
                    let mut offset = vec![0; t.rank()];
                    offset[dim] = r.start;
                    mine.push(RankTensor::piece(name, raw(&piece), t.dims().to_vec(), offset));
                }
            }
        }
        save_rank(&ranks, "model", rank, 4, "s", &mine, None, &opts).unwrap();
    }
    let index = commit_ranks(&ranks, "model", 4, "s", Duration::from_secs(5), &opts).unwrap();
    (plain, index)
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.dims() == b.dims() && a.dtype() == b.dtype() && bytes_of(a) == bytes_of(b)
}

#[test]
fn whole_tensors_load_from_files_and_from_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, index) = write_both(dir.path());
    for path in [&plain, &index, &dir.path().join("ranks")] {
        for (name, t, _) in model() {
            let vb = var_builder(path, t.dtype(), &Device::Cpu).unwrap();
            assert!(vb.contains_tensor(name));
            let got = vb.get(t.dims(), name).unwrap();
            assert!(same(&got, &t), "{name} from {}", path.display());
        }
    }
    // Pieces are not tensors of the model; a wrong shape is named.
    let vb = var_builder(&index, DType::F32, &Device::Cpu).unwrap();
    assert!(!vb.contains_tensor("w@0,0"));
    let e = vb.get((12, 8), "w").unwrap_err().to_string();
    assert!(e.contains("tensor `w` has shape [8, 12], the model expects [12, 8]"), "{e}");
}

#[test]
fn each_rank_gets_its_block_along_any_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, index) = write_both(dir.path());
    for path in [&plain, &index] {
        for (name, t, _) in model() {
            let vb = sharded_var_builder(path, t.dtype(), &Device::Cpu).unwrap();
            for dim in 0..t.rank() {
                for world in [1, 2, 4] {
                    if t.dims()[dim] % world != 0 {
                        continue;
                    }
                    let block = t.dims()[dim] / world;
                    for rank in 0..world {
                        let got = vb.get_with_hints(t.dims(), name, Shard { dim, rank, world_size: world }).unwrap();
                        let want = t.narrow(dim, rank * block, block).unwrap();
                        assert!(same(&got, &want), "{name} dim {dim} rank {rank}/{world} from {}", path.display());
                    }
                }
            }
        }
    }
    // A cast on the way, as candle's backends do.
    let vb = sharded_var_builder(&index, DType::F32, &Device::Cpu).unwrap();
    let got = vb.get_with_hints((), "e", Shard { dim: 1, rank: 1, world_size: 2 }).unwrap();
    assert_eq!(got.dtype(), DType::F32);
    assert_eq!(got.dims(), [4, 3, 8]);
}

#[test]
fn blocks_that_do_not_divide_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, index) = write_both(dir.path());
    let vb = sharded_var_builder(&index, DType::F32, &Device::Cpu).unwrap();
    let e = vb.get_with_hints((), "w", Shard { dim: 0, rank: 0, world_size: 3 }).unwrap_err();
    assert!(matches!(e, candle_core::Error::ShapeMismatchSplit { dim: 0, n_parts: 3, .. }), "{e}");
    let e = vb.get_with_hints((), "b", Shard { dim: 1, rank: 0, world_size: 2 }).unwrap_err().to_string();
    assert!(e.contains("cannot give block 0 of 2 along dimension 1"), "{e}");
    let e = vb.get_with_hints((), "nope", Shard { dim: 0, rank: 0, world_size: 2 }).unwrap_err().to_string();
    assert!(e.contains("no tensor `nope`"), "{e}");
}

#[cfg(feature = "object-store")]
#[test]
fn ranks_read_only_their_blocks_from_object_storage() {
    use safeckpt_candle::store::{RemoteSet, StoreOptions, upload_file};
    use safeckpt_candle::{remote_sharded_var_builder, remote_var_builder};
    let Some(server) = crate::s3::Server::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (plain, index) = write_both(dir.path());
    upload_file(&plain, &server.location("tp/plain.safetensors", StoreOptions::default()), &|_| {}).unwrap();
    for e in std::fs::read_dir(index.parent().unwrap()).unwrap() {
        let p = e.unwrap().path();
        let key = format!("tp/ranks/{}", p.file_name().unwrap().to_string_lossy());
        upload_file(&p, &server.location(&key, StoreOptions::default()), &|_| {}).unwrap();
    }
    for key in ["tp/plain.safetensors", "tp/ranks/model.safetensors.index.json"] {
        let loc = server.location(key, StoreOptions::default());
        let set = RemoteSet::open(&loc).unwrap();
        let vb = remote_sharded_var_builder(set, DType::F32, &Device::Cpu);
        for (name, t, _) in model() {
            let t32 = t.to_dtype(DType::F32).unwrap();
            for dim in 0..t.rank() {
                let block = t.dims()[dim] / 2;
                for rank in 0..2 {
                    let got = vb.get_with_hints((), name, Shard { dim, rank, world_size: 2 }).unwrap();
                    assert!(same(&got, &t32.narrow(dim, rank * block, block).unwrap()), "{key} {name} {dim} {rank}");
                }
            }
        }
        // Block 1 of 4 rows of `w` (2 rows of 12 f32) costs its 96 bytes and nothing more.
        let set = RemoteSet::open(&loc).unwrap();
        let before = loc.store.stats().bytes_in;
        let vb = remote_sharded_var_builder(set, DType::F32, &Device::Cpu);
        vb.get_with_hints((), "w", Shard { dim: 0, rank: 1, world_size: 4 }).unwrap();
        assert_eq!(loc.store.stats().bytes_in - before, 96, "{key}");
        // Whole tensors through a plain VarBuilder.
        let vb = remote_var_builder(RemoteSet::open(&loc).unwrap(), DType::BF16, &Device::Cpu);
        let (_, e, _) = model().remove(2);
        assert!(same(&vb.get((4, 6, 8), "e").unwrap(), &e), "{key}");
    }
}

#[cfg(feature = "object-store")]
#[test]
fn the_builders_take_urls() {
    use safeckpt_candle::store::{Location, StoreOptions, upload_tensors};
    // `memory:///` is a store in this process, reached through the same URL seam as `s3://`.
    let url = "memory:///var-builder-test/model.safetensors";
    let loc = Location::parse(url, &StoreOptions::default()).unwrap();
    let tensors: Vec<_> = model().iter().map(|(n, t, _)| (*n, raw(t))).collect();
    upload_tensors(loc.as_object().unwrap(), &tensors, None, &WriteOptions::new(), &|_| {}).unwrap();
    let (_, w, _) = model().remove(0);
    let vb = var_builder(url, DType::F32, &Device::Cpu).unwrap();
    assert!(same(&vb.get((8, 12), "w").unwrap(), &w));
    let tp = sharded_var_builder(url, DType::F32, &Device::Cpu).unwrap();
    let got = tp.get_with_hints((), "w", Shard { dim: 1, rank: 2, world_size: 3 }).unwrap();
    assert!(same(&got, &w.narrow(1, 8, 4).unwrap()));
    let Err(e) = var_builder("memory:///var-builder-test/absent.safetensors", DType::F32, &Device::Cpu) else {
        panic!("an absent object opened")
    };
    assert_eq!(e.to_string().matches("absent.safetensors").count(), 1, "{e}");
}

/// A model downloaded by `huggingface_hub` or `hf-hub`: `snapshots/<rev>/` holds symbolic links
/// to `../../blobs/<hash>`. Both builders open the snapshot (directory or index) and read every
/// tensor, whole and by tensor-parallel block.
#[test]
fn builders_open_a_huggingface_hub_cache_snapshot() {
    let src = tempfile::tempdir().unwrap();
    let tensors: Vec<_> = model().iter().map(|(n, t, _)| (*n, raw(t))).collect();
    let opts = WriteOptions::new().fsync(false);
    safeckpt_writer::write_sharded(src.path(), "model", &tensors, None, 400, &opts, &|_| {}).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--org--tiny");
    let snap = repo.join("snapshots/3f2a9c1e0b7d4a6f8e5c2b1a0d9e8f7c6b5a4e3d");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    let mut files = 0;
    for (i, e) in std::fs::read_dir(src.path()).unwrap().enumerate() {
        let p = e.unwrap().path();
        let blob = format!("{:064x}", 0x5eed_0000 + i);
        std::fs::copy(&p, repo.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snap.join(p.file_name().unwrap())).unwrap();
        files += 1;
    }
    assert!(files > 2, "a sharded set: {files} files");
    let index = snap.join("model.safetensors.index.json");
    for at in [snap.clone(), index.clone()] {
        let vb = var_builder(&at, DType::F32, &Device::Cpu).unwrap();
        for (name, t, _) in model() {
            if t.dtype() == DType::F32 {
                let got = vb.get(t.dims(), name).unwrap();
                assert_eq!(bytes_of(&got), bytes_of(&t), "{name} via {}", at.display());
            }
        }
    }
    let vb = sharded_var_builder(&index, DType::F32, &Device::Cpu).unwrap();
    let block = vb.get_with_hints((4, 12), "w", Shard { dim: 0, rank: 1, world_size: 2 }).unwrap();
    let want = model()[0].1.narrow(0, 4, 4).unwrap();
    assert_eq!(bytes_of(&block), bytes_of(&want));
}
