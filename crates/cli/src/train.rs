//! The training half of `safeckpt demo`: the classic MLP (20 -> 64 -> 32 -> 1, ReLU, sigmoid,
//! binary cross-entropy, Adam) on a synthetic classification set, checkpointed every epoch by a
//! `CheckpointManager` (asynchronous saves, keep the best by validation loss), resuming by itself
//! from the run directory's latest checkpoint. Everything is deterministic for a given seed:
//! data, initial weights and the order of batches, so an interrupted run that resumes ends with
//! bit-identical weights and optimizer state to an uninterrupted one.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use safeckpt_candle::optim::{AdamW, ParamsAdamW, StateData, StatefulOptimizer};
use safeckpt_candle::{
    CheckpointManager, KeepBest, LoadOptions, ManagerOptions, Mode, TrainState, load_vars, varmap_vars,
};
use safeckpt_reader::ShardedReader;
use serde_json::json;

use crate::util::human_duration;
use safeckpt_store::{Location, StoreOptions};

/// Options of a training run.
#[derive(Debug, Clone)]
pub struct TrainArgs {
    pub epochs: u64,
    pub stop_after_epoch: Option<u64>,
    pub seed: u64,
    pub quiet: bool,
}

const FEATURES: usize = 20;
const TRAIN: usize = 2000;
const VAL: usize = 500;
const BATCH: usize = 32;
const LR: f64 = 1e-3;

/// splitmix64: a small, well-distributed, reproducible generator.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}

/// The synthetic task: a fixed random "teacher" labels standardised features.
struct Data {
    x_train: Vec<f32>,
    y_train: Vec<f32>,
    x_val: Tensor,
    y_val: Tensor,
    mean: Vec<f32>,
    std: Vec<f32>,
}

fn make_data(seed: u64) -> Result<Data> {
    let mut rng = Rng::new(seed, 1);
    let teacher: Vec<f32> = (0..FEATURES).map(|_| rng.normal()).collect();
    let mut xs = Vec::with_capacity((TRAIN + VAL) * FEATURES);
    let mut ys = Vec::with_capacity(TRAIN + VAL);
    for _ in 0..TRAIN + VAL {
        let row: Vec<f32> = (0..FEATURES).map(|j| rng.normal() * (1.0 + j as f32 * 0.1) + 0.5).collect();
        let score: f32 = row.iter().zip(&teacher).map(|(a, b)| a * b).sum::<f32>() + (row[0] * row[1]).sin();
        let noisy = score + rng.normal() * 0.5;
        ys.push(if noisy > 0.0 { 1.0 } else { 0.0 });
        xs.extend(row);
    }
    // Preprocessing parameters: standardise with training-set statistics.
    let mean: Vec<f32> =
        (0..FEATURES).map(|j| (0..TRAIN).map(|i| xs[i * FEATURES + j]).sum::<f32>() / TRAIN as f32).collect();
    let std: Vec<f32> = (0..FEATURES)
        .map(|j| ((0..TRAIN).map(|i| (xs[i * FEATURES + j] - mean[j]).powi(2)).sum::<f32>() / TRAIN as f32).sqrt())
        .collect();
    for i in 0..TRAIN + VAL {
        for j in 0..FEATURES {
            xs[i * FEATURES + j] = (xs[i * FEATURES + j] - mean[j]) / std[j];
        }
    }
    let x_val = Tensor::from_slice(&xs[TRAIN * FEATURES..], (VAL, FEATURES), &Device::Cpu)?;
    let y_val = Tensor::from_slice(&ys[TRAIN..], (VAL, 1), &Device::Cpu)?;
    xs.truncate(TRAIN * FEATURES);
    ys.truncate(TRAIN);
    Ok(Data { x_train: xs, y_train: ys, x_val, y_val, mean, std })
}

struct Mlp {
    fc1: candle_nn::Linear,
    fc2: candle_nn::Linear,
    fc3: candle_nn::Linear,
}

impl Mlp {
    fn new(vb: VarBuilder<'_>) -> Result<Mlp> {
        Ok(Mlp {
            fc1: candle_nn::linear(FEATURES, 64, vb.pp("fc1"))?,
            fc2: candle_nn::linear(64, 32, vb.pp("fc2"))?,
            fc3: candle_nn::linear(32, 1, vb.pp("fc3"))?,
        })
    }

    /// Logits.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(x)?.relu()?;
        let h = self.fc2.forward(&h)?.relu()?;
        Ok(self.fc3.forward(&h)?)
    }
}

/// A model: its variable map, the module, and its named variables.
type Model = (VarMap, Mlp, Vec<(String, Var)>);

/// Builds the model with PyTorch's default initialisation (uniform in ±1/sqrt(fan_in)), drawn
/// from the seeded generator so that every run starts from the same weights.
fn build(seed: u64) -> Result<Model> {
    let vm = VarMap::new();
    let mlp = Mlp::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    let vars = varmap_vars(&vm);
    let mut rng = Rng::new(seed, 2);
    for (name, var) in &vars {
        let fan_in = if name == "fc1.weight" || name == "fc1.bias" {
            FEATURES
        } else if name.starts_with("fc2") {
            64
        } else {
            32
        };
        let bound = 1.0 / (fan_in as f32).sqrt();
        let vals: Vec<f32> = (0..var.elem_count()).map(|_| (rng.uniform() * 2.0 - 1.0) * bound).collect();
        var.set(&Tensor::from_vec(vals, var.dims(), &Device::Cpu)?)?;
    }
    Ok((vm, mlp, vars))
}

/// Binary cross-entropy on logits, in the numerically stable form
/// `max(x, 0) - x * y + log(1 + exp(-|x|))` (PyTorch's `BCEWithLogitsLoss`), averaged.
fn bce_with_logits(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let softplus = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    Ok((x.relu()? - (x * y)? + softplus)?.mean_all()?)
}

fn evaluate(mlp: &Mlp, data: &Data) -> Result<(f64, f64)> {
    let logits = mlp.forward(&data.x_val)?;
    let loss = bce_with_logits(&logits, &data.y_val)?.to_scalar::<f32>()?;
    let pred = candle_nn::ops::sigmoid(&logits)?.ge(0.5)?.to_dtype(DType::F32)?;
    let acc = pred.eq(&data.y_val)?.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()?;
    Ok((f64::from(loss), f64::from(acc)))
}

/// A digest of every weight and optimizer-state bit: equal digests mean bit-identical runs.
pub fn state_digest(vars: &[(String, Var)], opt: &dyn StatefulOptimizer) -> Result<String> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (name, v) in vars {
        h.update(name.as_bytes());
        for x in v.as_tensor().flatten_all()?.to_vec1::<f32>()? {
            h.update(&x.to_bits().to_le_bytes());
        }
    }
    for e in opt.state_snapshot() {
        h.update(e.name.as_bytes());
        match &e.data {
            StateData::F32(v) => v.iter().for_each(|x| h.update(&x.to_bits().to_le_bytes())),
            StateData::F64(v) => v.iter().for_each(|x| h.update(&x.to_bits().to_le_bytes())),
        }
    }
    Ok(format!("{:032x}", h.digest128()))
}

/// Runs (or resumes) training in `dir`: a run directory, or a prefix in an object store.
pub fn run(dir: &Path, args: &TrainArgs, store: &StoreOptions) -> Result<()> {
    let say = |s: String| {
        if !args.quiet {
            println!("{s}");
        }
    };
    let data = make_data(args.seed)?;
    let (_vm, mlp, vars) = build(args.seed)?;
    let params = ParamsAdamW::adam(LR);
    let mut opt = AdamW::new_named(vars.clone(), params)?;
    let options = ManagerOptions {
        keep_last: 2,
        keep_best: Some(KeepBest { metric: "val_loss".into(), mode: Mode::Min, keep: 1 }),
        save_every_epoch: true,
        ..Default::default()
    };
    let mut manager = match crate::remote::location(dir, store)? {
        Location::Local(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            CheckpointManager::open(&dir, options)
                .with_context(|| format!("opening run directory {}", dir.display()))?
        }
        Location::Object(prefix) => {
            let url = prefix.url();
            CheckpointManager::open_remote(prefix, options).with_context(|| format!("opening the run at {url}"))?
        }
    };
    opt.set_fence(Some(manager.fence()));
    let (mut epoch, mut step) = (0u64, 0u64);
    match manager.resume(&vars, Some(&mut opt))? {
        Some(r) => {
            epoch = r.state.epoch;
            step = r.state.step;
            say(format!(
                "resumed from {} (epoch {epoch}, step {step}, val_loss {:.4}){}",
                r.entry.path,
                r.state.metrics.get("val_loss").copied().unwrap_or(f64::NAN),
                if r.skipped.is_empty() { String::new() } else { format!("; skipped damaged: {:?}", r.skipped) }
            ));
        }
        None => say(format!("new run in {} (seed {}, {} epochs)", dir.display(), args.seed, args.epochs)),
    }
    if !manager.adopted().is_empty() {
        say(format!("adopted checkpoints committed before a crash: {:?}", manager.adopted()));
    }
    let hyper = json!({"lr": LR, "batch_size": BATCH, "epochs": args.epochs, "architecture": "20-64-32-1 relu mlp", "loss": "bce"});
    let t0 = Instant::now();
    while epoch < args.epochs {
        // The epoch's batch order depends only on (seed, epoch): a resumed epoch replays exactly.
        let mut order: Vec<usize> = (0..TRAIN).collect();
        let mut rng = Rng::new(args.seed, 1000 + epoch);
        for i in (1..TRAIN).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        let mut train_loss = 0.0f64;
        let mut batches = 0;
        for chunk in order.chunks(BATCH) {
            let xb: Vec<f32> =
                chunk.iter().flat_map(|&i| data.x_train[i * FEATURES..(i + 1) * FEATURES].iter().copied()).collect();
            let yb: Vec<f32> = chunk.iter().map(|&i| data.y_train[i]).collect();
            let x = Tensor::from_vec(xb, (chunk.len(), FEATURES), &Device::Cpu)?;
            let y = Tensor::from_vec(yb, (chunk.len(), 1), &Device::Cpu)?;
            let loss = bce_with_logits(&mlp.forward(&x)?, &y)?;
            opt.backward_step(&loss)?;
            train_loss += f64::from(loss.to_scalar::<f32>()?);
            batches += 1;
            step += 1;
        }
        epoch += 1;
        let (val_loss, val_acc) = evaluate(&mlp, &data)?;
        let mut state = TrainState::new(epoch, step)
            .with_metric("val_loss", val_loss)
            .with_metric("val_acc", val_acc)
            .with_metric("train_loss", train_loss / f64::from(batches));
        state.rng = json!({"seed": args.seed, "generator": "splitmix64", "batch_order": "shuffle(seed, 1000 + epoch)"});
        state.hyper_parameters = hyper.clone();
        state.user = json!({"preprocessing": {"standardize": {"mean": data.mean, "std": data.std}}});
        manager.save_async(&vars, Some(&opt), &state)?;
        say(format!(
            "epoch {epoch:>2}/{}  train_loss {:.4}  val_loss {val_loss:.4}  val_acc {:.1}%  (checkpoint saving in the background)",
            args.epochs,
            train_loss / f64::from(batches),
            val_acc * 100.0
        ));
        if args.stop_after_epoch == Some(epoch) && epoch < args.epochs {
            manager.wait()?;
            say(format!("stopping after epoch {epoch} as asked; run the same command again to resume"));
            return Ok(());
        }
    }
    manager.wait()?;
    let digest = state_digest(&vars, &opt)?;
    say(format!("trained to epoch {epoch} (step {step}) in {}", human_duration(t0.elapsed())));
    say(format!("final weights and optimizer state digest: {digest}"));

    // Inference from the best checkpoint, memory-mapped (downloaded first from a store).
    if let Some(best) = manager.best() {
        let input = crate::remote::local_input(&manager.path_of(&best), store, true)?;
        let path = input.path.clone();
        let set = ShardedReader::open(&path)?;
        let vb = safeckpt_candle::var_builder(&path, DType::F32, &Device::Cpu)?;
        let served = Mlp::new(vb.pp("model"))?;
        let (loss, acc) = evaluate(&served, &data)?;
        // The same weights through a strict load into fresh variables.
        let (_vm2, fresh, fresh_vars) = build(args.seed.wrapping_add(1))?;
        load_vars(&set, &fresh_vars, &LoadOptions { strict: true, prefix: "model.".into() })?;
        let (loss2, _) = evaluate(&fresh, &data)?;
        anyhow::ensure!(loss == loss2, "the two loading paths must agree");
        say(format!(
            "best checkpoint: {} (epoch {}, val_loss {:.4}); memory-mapped for inference: val accuracy {:.1}%",
            best.path,
            best.epoch,
            loss,
            acc * 100.0
        ));
    }
    Ok(())
}
