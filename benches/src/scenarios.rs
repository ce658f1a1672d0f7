//! The scenarios. Each states what it times; setup and cleanup stay outside the timers.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use candle_core::safetensors::Load;
use safeckpt_format::Header;
use safeckpt_reader::{LoadMethod, LoadOptions, Reader};
use safeckpt_writer::{WriteOptions, write_file};

use crate::harness::{case, interleaved, report, sync_all, timed};
use crate::model::StateDict;

fn scratch() -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix("safeckpt-bench-").tempdir()?)
}

/// Deletes a case's output and flushes, then warms the memory the next case's page cache will
/// use (see `harness::warm_memory`), so every case starts from the same state.
fn remove(p: &Path) {
    let _ = std::fs::remove_file(p);
    sync_all();
    crate::harness::warm_memory(1536 << 20);
}

/// A sum that vectorises (eight independent lanes), shared by every read case.
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Saving a state dict.
pub(crate) fn save(size_mib: usize, rounds: usize, fsync: bool) -> Result<()> {
    let sd = StateDict::transformer(size_mib);
    let bytes = sd.bytes();
    let flat: Vec<u8> = sd.tensors.iter().flat_map(|t| t.2.iter().copied()).collect();
    let dir = scratch()?;
    let p = dir.path().join("out.safetensors");
    let raw = sd.raw();
    let views = sd.st_views();
    let mut cases = vec![
        case("raw write_all", || {
            let (t, r) = timed(|| -> std::io::Result<()> {
                let mut f = File::create(&p)?;
                f.write_all(&flat)?;
                if fsync {
                    f.sync_all()?;
                }
                Ok(())
            });
            r.unwrap();
            remove(&p);
            t
        }),
        case("raw write_all, file pre-sized", || {
            let (t, r) = timed(|| -> std::io::Result<()> {
                let mut f = File::create(&p)?;
                f.set_len(flat.len() as u64)?;
                for piece in flat.chunks(1 << 20) {
                    f.write_all(piece)?;
                }
                if fsync {
                    f.sync_all()?;
                }
                Ok(())
            });
            r.unwrap();
            remove(&p);
            t
        }),
        case("safetensors crate serialize_to_file", || {
            let (t, r) = timed(|| -> Result<()> {
                safetensors::serialize_to_file(views.clone(), None, &p)?;
                if fsync {
                    File::open(&p)?.sync_all()?;
                    File::open(dir.path())?.sync_all()?;
                }
                Ok(())
            });
            r.unwrap();
            remove(&p);
            t
        }),
        case("safeckpt write_file (checksums)", || {
            let (t, r) = timed(|| write_file(&p, &raw, None, &WriteOptions::new().fsync(fsync)));
            r.unwrap();
            remove(&p);
            t
        }),
        case("safeckpt write_file (no checksums)", || {
            let (t, r) = timed(|| write_file(&p, &raw, None, &WriteOptions::new().fsync(fsync).checksums(false)));
            r.unwrap();
            remove(&p);
            t
        }),
    ];
    let results = interleaved(rounds, &mut cases);
    let title = format!(
        "save {} tensors, {:.2} GiB f32{}",
        sd.tensors.len(),
        bytes as f64 / (1u64 << 30) as f64,
        if fsync { ", fsync on (the crate: + fsync of file and directory)" } else { ", no fsync" }
    );
    report(&title, bytes, &results, "raw write_all");
    Ok(())
}

/// Opening a 10,000-tensor file: the header parsed and validated, no data touched.
pub(crate) fn open(rounds: usize) -> Result<()> {
    let sd = StateDict::many_small(10_000);
    let dir = scratch()?;
    let plain = dir.path().join("plain.safetensors");
    safetensors::serialize_to_file(sd.st_views(), None, &plain)?;
    let ours = dir.path().join("checksummed.safetensors");
    write_file(&ours, &sd.raw(), None, &WriteOptions::new().fsync(false))?;
    for (label, path) in [("written by the safetensors crate", &plain), ("written by safeckpt, with checksums", &ours)]
    {
        let reader = Reader::open(path)?;
        let map: &[u8] = reader.bytes();
        let mut cases = vec![
            case("safetensors crate SafeTensors::deserialize (same map)", || {
                let (t, r) = timed(|| safetensors::SafeTensors::deserialize(map).map(|s| s.len()));
                assert_eq!(r.unwrap(), 10_000);
                t
            }),
            case("safeckpt Header::parse (same map)", || {
                let (t, r) = timed(|| Header::parse(map).map(|h| h.len()));
                assert_eq!(r.unwrap(), 10_000);
                t
            }),
            case("safeckpt Reader::open (open + map + parse)", || {
                let (t, r) = timed(|| Reader::open(path).map(|r| r.len()));
                assert_eq!(r.unwrap(), 10_000);
                t
            }),
        ];
        let results = interleaved(rounds, &mut cases);
        let header_kib = reader.header().header_len() as f64 / 1024.0;
        report(
            &format!("open a 10,000-tensor file ({label}; header {header_kib:.0} KiB)"),
            0,
            &results,
            "safetensors crate SafeTensors::deserialize (same map)",
        );
    }
    Ok(())
}

/// Reading every byte: typed views against a plain map sum.
pub(crate) fn read(size_mib: usize, rounds: usize) -> Result<()> {
    let sd = StateDict::transformer(size_mib);
    let bytes = sd.bytes();
    let dir = scratch()?;
    let p = dir.path().join("model.safetensors");
    write_file(&p, &sd.raw(), None, &WriteOptions::new().fsync(false))?;
    drop(sd);
    let mut cases = vec![
        case("plain mmap sequential sum", || {
            let (t, s) = timed(|| {
                // One map, the whole data section summed as one slice: no per-tensor work.
                let r = Reader::open(&p).unwrap();
                sum(bytemuck::cast_slice(r.data_section()))
            });
            std::hint::black_box(s);
            t
        }),
        case("safeckpt typed views (&[f32] per tensor)", || {
            let (t, s) = timed(|| {
                let r = Reader::open(&p).unwrap();
                r.tensors().map(|v| sum(v.as_slice::<f32>().unwrap())).sum::<f32>()
            });
            std::hint::black_box(s);
            t
        }),
    ];
    let results = interleaved(rounds, &mut cases);
    report(
        &format!("read every byte of {:.2} GiB (warm page cache)", bytes as f64 / (1u64 << 30) as f64),
        bytes,
        &results,
        "plain mmap sequential sum",
    );
    Ok(())
}

/// Loading every tensor into owned, framework-ready buffers.
pub(crate) fn load(size_mib: usize, rounds: usize) -> Result<()> {
    let sd = StateDict::transformer(size_mib);
    let bytes = sd.bytes();
    let dir = scratch()?;
    let p = dir.path().join("model.safetensors");
    write_file(&p, &sd.raw(), None, &WriteOptions::new().fsync(false))?;
    drop(sd);
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let mut cases = vec![
        case("candle MmapedSafetensors path (deserialize + Load::load per tensor)", || {
            let (t, v) = timed(|| {
                // The calls MmapedSafetensors::load makes: the crate's deserialize over a map,
                // then candle's `Load::load` of each view (a copy into candle storage).
                let r = Reader::open(&p).unwrap();
                let st = safetensors::SafeTensors::deserialize(r.bytes()).unwrap();
                st.tensors().iter().map(|(_, v)| v.load(&candle_core::Device::Cpu).unwrap()).collect::<Vec<_>>()
            });
            drop(v);
            t
        }),
        case("naive copy (to_vec per tensor, one thread)", || {
            let (t, v) = timed(|| {
                let r = Reader::open(&p).unwrap();
                r.tensors().map(|v| v.to_vec::<f32>().unwrap()).collect::<Vec<_>>()
            });
            drop(v);
            t
        }),
        case("safeckpt load_all (pread, parallel)", || {
            let (t, v) = timed(|| Reader::open(&p).unwrap().load_all().unwrap());
            drop(v);
            t
        }),
        case("safeckpt load_all (pread, huge pages, parallel)", || {
            let opts = LoadOptions { method: LoadMethod::Pread, huge_pages: true };
            let (t, v) = timed(|| Reader::open(&p).unwrap().load_all_with(&opts).unwrap());
            drop(v);
            t
        }),
        case("safeckpt load_all (pread, 1 thread)", || {
            let (t, v) = timed(|| one_thread.install(|| Reader::open(&p).unwrap().load_all().unwrap()));
            drop(v);
            t
        }),
    ];
    let child = |which: &'static str| {
        let exe = std::env::current_exe().unwrap();
        let p = p.clone();
        move || {
            let out = std::process::Command::new(&exe).args(["load-child", which]).arg(&p).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            Duration::from_secs_f64(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
        }
    };
    cases.push(case("candle MmapedSafetensors path, fresh process", child("candle")));
    cases.push(case("safeckpt load_all, fresh process", child("safeckpt")));
    cases.push(case("safeckpt load_all (huge pages), fresh process", child("safeckpt-huge")));
    let results = interleaved(rounds, &mut cases);
    report(
        &format!(
            "load every tensor into owned buffers, {:.2} GiB f32 (warm page cache)",
            bytes as f64 / (1u64 << 30) as f64
        ),
        bytes,
        &results,
        "candle MmapedSafetensors path (deserialize + Load::load per tensor)",
    );
    Ok(())
}

/// One load in a fresh process (no memory reused from earlier rounds); prints seconds.
pub(crate) fn load_child(which: &str, p: &Path) -> Result<()> {
    let (t, n) = match which {
        "candle" => timed(|| {
            let r = Reader::open(p).unwrap();
            let st = safetensors::SafeTensors::deserialize(r.bytes()).unwrap();
            // Keep every tensor alive, as a real load does (dropping each one would let the
            // allocator hand its memory to the next).
            let all: Vec<_> = st.tensors().iter().map(|(_, v)| v.load(&candle_core::Device::Cpu).unwrap()).collect();
            all.len()
        }),
        "safeckpt" => timed(|| Reader::open(p).unwrap().load_all().unwrap().len()),
        "safeckpt-huge" => timed(|| {
            let opts = LoadOptions { method: LoadMethod::Pread, huge_pages: true };
            Reader::open(p).unwrap().load_all_with(&opts).unwrap().len()
        }),
        other => anyhow::bail!("unknown case {other}"),
    };
    std::hint::black_box(n);
    println!("{}", t.as_secs_f64());
    Ok(())
}
