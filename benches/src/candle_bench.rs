//! The candle bridge against candle's own paths, on a ~1 GiB VarMap.

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use safeckpt_candle::optim::{AdamW, ParamsAdamW, StatefulOptimizer};
use safeckpt_candle::{
    CheckpointManager, CheckpointOptions, LoadOptions, ManagerOptions, TrainState, load_varmap, save_varmap,
    varmap_vars,
};
use safeckpt_reader::Reader;
use safeckpt_writer::WriteOptions;

use crate::harness::{case, interleaved, report, sync_all, timed, warm_memory};
use crate::model::StateDict;

fn varmap(size_mib: usize) -> Result<(VarMap, u64)> {
    let sd = StateDict::transformer(size_mib);
    let vm = VarMap::new();
    let mut total = 0u64;
    {
        let mut data = vm.data().lock().unwrap();
        for (name, shape, bytes) in sd.tensors {
            total += bytes.len() as u64;
            let v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            data.insert(name, Var::from_vec(v, shape, &Device::Cpu)?);
        }
    }
    Ok((vm, total))
}

fn settle(p: &std::path::Path) {
    let _ = std::fs::remove_file(p);
    sync_all();
    warm_memory(1536 << 20);
}

/// Save and load of a VarMap: safeckpt against candle's `VarMap::save` / `VarMap::load`, its
/// `MmapedSafetensors` path, and a raw `write_all`.
pub(crate) fn save_load(size_mib: usize, rounds: usize) -> Result<()> {
    let (vm, bytes) = varmap(size_mib)?;
    let dir = tempfile::Builder::new().prefix("safeckpt-bench-candle-").tempdir()?;
    let p = dir.path().join("vm.safetensors");
    let flat: Vec<u8> = {
        let data = vm.data().lock().unwrap();
        data.values()
            .flat_map(|v| v.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().flat_map(f32::to_le_bytes))
            .collect()
    };
    let mut cases = vec![
        case("raw write_all", || {
            let (t, r) = timed(|| File::create(&p).and_then(|mut f| f.write_all(&flat)));
            r.unwrap();
            settle(&p);
            t
        }),
        case("candle VarMap::save", || {
            let (t, r) = timed(|| vm.save(&p));
            r.unwrap();
            settle(&p);
            t
        }),
        case("safeckpt save_varmap (checksums, no fsync)", || {
            let (t, r) = timed(|| save_varmap(&p, &vm, None, &WriteOptions::new().fsync(false)));
            r.unwrap();
            settle(&p);
            t
        }),
    ];
    let results = interleaved(rounds, &mut cases);
    drop(cases);
    report(
        &format!("save a {:.2} GiB candle VarMap", bytes as f64 / (1u64 << 30) as f64),
        bytes,
        &results,
        "raw write_all",
    );

    save_varmap(&p, &vm, None, &WriteOptions::new().fsync(false))?;
    drop(vm);
    drop(flat);
    // Loads run in fresh processes: a model is loaded once, into memory the process has not
    // used yet, and reusing memory between rounds would hide the cost of faulting it in.
    let exe = std::env::current_exe()?;
    let child = |which: &'static str| {
        let exe = exe.clone();
        let p = p.clone();
        move || {
            let out = std::process::Command::new(&exe).args(["candle-load-child", which]).arg(&p).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            Duration::from_secs_f64(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
        }
    };
    let mut cases = vec![
        case("candle VarMap::load (into existing variables)", child("candle-varmap")),
        case("candle MmapedSafetensors path (new tensors)", child("candle-mmaped")),
        case("safeckpt load_varmap (strict, into existing variables)", child("safeckpt-load-varmap")),
        case("safeckpt varmap_from_file (new variables)", child("safeckpt-new-varmap")),
    ];
    let results = interleaved(rounds, &mut cases);
    report(
        &format!(
            "load a {:.2} GiB candle VarMap, fresh process each (warm page cache)",
            bytes as f64 / (1u64 << 30) as f64
        ),
        bytes,
        &results,
        "candle MmapedSafetensors path (new tensors)",
    );
    Ok(())
}

/// One load in a fresh process; prints the seconds it took. Variables to load into are created
/// (zeros, faulted in) before the timer starts.
pub(crate) fn load_child(which: &str, p: &std::path::Path) -> Result<()> {
    let r = Reader::open(p)?;
    let zeros = || -> Result<VarMap> {
        let vm = VarMap::new();
        {
            let mut data = vm.data().lock().unwrap();
            for t in r.tensors() {
                data.insert(t.name().to_string(), Var::ones(t.shape(), DType::F32, &Device::Cpu)?);
            }
        }
        Ok(vm)
    };
    let (t, n) = match which {
        "candle-varmap" => {
            let mut vm = zeros()?;
            let (t, res) = timed(|| vm.load(p));
            res?;
            (t, vm.all_vars().len())
        }
        "candle-mmaped" => {
            let (t, v) = timed(|| -> Result<Vec<Tensor>> {
                // SAFETY-free equivalent of MmapedSafetensors::new + load(name) for every tensor.
                let r = Reader::open(p)?;
                let st = safetensors::SafeTensors::deserialize(r.bytes())?;
                Ok(st.tensors().iter().map(|(_, v)| v.load(&Device::Cpu)).collect::<candle_core::Result<_>>()?)
            });
            (t, v?.len())
        }
        "safeckpt-load-varmap" => {
            let vm = zeros()?;
            let (t, res) = timed(|| load_varmap(p, &vm, &LoadOptions::default()));
            res?;
            (t, vm.all_vars().len())
        }
        "safeckpt-new-varmap" => {
            let (t, vm) = timed(|| safeckpt_candle::varmap_from_file(p, "", None, &Device::Cpu));
            (t, vm?.all_vars().len())
        }
        other => anyhow::bail!("unknown case {other}"),
    };
    std::hint::black_box(n);
    println!("{}", t.as_secs_f64());
    Ok(())
}

/// How long an asynchronous save stalls a training loop, against a synchronous save (fsync on).
///
/// Each round: a synchronous checkpoint (model + AdamW state) is timed; then an asynchronous one
/// is started, the loop runs `compute_ms` of forward/backward-like work (matrix products), waits
/// on the fence as the optimizer step would, and the stall is the time spent in `save_async` plus
/// the time blocked on the fence.
pub(crate) fn async_stall(size_mib: usize, rounds: usize, compute_ms: u64) -> Result<()> {
    let (vm, bytes) = varmap(size_mib)?;
    let vars = varmap_vars(&vm);
    let mut opt = AdamW::new_named(vars.clone(), ParamsAdamW::adam(1e-3))?;
    // Give the optimizer state (two moments per parameter) by taking one real step.
    let mut grads = candle_core::backprop::GradStore::default();
    for (_, v) in &vars {
        grads.insert(v.as_tensor(), Tensor::ones(v.dims(), DType::F32, &Device::Cpu)?);
    }
    opt.step_grads(&grads)?;
    drop(grads);
    let dir = tempfile::Builder::new().prefix("safeckpt-bench-async-").tempdir()?;
    let opts = ManagerOptions {
        keep_last: 1,
        checkpoint: CheckpointOptions { write: WriteOptions::new(), max_shard_size: None },
        ..Default::default()
    };
    let mut manager = CheckpointManager::open(dir.path(), opts)?;
    opt.set_fence(Some(manager.fence()));
    let a = Tensor::ones((512, 512), DType::F32, &Device::Cpu)?;
    let compute = |ms: u64| -> Result<()> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(ms) {
            std::hint::black_box(a.matmul(&a)?);
        }
        Ok(())
    };
    let (mut sync, mut stall, mut total, mut computed) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds as u64 + 1 {
        let (t, res) = timed(|| manager.save(&vars, Some(&opt), &TrainState::new(0, 2 * r)));
        res?;
        sync_all();
        let t0 = Instant::now();
        manager.save_async(&vars, Some(&opt), &TrainState::new(0, 2 * r + 1))?;
        let in_call = t0.elapsed();
        let c = Instant::now();
        compute(compute_ms)?;
        let compute_took = c.elapsed();
        let f = Instant::now();
        manager.fence().wait();
        let blocked = f.elapsed();
        manager.wait()?;
        total.push(t0.elapsed());
        sync_all();
        if r > 0 {
            sync.push(t);
            stall.push(in_call + blocked);
            computed.push(compute_took);
        }
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (s, a, tot, comp) = (med(&mut sync), med(&mut stall), med(&mut total), med(&mut computed));
    println!(
        "\n## asynchronous save of a {:.2} GiB model + AdamW state ({:.2} GiB written per checkpoint), fsync on\n",
        bytes as f64 / (1u64 << 30) as f64,
        3.0 * bytes as f64 / (1u64 << 30) as f64
    );
    println!("| measure | median |");
    println!("|---|---:|");
    println!("| synchronous `save` (training stopped) | {:.3} s |", s.as_secs_f64());
    println!(
        "| async: training stalled (`save_async` call + fence before the next optimizer step) | {:.3} s |",
        a.as_secs_f64()
    );
    println!(
        "| async: from `save_async` to committed, overlapping {compute_ms} ms of compute | {:.3} s |",
        tot.as_secs_f64()
    );
    println!(
        "| compute phase as measured (at least {compute_ms} ms; the writer shares the cores) | {:.3} s |",
        comp.as_secs_f64()
    );
    println!("| stall / synchronous save | {:.1}% |", 100.0 * a.as_secs_f64() / s.as_secs_f64());
    Ok(())
}

/// Tensor-parallel loading: rank `rank` of `world` takes its block of every 2-D tensor along
/// dimension 0 and along dimension 1 (candle's `Shard` hints), through safeckpt's
/// `sharded_var_builder` and through the path of candle's `ShardedSafeTensors` (a safetensors
/// view sliced, its bytes collected, `Tensor::from_raw_buffer`), both over one memory map of the
/// same file in this process.
pub(crate) fn tensor_parallel(size_mib: usize, rounds: usize, world: usize) -> Result<()> {
    use candle_nn::var_builder::Shard;
    use safetensors::slice::IndexOp;
    let sd = StateDict::transformer(size_mib);
    let dir = tempfile::Builder::new().prefix("safeckpt-bench-tp-").tempdir()?;
    let p = dir.path().join("model.safetensors");
    safeckpt_writer::write_file(&p, &sd.raw(), None, &WriteOptions::new().fsync(false))?;
    let names: Vec<(String, Vec<usize>)> = sd
        .tensors
        .iter()
        .filter(|(_, s, _)| s.len() == 2 && s[0] % world == 0 && s[1] % world == 0)
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect();
    let bytes: u64 = names.iter().map(|(_, s)| (s[0] * s[1] * 4 / world) as u64).sum::<u64>() * 2;
    drop(sd);
    let rank = 1.min(world - 1);
    let reader = Reader::open(&p)?;
    let st = safetensors::SafeTensors::deserialize(reader.bytes())?;
    let vb = safeckpt_candle::sharded_var_builder(&p, DType::F32, &Device::Cpu)?;
    let mut cases = vec![
        case("candle ShardedSafeTensors path", || {
            let t = Instant::now();
            for (name, shape) in &names {
                for dim in [0, 1] {
                    let view = st.tensor(name).unwrap();
                    let block = shape[dim] / world;
                    let (start, stop) = (rank * block, (rank + 1) * block);
                    let it = if dim == 0 { view.slice(start..stop) } else { view.slice((.., start..stop)) }.unwrap();
                    let raw: Vec<u8> = it.into_iter().flatten().cloned().collect();
                    let mut local = shape.clone();
                    local[dim] = block;
                    std::hint::black_box(Tensor::from_raw_buffer(&raw, DType::F32, &local, &Device::Cpu).unwrap());
                }
            }
            t.elapsed()
        }),
        case("safeckpt sharded_var_builder", || {
            let t = Instant::now();
            for (name, _) in &names {
                for dim in [0, 1] {
                    let s = Shard { dim, rank, world_size: world };
                    std::hint::black_box(vb.get_with_hints((), name, s).unwrap());
                }
            }
            t.elapsed()
        }),
    ];
    let results = interleaved(rounds, &mut cases);
    report(
        &format!(
            "tensor-parallel load: rank {rank} of {world}, every 2-D tensor ({}) along dim 0 and dim 1, in-process",
            names.len()
        ),
        bytes,
        &results,
        "candle ShardedSafeTensors path",
    );
    Ok(())
}
