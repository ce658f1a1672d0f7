//! One training checkpoint = model variables + optimizer state + [`TrainState`], in one
//! safetensors file (or a sharded set when large). See `docs/format.md` for the schema.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use candle_core::{Tensor, Var};
use safeckpt_format::{Dtype, Metadata, RawTensor, TensorSource};
use safeckpt_reader::ShardedReader;
use safeckpt_writer::{
    PendingFile, PendingSet, WriteOptions, stage_sharded, write_file, write_file_pending, write_sharded,
};

use crate::error::{CandleError, Result};
use crate::optim::{StateEntry, StatefulOptimizer, require_names};
use crate::state_dict::{LoadOptions, LoadReport, check_vars};
use crate::tensor::{CandleSource, view_to_tensor};
use crate::train_state::{CHECKPOINT_KEY, CHECKPOINT_VERSION, TRAIN_STATE_KEY, TrainState};

/// Model tensors are stored as `model.<variable name>`.
pub const MODEL_PREFIX: &str = "model.";
/// Optimizer state is stored as `optimizer.state.<param>.<key>`.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";
/// The optimizer's parameter groups (hyper-parameters and parameter names), as PyTorch names them.
pub const PARAM_GROUPS_KEY: &str = "optimizer.param_groups";

/// How a checkpoint is written.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// Writer options (checksums, fsync: both on by default).
    pub write: WriteOptions,
    /// Write a sharded set (a directory) when the tensors exceed this many bytes.
    pub max_shard_size: Option<u64>,
}

/// The metadata of a checkpoint: schema, train state, optimizer kind and parameter groups.
pub fn checkpoint_metadata(opt: Option<&dyn StatefulOptimizer>, state: &TrainState) -> Metadata {
    let mut m = Metadata::new();
    let schema = serde_json::json!({
        "version": CHECKPOINT_VERSION,
        "model_prefix": MODEL_PREFIX,
        "optimizer_prefix": OPTIMIZER_PREFIX,
        "optimizer": opt.map(|o| o.kind()),
    });
    m.insert(CHECKPOINT_KEY.into(), schema.to_string());
    m.insert(TRAIN_STATE_KEY.into(), state.to_json());
    if let Some(o) = opt {
        m.insert(PARAM_GROUPS_KEY.into(), o.param_groups().to_string());
        m.insert("optimizer.kind".into(), o.kind().into());
    }
    m
}

/// A writer input that is either a candle tensor or bytes.
enum Source<'a> {
    Candle(CandleSource<'a>),
    Raw(RawTensor<'a>),
}

impl TensorSource for Source<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Source::Candle(c) => c.dtype(),
            Source::Raw(r) => r.dtype(),
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Source::Candle(c) => c.shape(),
            Source::Raw(r) => r.shape(),
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            Source::Candle(c) => c.data(),
            Source::Raw(r) => r.data(),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            Source::Candle(c) => c.data_len(),
            Source::Raw(r) => r.data_len(),
        }
    }
}

fn write_sources(
    path: &Path,
    sources: &[(String, Source<'_>)],
    metadata: Metadata,
    opts: &CheckpointOptions,
) -> Result<PathBuf> {
    let total: u64 = sources.iter().map(|(_, s)| s.data_len() as u64).sum();
    match opts.max_shard_size {
        Some(max) if total > max => {
            let s = write_sharded(path, "model", sources, Some(metadata), max, &opts.write, &|_| {})?;
            Ok(s.index.unwrap_or_else(|| path.join("model.safetensors")))
        }
        _ => Ok(write_file(path, sources, Some(metadata), &opts.write)?.path),
    }
}

/// Saves variables, optimizer state and train state to `path`, straight from their memory (CPU
/// variables and optimizer buffers are not copied). Returns the file (or index) written.
pub fn save_checkpoint(
    path: impl AsRef<Path>,
    vars: &[(String, Var)],
    opt: Option<&dyn StatefulOptimizer>,
    state: &TrainState,
    opts: &CheckpointOptions,
) -> Result<PathBuf> {
    if let Some(o) = opt {
        require_names(o)?;
    }
    let names: Vec<String> = vars.iter().map(|(n, _)| format!("{MODEL_PREFIX}{n}")).collect();
    let state_entries: Vec<StateEntry> = opt.map(|o| o.state_snapshot()).unwrap_or_default();
    let mut sources: Vec<(String, Source<'_>)> = Vec::with_capacity(vars.len() + state_entries.len());
    for (name, (_, var)) in names.iter().zip(vars) {
        sources.push((name.clone(), Source::Candle(CandleSource::new(name, var.as_tensor())?)));
    }
    for e in &state_entries {
        sources.push((format!("{OPTIMIZER_PREFIX}{}", e.name), Source::Raw(e.raw())));
    }
    write_sources(path.as_ref(), &sources, checkpoint_metadata(opt, state), opts)
}

/// Handles to what a checkpoint will hold: variables (shared candle storages) and optimizer state
/// (shared buffers). Cheap to take; nothing is copied until it is written.
#[derive(Debug)]
pub struct SnapshotSource {
    vars: Vec<(String, Tensor)>,
    state: Vec<StateEntry>,
    metadata: Metadata,
}

/// A checkpoint whose bytes are all written under temporary names but not yet committed.
#[derive(Debug)]
pub enum PendingCheckpoint {
    /// One file.
    File(PendingFile),
    /// A sharded set (in a directory).
    Set(PendingSet),
}

impl PendingCheckpoint {
    /// Flushes (when `fsync`) and makes the checkpoint visible; returns its file or index.
    pub fn commit(self, fsync: bool) -> Result<PathBuf> {
        Ok(match self {
            PendingCheckpoint::File(f) => f.commit(fsync)?.path,
            PendingCheckpoint::Set(s) => {
                let summary = s.commit(fsync)?;
                match summary.index {
                    Some(i) => i,
                    None => summary.shards.into_iter().next().map(|s| s.path).unwrap_or_default(),
                }
            }
        })
    }
}

impl SnapshotSource {
    /// Takes handles (no copy). Refuses an optimizer whose parameters are named by position
    /// ([`require_names`]).
    pub fn new(vars: &[(String, Var)], opt: Option<&dyn StatefulOptimizer>, state: &TrainState) -> Result<Self> {
        if let Some(o) = opt {
            require_names(o)?;
        }
        Ok(SnapshotSource {
            vars: vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect(),
            state: opt.map(|o| o.state_snapshot()).unwrap_or_default(),
            metadata: checkpoint_metadata(opt, state),
        })
    }

    /// Writes every byte straight from the variables' storage and the optimizer's buffers (no
    /// intermediate copy on CPU), then releases the handles: once this returns, the variables may
    /// be modified. Nothing is visible until [`PendingCheckpoint::commit`].
    pub fn write_pending(self, path: &Path, opts: &CheckpointOptions) -> Result<PendingCheckpoint> {
        let names: Vec<String> = self.vars.iter().map(|(n, _)| format!("{MODEL_PREFIX}{n}")).collect();
        let mut sources: Vec<(String, Source<'_>)> = Vec::with_capacity(self.vars.len() + self.state.len());
        for (name, (_, t)) in names.iter().zip(&self.vars) {
            sources.push((name.clone(), Source::Candle(CandleSource::new(name, t)?)));
        }
        for e in &self.state {
            sources.push((format!("{OPTIMIZER_PREFIX}{}", e.name), Source::Raw(e.raw())));
        }
        let total: u64 = sources.iter().map(|(_, s)| s.data_len() as u64).sum();
        let pending = match opts.max_shard_size {
            Some(max) if total > max => PendingCheckpoint::Set(stage_sharded(
                path,
                "model",
                &sources,
                Some(self.metadata.clone()),
                max,
                &opts.write,
                &|_| {},
            )?),
            _ => PendingCheckpoint::File(write_file_pending(
                path,
                &sources,
                Some(self.metadata.clone()),
                &opts.write,
                &|_| {},
            )?),
        };
        Ok(pending)
    }
}

/// What [`load_checkpoint`] restored.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The train state.
    pub state: TrainState,
    /// What happened to the model variables.
    pub report: LoadReport,
}

/// Reads the [`TrainState`] of a checkpoint.
pub fn read_train_state(set: &ShardedReader) -> Result<TrainState> {
    let meta = set.shards().first().and_then(|s| s.metadata());
    let text = meta.and_then(|m| m.get(TRAIN_STATE_KEY)).ok_or_else(|| CandleError::Checkpoint {
        path: set.path().to_path_buf(),
        reason: format!("no `{TRAIN_STATE_KEY}` metadata: not a safeckpt training checkpoint"),
    })?;
    TrainState::from_json(text).map_err(|e| CandleError::Checkpoint {
        path: set.path().to_path_buf(),
        reason: format!("bad train state: {e}"),
    })
}

/// Restores variables and optimizer state from a checkpoint and returns its train state.
///
/// With `strict`, nothing is modified unless every variable has a matching tensor and none is
/// left over; the optimizer's state is validated in full before it is assigned. The optimizer
/// kind recorded in the file must match.
pub fn load_checkpoint<'o>(
    set: &ShardedReader,
    vars: &[(String, Var)],
    opt: Option<&mut (dyn StatefulOptimizer + 'o)>,
    strict: bool,
) -> Result<Loaded> {
    let state = read_train_state(set)?;
    let lopts = LoadOptions { strict, prefix: MODEL_PREFIX.into() };
    let report = check_vars(set, vars, &lopts);
    if strict && !report.is_clean() {
        return Err(CandleError::Load(Box::new(report)));
    }
    // Everything that can fail is checked before anything is assigned.
    let mut plan = Vec::with_capacity(report.loaded.len());
    for (name, var) in vars {
        if !report.loaded.contains(name) {
            continue;
        }
        let view = set.tensor(&format!("{MODEL_PREFIX}{name}"))?;
        crate::tensor::check_convertible(&view, var.dtype())?;
        plan.push((var, view));
    }
    if let Some(o) = opt {
        let recorded = set.shards().first().and_then(|s| s.metadata()).and_then(|m| m.get("optimizer.kind")).cloned();
        if let Some(kind) = recorded
            && kind != o.kind()
        {
            return Err(CandleError::OptimizerState(format!(
                "{}: the checkpoint holds {kind} state, the optimizer is {}",
                set.path().display(),
                o.kind()
            )));
        }
        require_names(&*o)?;
        if strict {
            // Every parameter has state, unless none has (a checkpoint from before the first
            // step): a parameter without any is a sign of names that do not match.
            let stored: Vec<&str> = set.global_names();
            let has_state = |name: &str| {
                let prefix = format!("{OPTIMIZER_PREFIX}state.{name}.");
                stored.iter().any(|n| n.starts_with(&prefix))
            };
            let names = o.param_names();
            let without: Vec<&String> = names.iter().filter(|n| !has_state(n)).collect();
            if !without.is_empty() && without.len() < names.len() {
                return Err(CandleError::OptimizerState(format!(
                    "{}: no saved optimizer state for {} of {} parameters (first: `{}`); the optimizer's \
                     parameter names do not match the checkpoint's",
                    set.path().display(),
                    without.len(),
                    names.len(),
                    without[0]
                )));
            }
        }
        let groups = match set.shards().first().and_then(|s| s.metadata()).and_then(|m| m.get(PARAM_GROUPS_KEY)) {
            Some(text) => Some(serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
                CandleError::OptimizerState(format!("{}: `{PARAM_GROUPS_KEY}` is not JSON: {e}", set.path().display()))
            })?),
            None => None,
        };
        let get = |name: &str| -> Option<Tensor> {
            let view = set.get(&format!("{OPTIMIZER_PREFIX}{name}"))?;
            view_to_tensor(&view, &candle_core::Device::Cpu, None).ok()
        };
        // The hyper-parameters (learning rate, betas, …) as PyTorch restores them, then the
        // state; each validated in full first, and the hyper-parameters put back if the state
        // is refused.
        let before = o.param_groups();
        if let Some(g) = &groups {
            o.load_param_groups(g)?;
        }
        if let Err(e) = o.load_state(&get) {
            o.load_param_groups(&before)?;
            return Err(e);
        }
    }
    // One tensor at a time: the extra memory is one tensor, not the model.
    for (var, view) in plan {
        var.set(&view_to_tensor(&view, var.device(), Some(var.dtype()))?)?;
    }
    Ok(Loaded { state, report })
}
