//! Multi-rank saves: four processes save a model split every way at once, then two ranks and
//! one rank load it back, each reading only its part.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use safeckpt_format::{Dtype, RawTensor};
use safeckpt_reader::{ShardedReader, chunk_range};
use safeckpt_writer::WriteOptions;
use safeckpt_writer::rank::{RankTensor, commit_ranks, save_rank};

const WORLD: usize = 4;

/// The model: name, dtype, global shape, and how it is split across the ranks.
enum Split {
    /// Saved whole by rank 0.
    Whole,
    /// Cut into `WORLD` chunks along a dimension.
    Dim(usize),
    /// A 2x2 grid of blocks, one per rank.
    Grid,
}

fn model() -> Vec<(&'static str, Dtype, Vec<usize>, Split)> {
    vec![
        ("embed", Dtype::F32, vec![10, 6], Split::Dim(0)),
        ("proj", Dtype::F32, vec![5, 8], Split::Dim(1)),
        ("grid", Dtype::F64, vec![4, 6], Split::Grid),
        ("norm", Dtype::F32, vec![6], Split::Whole),
        ("ids", Dtype::I64, vec![7], Split::Dim(0)),
        ("cube", Dtype::BF16, vec![3, 4, 5], Split::Dim(2)),
    ]
}

/// The global tensor's bytes: element `i` has every byte equal to a hash of (name, i, byte).
fn global_bytes(name: &str, dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let elem = dtype.bits() / 8;
    let numel: usize = shape.iter().product();
    let seed = name.bytes().fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
    (0..numel * elem).map(|k| (seed.wrapping_mul(k as u64 + 1) >> 7) as u8).collect()
}

/// Row-major sub-box of a global tensor.
fn sub_box(bytes: &[u8], elem: usize, shape: &[usize], region: &[Range<usize>]) -> Vec<u8> {
    let mut out = Vec::new();
    let numel: usize = shape.iter().product();
    for flat in 0..numel {
        let mut rem = flat;
        let mut idx = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            idx[d] = rem % shape[d];
            rem /= shape[d];
        }
        if idx.iter().zip(region).all(|(i, r)| r.contains(i)) {
            out.extend_from_slice(&bytes[flat * elem..(flat + 1) * elem]);
        }
    }
    out
}

/// Rank `rank`'s region of a tensor, or `None` when it saves none of it.
fn region_of(split: &Split, shape: &[usize], rank: usize) -> Option<Vec<Range<usize>>> {
    let mut region: Vec<Range<usize>> = shape.iter().map(|&d| 0..d).collect();
    match split {
        Split::Whole => (rank == 0).then_some(region),
        Split::Dim(d) => {
            region[*d] = chunk_range(shape[*d], rank, WORLD);
            Some(region)
        }
        Split::Grid => {
            region[0] = chunk_range(shape[0], rank / 2, 2);
            region[1] = chunk_range(shape[1], rank % 2, 2);
            Some(region)
        }
    }
}

fn save_as_rank(dir: &Path, rank: usize) {
    let parts: Vec<(RankTensor<RawTensor<'static>>, bool)> = model()
        .into_iter()
        .filter_map(|(name, dtype, shape, split)| {
            let region = region_of(&split, &shape, rank)?;
            let bytes = sub_box(&global_bytes(name, dtype, &shape), dtype.bits() / 8, &shape, &region);
            let local: Vec<usize> = region.iter().map(|r| r.end - r.start).collect();
            let source = RawTensor::owned(dtype, local, bytes);
            Some(match split {
                Split::Whole => (RankTensor::whole(name, source), true),
                _ => (RankTensor::piece(name, source, shape, region.iter().map(|r| r.start).collect()), false),
            })
        })
        .collect();
    let tensors: Vec<_> = parts.into_iter().map(|(t, _)| t).collect();
    let opts = WriteOptions::new().fsync(false);
    save_rank(dir, "model", rank, WORLD, "step-7", &tensors, None, &opts).unwrap();
    if rank == 0 {
        commit_ranks(dir, "model", WORLD, "step-7", Duration::from_secs(60), &opts).unwrap();
    }
}

/// Run by the multi-process test, once per rank, with `SAFECKPT_TEST_RANK` and `_DIR` set.
#[test]
#[ignore = "a child of four_processes_save_and_fewer_ranks_load"]
fn rank_child() {
    let rank: usize = std::env::var("SAFECKPT_TEST_RANK").unwrap().parse().unwrap();
    let dir = PathBuf::from(std::env::var("SAFECKPT_TEST_DIR").unwrap());
    save_as_rank(&dir, rank);
}

#[test]
fn four_processes_save_and_fewer_ranks_load() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..WORLD)
        .map(|rank| {
            std::process::Command::new(&exe)
                .args(["--exact", "ranks::rank_child", "--ignored", "--nocapture", "--test-threads=1"])
                .env("SAFECKPT_TEST_RANK", rank.to_string())
                .env("SAFECKPT_TEST_DIR", dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let mut files: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    let mut expected: Vec<String> =
        (0..WORLD).map(|r| format!("model-rank-{r:05}-of-{WORLD:05}.safetensors")).collect();
    expected.push("model.safetensors.index.json".into());
    assert_eq!(files, expected, "the markers are gone and nothing else is left");

    let set = ShardedReader::open(dir.path().join("model.safetensors.index.json")).unwrap();
    let mut names: Vec<&str> = model().iter().map(|m| m.0).collect();
    names.sort();
    assert_eq!(set.global_names(), names);
    assert!(set.is_piece("embed@3,0") && !set.is_piece("norm"));
    for (name, dtype, shape, _) in model() {
        let whole = global_bytes(name, dtype, &shape);
        assert_eq!(set.read_global(name).unwrap(), whole, "{name}");
        let g = set.global(name).unwrap();
        assert_eq!((g.dtype(), g.shape()), (dtype, shape.as_slice()));
        // Two ranks and one rank, each reading its chunk of dimension 0 (or of the last one).
        for world in [2, 1, 3] {
            for dim in [0, shape.len() - 1] {
                let mut assembled = Vec::new();
                for rank in 0..world {
                    let mut region: Vec<Range<usize>> = shape.iter().map(|&d| 0..d).collect();
                    region[dim] = chunk_range(shape[dim], rank, world);
                    let part = set.read_region(name, &region).unwrap();
                    assert_eq!(part, sub_box(&whole, dtype.bits() / 8, &shape, &region), "{name} {region:?}");
                    assembled.push(part);
                }
                if dim == 0 {
                    assert_eq!(assembled.concat(), whole, "{name}: {world} ranks");
                }
            }
        }
    }
    // An odd region across piece boundaries.
    let region = [1..4, 2..5];
    let whole = global_bytes("grid", Dtype::F64, &[4, 6]);
    assert_eq!(set.read_region("grid", &region).unwrap(), sub_box(&whole, 8, &[4, 6], &region));
    assert!(set.read_region("grid", &[0..5, 0..6]).is_err());
    assert!(set.read_region("embed@0,0", &[0..3, 0..6]).is_err(), "pieces are not global tensors");
}

#[test]
fn the_coordinator_waits_and_names_missing_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let t = RankTensor::piece("w", RawTensor::owned(Dtype::U8, vec![2], vec![1, 2]), vec![4], vec![0]);
    let opts = WriteOptions::new().fsync(false);
    save_rank(dir.path(), "m", 0, 2, "a", &[t], None, &opts).unwrap();
    let err = commit_ranks(dir.path(), "m", 2, "a", Duration::from_millis(50), &opts).unwrap_err().to_string();
    assert!(err.contains("still waiting for rank(s) 1 of save `a`"), "{err}");
    assert!(!dir.path().join("m.safetensors.index.json").exists(), "nothing is visible before every rank is done");
    // A marker left by another save does not count.
    let t = RankTensor::piece("w", RawTensor::owned(Dtype::U8, vec![2], vec![3, 4]), vec![4], vec![2]);
    save_rank(dir.path(), "m", 1, 2, "old", std::slice::from_ref(&t), None, &opts).unwrap();
    let err = commit_ranks(dir.path(), "m", 2, "a", Duration::from_millis(50), &opts).unwrap_err().to_string();
    assert!(err.contains("1 (its marker is from save `old`)"), "{err}");
    save_rank(dir.path(), "m", 1, 2, "a", &[t], None, &opts).unwrap();
    let index = commit_ranks(dir.path(), "m", 2, "a", Duration::from_secs(5), &opts).unwrap();
    let set = ShardedReader::open(index).unwrap();
    assert_eq!(set.read_global("w").unwrap(), [1, 2, 3, 4]);
}
