//! The candle bridge against candle's own paths, on a ~1 GiB VarMap.

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
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

/// Save and load of a VarMap: safeckpt against candle's `VarMap::save` and a raw `write_all`;
/// loads like with like: into existing variables against candle's `VarMap::load`, into new
/// tensors against candle's `VarBuilder::from_mmaped_safetensors` (`MmapedSafetensors`).
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
        case("candle VarBuilder::from_mmaped_safetensors + get (new tensors)", child("candle-mmaped")),
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
        "candle VarBuilder::from_mmaped_safetensors + get (new tensors)",
    );
    let get =
        |name: &str| results.iter().find(|r| r.0 == name).map(|r| (r.1.as_secs_f64(), r.2.as_secs_f64())).unwrap();
    for (what, ours, theirs) in [
        (
            "into existing variables",
            "safeckpt load_varmap (strict, into existing variables)",
            "candle VarMap::load (into existing variables)",
        ),
        (
            "new tensors",
            "safeckpt varmap_from_file (new variables)",
            "candle VarBuilder::from_mmaped_safetensors + get (new tensors)",
        ),
    ] {
        let (o, t) = (get(ours), get(theirs));
        println!(
            "{what}: {ours} {:.3} s, {theirs} {:.3} s: speedup {:.2}x (median); minima {:.3} s, {:.3} s: {:.2}x",
            o.0,
            t.0,
            t.0 / o.0,
            o.1,
            t.1,
            t.1 / o.1
        );
    }
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
            // The names and shapes come from the model's code in a real program: listed untimed.
            let names: Vec<(String, Vec<usize>)> =
                r.tensors().map(|t| (t.name().to_string(), t.shape().to_vec())).collect();
            let (t, v) = timed(|| -> Result<Vec<Tensor>> {
                // SAFETY: nothing modifies or truncates the file while it is mapped (this
                // benchmark wrote it before starting this process and only reads it now).
                let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&[p], DType::F32, &Device::Cpu)? };
                Ok(names.iter().map(|(n, s)| vb.get(s.as_slice(), n)).collect::<candle_core::Result<_>>()?)
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

/// The model's variables by name, for the training loop's forward pass.
struct Gpt {
    t: std::collections::HashMap<String, Tensor>,
    layers: usize,
    d: usize,
}

impl Gpt {
    fn new(vm: &VarMap) -> Gpt {
        let data = vm.data().lock().unwrap();
        let t: std::collections::HashMap<String, Tensor> =
            data.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        let layers = (0..).take_while(|i| t.contains_key(&format!("h.{i}.ln_1.weight"))).count();
        let d = t["wte.weight"].dims()[1];
        Gpt { t, layers, d }
    }

    fn w(&self, name: &str) -> &Tensor {
        &self.t[name]
    }

    fn layer_norm(&self, x: &Tensor, p: &str) -> candle_core::Result<Tensor> {
        let mean = x.mean_keepdim(1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(1)?;
        let xn = xc.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
        xn.broadcast_mul(self.w(&format!("{p}.weight")))?.broadcast_add(self.w(&format!("{p}.bias")))
    }

    fn linear(&self, x: &Tensor, p: &str) -> candle_core::Result<Tensor> {
        x.matmul(self.w(&format!("{p}.weight")))?.broadcast_add(self.w(&format!("{p}.bias")))
    }

    /// One forward and backward pass over `ids` (a sequence of tokens): embeddings, per layer a
    /// causal single-head attention and a GELU MLP (every weight matrix used), logits through
    /// the tied embedding, cross-entropy against `targets`. Returns every variable's gradient.
    fn forward_backward(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<candle_core::backprop::GradStore> {
        let n = ids.dims()[0];
        let d = self.d;
        let mut x = self.w("wte.weight").embedding(ids)?.add(&self.w("wpe.weight").narrow(0, 0, n)?)?;
        for i in 0..self.layers {
            let p = format!("h.{i}.");
            let h = self.layer_norm(&x, &format!("{p}ln_1"))?;
            let qkv = self.linear(&h, &format!("{p}attn.c_attn"))?;
            let (q, k, v) = (qkv.narrow(1, 0, d)?, qkv.narrow(1, d, d)?, qkv.narrow(1, 2 * d, d)?);
            let att = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(mask)?;
            let y = candle_nn::ops::softmax(&att, 1)?.matmul(&v)?;
            x = x.add(&self.linear(&y, &format!("{p}attn.c_proj"))?)?;
            let h = self.layer_norm(&x, &format!("{p}ln_2"))?;
            let m = self.linear(&h, &format!("{p}mlp.c_fc"))?.gelu()?;
            x = x.add(&self.linear(&m, &format!("{p}mlp.c_proj"))?)?;
        }
        let logits = x.matmul(&self.w("wte.weight").t()?)?;
        candle_nn::loss::cross_entropy(&logits, targets)?.backward()
    }
}

/// How a training-loop variant checkpoints.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SaveMode {
    Async,
    Sync,
    Off,
}

/// What one run of the training loop measured.
struct LoopRun {
    total: Duration,
    /// Time the loop could not compute because of checkpoints: synchronous saves, or
    /// `save_async` calls plus fence waits before optimizer steps plus the final wait.
    stalled: Duration,
    /// Forward/backward time alone, summed over the steps.
    compute: Duration,
    /// Optimizer time alone (fence waits excluded), summed over the steps.
    optim: Duration,
}

/// End to end: the wall time of a training loop of `steps` steps (forward and backward over the
/// model, then an AdamW step that waits on the manager's fence) that checkpoints model + AdamW
/// state (fsync on) every `every` steps, with asynchronous saves, with synchronous saves and with
/// no saves, interleaved in this process.
///
/// Saves come before steps 0, `every`, 2 × `every`, ... (`steps / every` of them), so each is
/// followed by `every` steps of training, as in the middle of a long run. The asynchronous
/// variant ends with waiting for its last save to commit.
pub(crate) fn train_loop(size_mib: usize, rounds: usize, steps: usize, every: usize, tokens: usize) -> Result<()> {
    anyhow::ensure!(
        every > 0 && steps >= every && steps.is_multiple_of(every),
        "--steps must be a multiple of --every"
    );
    let (vm, bytes) = varmap(size_mib)?;
    let vars = varmap_vars(&vm);
    let gpt = Gpt::new(&vm);
    anyhow::ensure!(tokens <= gpt.w("wpe.weight").dims()[0], "--tokens larger than the position table");
    let mut opt = AdamW::new_named(vars.clone(), ParamsAdamW::adamw(1e-4))?;
    let vocab = gpt.w("wte.weight").dims()[0] as u64;
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % vocab) as u32
    };
    let ids = Tensor::from_vec((0..tokens).map(|_| next()).collect::<Vec<u32>>(), tokens, &Device::Cpu)?;
    let targets = Tensor::from_vec((0..tokens).map(|_| next()).collect::<Vec<u32>>(), tokens, &Device::Cpu)?;
    let mask: Vec<f32> = (0..tokens * tokens).map(|i| if i % tokens > i / tokens { -1e9 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, (tokens, tokens), &Device::Cpu)?;
    // One step first, so the optimizer has its state (two moments per parameter) to save.
    opt.step_grads(&gpt.forward_backward(&ids, &targets, &mask)?)?;

    let dir = tempfile::Builder::new().prefix("safeckpt-bench-train-").tempdir()?;
    let manager_opts = || ManagerOptions {
        keep_last: 1,
        checkpoint: CheckpointOptions { write: WriteOptions::new(), max_shard_size: None },
        ..Default::default()
    };
    let mut managers = [
        CheckpointManager::open(dir.path().join("async"), manager_opts())?,
        CheckpointManager::open(dir.path().join("sync"), manager_opts())?,
    ];
    let mut step_no = 0u64;
    let mut run = |mode: SaveMode| -> Result<LoopRun> {
        let fence = match mode {
            SaveMode::Async => managers[0].fence(),
            SaveMode::Sync => managers[1].fence(),
            SaveMode::Off => Default::default(),
        };
        opt.set_fence(Some(fence.clone()));
        let (mut stalled, mut compute, mut optim) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let start = Instant::now();
        for i in 0..steps {
            step_no += 1;
            if i.is_multiple_of(every) {
                let state = TrainState::new(0, step_no);
                let t = Instant::now();
                match mode {
                    SaveMode::Async => managers[0].save_async(&vars, Some(&opt), &state)?,
                    SaveMode::Sync => drop(managers[1].save(&vars, Some(&opt), &state)?),
                    SaveMode::Off => {}
                }
                stalled += t.elapsed();
            }
            let t = Instant::now();
            let grads = gpt.forward_backward(&ids, &targets, &mask)?;
            compute += t.elapsed();
            let t = Instant::now();
            fence.wait();
            stalled += t.elapsed();
            let t = Instant::now();
            opt.step_grads(&grads)?;
            optim += t.elapsed();
        }
        let t = Instant::now();
        if mode == SaveMode::Async {
            managers[0].wait()?;
        }
        stalled += t.elapsed();
        let total = start.elapsed();
        sync_all();
        Ok(LoopRun { total, stalled, compute, optim })
    };
    let modes = [SaveMode::Async, SaveMode::Sync, SaveMode::Off];
    let mut runs: Vec<Vec<LoopRun>> = (0..modes.len()).map(|_| Vec::new()).collect();
    for r in 0..=rounds {
        for k in 0..modes.len() {
            let m = (k + r) % modes.len();
            let got = run(modes[m])?;
            if std::env::var_os("SAFECKPT_BENCH_VERBOSE").is_some() {
                eprintln!(
                    "round {r} {:?}: total {:.3} s, stalled {:.3} s, forward/backward {:.3} s, optimizer {:.3} s",
                    modes[m],
                    got.total.as_secs_f64(),
                    got.stalled.as_secs_f64(),
                    got.compute.as_secs_f64(),
                    got.optim.as_secs_f64()
                );
            }
            if r > 0 {
                runs[m].push(got);
            }
        }
    }
    let med = |m: usize, f: &dyn Fn(&LoopRun) -> Duration| -> f64 {
        let mut v: Vec<Duration> = runs[m].iter().map(f).collect();
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let min = |m: usize| runs[m].iter().map(|r| r.total).min().unwrap().as_secs_f64();
    let saves = steps / every;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "\n## training loop, end to end: {steps} steps of {tokens} tokens, model + AdamW state \
         ({:.2} GiB per checkpoint, fsync on) saved every {every} steps ({saves} saves), median of {rounds}\n",
        gib(3 * bytes)
    );
    println!("| variant | total (median) | min | stalled | forward/backward | optimizer | overhead vs no saves |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let base = med(2, &|r| r.total);
    let names = ["async saves (`save_async`)", "synchronous saves (`save`)", "no saves"];
    for (m, name) in names.iter().enumerate() {
        let tot = med(m, &|r| r.total);
        let over = if m == 2 {
            "-".to_string()
        } else {
            format!("{:+.3} s ({:+.1}%)", tot - base, 100.0 * (tot - base) / base)
        };
        println!(
            "| {name} | {tot:.3} s | {:.3} s | {:.3} s | {:.3} s | {:.3} s | {over} |",
            min(m),
            med(m, &|r| r.stalled),
            med(m, &|r| r.compute),
            med(m, &|r| r.optim)
        );
    }
    let (a, s) = (med(0, &|r| r.total) - base, med(1, &|r| r.total) - base);
    println!();
    println!(
        "training between saves (no-save loop): {:.3} s; synchronous save: {:.3} s; ratio {:.2}",
        base / saves as f64,
        med(1, &|r| r.stalled) / saves as f64,
        base / med(1, &|r| r.stalled)
    );
    println!(
        "overhead per save: async {:.3} s, synchronous {:.3} s; async overhead / synchronous overhead: {:.0}%",
        a / saves as f64,
        s / saves as f64,
        100.0 * a / s
    );
    Ok(())
}
