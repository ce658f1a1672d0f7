//! Optimizers whose state can be saved and restored, implementing `candle_nn::Optimizer`.
//!
//! candle-nn's `AdamW` and `SGD` keep their moments private, so a candle run cannot be resumed
//! exactly. These follow PyTorch's single-tensor (`foreach=False`) update rules operation by
//! operation, in the parameter's own precision, with fused multiply-adds where PyTorch's CPU
//! kernels fuse them, and key their state by parameter **name**. State names follow PyTorch:
//! `state.<param>.exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`, `momentum_buffer`, `step`.
//!
//! The update runs on host memory: each parameter is read, updated and written back with
//! `Var::set`. Parameters must be `F32` or `F64`.

mod adam;
mod sgd;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use safeckpt_format::{Dtype, RawTensor};

pub use adam::{AdamW, ParamsAdamW};

pub use sgd::{ParamsSgd, Sgd};

use crate::error::{CandleError, Result};

/// An optimizer whose whole state can be exported and restored.
pub trait StatefulOptimizer {
    /// `Adam`, `AdamW` or `SGD`.
    fn kind(&self) -> &'static str;
    /// Every state tensor, named `state.<param>.<key>` (PyTorch's names). The data is shared,
    /// not copied: the optimizer copies a buffer before modifying it while a snapshot holds it.
    fn state_snapshot(&self) -> Vec<StateEntry>;
    /// The parameter group (hyper-parameters and parameter names) as PyTorch writes it.
    fn param_groups(&self) -> serde_json::Value;
    /// Restores state from named tensors (`state.<param>.<key>`); fails without modifying
    /// anything when a tensor is missing or has the wrong shape.
    fn load_state(&mut self, get: &dyn Fn(&str) -> Option<Tensor>) -> Result<()>;
    /// Parameter names, in order.
    fn param_names(&self) -> Vec<String>;
    /// Waits, before the optimizer next modifies a variable, for `fence` (used by asynchronous
    /// saves, which copy the variables in the background).
    fn set_fence(&mut self, fence: Option<crate::manager::Fence>);
    /// Restores the hyper-parameters from `param_groups` as PyTorch's `load_state_dict` does
    /// (learning rate, betas, momentum, …; the parameter list is checked, not assigned). The
    /// whole group is validated before anything changes.
    fn load_param_groups(&mut self, groups: &serde_json::Value) -> Result<()>;
    /// Whether the parameters are named by their position ("0", "1", …), as the positional
    /// `candle_nn::Optimizer::new` names them. Checkpoints refuse such an optimizer: see
    /// [`require_names`].
    fn positional_names(&self) -> bool {
        false
    }
}

/// Refuses an optimizer whose parameters are named by position: `candle_nn::Optimizer::new(vars,
/// params)` with `varmap.all_vars()`, whose order comes from a `HashMap` and changes from process
/// to process, so a resume would put the moments on the wrong parameters (silently, wherever
/// shapes match, as in every transformer layer).
pub fn require_names(opt: &dyn StatefulOptimizer) -> Result<()> {
    if opt.positional_names() {
        return Err(CandleError::OptimizerState(format!(
            "the {} optimizer was built with `candle_nn::Optimizer::new(vars, params)`, which names parameters \
             by position; `VarMap::all_vars()` lists them in an order that changes from process to process, \
             so saved state would be restored onto the wrong parameters. Build it with `{}::from_varmap(&varmap, \
             params)` or `new_named(varmap_vars(&varmap), params)` instead",
            opt.kind(),
            if opt.kind() == "SGD" { "Sgd" } else { "AdamW" }
        )));
    }
    Ok(())
}

/// The one parameter group of `groups` (PyTorch's `param_groups`: a list of groups), checked
/// against the optimizer's parameter names when the group names them (checkpoints written by
/// safeckpt do; a converted PyTorch file numbers them).
pub(crate) fn single_group<'g>(
    groups: &'g serde_json::Value,
    names: &[String],
) -> Result<&'g serde_json::Map<String, serde_json::Value>> {
    let bad = |why: String| CandleError::OptimizerState(format!("param_groups: {why}"));
    let group = match groups {
        serde_json::Value::Array(g) if g.len() == 1 => &g[0],
        serde_json::Value::Array(g) => {
            return Err(bad(format!("{} groups; one group of parameters is supported", g.len())));
        }
        other => other,
    };
    let group = group.as_object().ok_or_else(|| bad("a group is not a JSON object".into()))?;
    if let Some(params) = group.get("params").and_then(serde_json::Value::as_array) {
        if params.len() != names.len() {
            return Err(bad(format!("{} parameters recorded, the optimizer has {}", params.len(), names.len())));
        }
        for (p, n) in params.iter().zip(names) {
            if let Some(p) = p.as_str()
                && p != n
            {
                return Err(bad(format!("parameter `{p}` recorded where the optimizer has `{n}`")));
            }
        }
    }
    Ok(group)
}

/// A hyper-parameter of a group: `Some` when recorded, an error when of the wrong type.
pub(crate) fn group_f64(group: &serde_json::Map<String, serde_json::Value>, key: &str) -> Result<Option<f64>> {
    match group.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| CandleError::OptimizerState(format!("param_groups: `{key}` is {v}, not a number"))),
    }
}

/// A boolean hyper-parameter of a group.
pub(crate) fn group_bool(group: &serde_json::Map<String, serde_json::Value>, key: &str) -> Result<Option<bool>> {
    match group.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| CandleError::OptimizerState(format!("param_groups: `{key}` is {v}, not a boolean"))),
    }
}

/// A float type the update kernels run in.
pub(crate) trait Float: Copy + Send + Sync + PartialOrd + 'static {
    fn of(v: f64) -> Self;
    fn fma(self, a: Self, b: Self) -> Self;
    fn root(self) -> Self;
    fn plus(self, o: Self) -> Self;
    fn minus(self, o: Self) -> Self;
    fn times(self, o: Self) -> Self;
    fn over(self, o: Self) -> Self;
    fn negate(self) -> Self;
}

macro_rules! float {
    ($t:ty) => {
        impl Float for $t {
            fn of(v: f64) -> Self {
                v as $t
            }
            fn fma(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }
            fn root(self) -> Self {
                <$t>::sqrt(self)
            }
            fn plus(self, o: Self) -> Self {
                self + o
            }
            fn minus(self, o: Self) -> Self {
                self - o
            }
            fn times(self, o: Self) -> Self {
                self * o
            }
            fn over(self, o: Self) -> Self {
                self / o
            }
            fn negate(self) -> Self {
                -self
            }
        }
    };
}
float!(f32);
float!(f64);

/// One state tensor of an optimizer, shared with it (see [`StatefulOptimizer::state_snapshot`]).
#[derive(Debug, Clone)]
pub struct StateEntry {
    /// `state.<param>.<key>`.
    pub name: String,
    /// Shape (`[]` for the step counter).
    pub shape: Vec<usize>,
    /// The values.
    pub data: StateData,
}

/// The values of a state tensor.
#[derive(Debug, Clone)]
pub enum StateData {
    /// 32-bit floats.
    F32(Arc<Vec<f32>>),
    /// 64-bit floats.
    F64(Arc<Vec<f64>>),
}

impl StateEntry {
    /// The entry as a writer input, borrowing its data.
    pub fn raw(&self) -> RawTensor<'_> {
        match &self.data {
            StateData::F32(v) => {
                RawTensor::borrowed(Dtype::F32, self.shape.clone(), bytemuck::cast_slice(v.as_slice()))
            }
            StateData::F64(v) => {
                RawTensor::borrowed(Dtype::F64, self.shape.clone(), bytemuck::cast_slice(v.as_slice()))
            }
        }
    }

    pub(crate) fn scalar(name: String, v: f32) -> StateEntry {
        StateEntry { name, shape: Vec::new(), data: StateData::F32(Arc::new(vec![v])) }
    }

    pub(crate) fn of(name: String, shape: &[usize], v: &HostVec) -> StateEntry {
        let data = match v {
            HostVec::F32(x) => StateData::F32(x.clone()),
            HostVec::F64(x) => StateData::F64(x.clone()),
        };
        StateEntry { name, shape: shape.to_vec(), data }
    }
}

/// A parameter's values, a gradient or a state buffer, in host memory. Shared (copy-on-write)
/// with snapshots taken by asynchronous saves.
#[derive(Debug, Clone)]
pub(crate) enum HostVec {
    F32(Arc<Vec<f32>>),
    F64(Arc<Vec<f64>>),
}

impl HostVec {
    pub(crate) fn read(name: &str, t: &Tensor) -> Result<HostVec> {
        let flat = t.flatten_all()?;
        match t.dtype() {
            DType::F32 => Ok(HostVec::F32(Arc::new(flat.to_vec1()?))),
            DType::F64 => Ok(HostVec::F64(Arc::new(flat.to_vec1()?))),
            other => Err(CandleError::Dtype {
                tensor: name.into(),
                reason: format!("optimizers update F32 or F64 parameters, this one is {other:?}"),
            }),
        }
    }

    pub(crate) fn zeros_like(&self) -> HostVec {
        match self {
            HostVec::F32(v) => HostVec::F32(Arc::new(vec![0.0; v.len()])),
            HostVec::F64(v) => HostVec::F64(Arc::new(vec![0.0; v.len()])),
        }
    }

    pub(crate) fn to_tensor(&self, shape: &[usize], device: &Device) -> Result<Tensor> {
        Ok(match self {
            HostVec::F32(v) => Tensor::from_slice(v.as_slice(), shape, device)?,
            HostVec::F64(v) => Tensor::from_slice(v.as_slice(), shape, device)?,
        })
    }

    pub(crate) fn dtype(&self) -> DType {
        match self {
            HostVec::F32(_) => DType::F32,
            HostVec::F64(_) => DType::F64,
        }
    }

    /// Mutable f32 data (copied first if a snapshot shares it).
    pub(crate) fn f32_mut(&mut self) -> Option<&mut [f32]> {
        match self {
            HostVec::F32(v) => Some(Arc::make_mut(v).as_mut_slice()),
            HostVec::F64(_) => None,
        }
    }

    /// Mutable f64 data (copied first if a snapshot shares it).
    pub(crate) fn f64_mut(&mut self) -> Option<&mut [f64]> {
        match self {
            HostVec::F64(v) => Some(Arc::make_mut(v).as_mut_slice()),
            HostVec::F32(_) => None,
        }
    }
}

/// Looks up a state tensor and checks it against its parameter: the same shape, not only the
/// same number of elements (moments of a `[4096, 1024]` weight do not fit a `[1024, 4096]` one).
pub(crate) fn state_vec(
    get: &dyn Fn(&str) -> Option<Tensor>,
    key: &str,
    like: &HostVec,
    shape: &[usize],
) -> Result<HostVec> {
    let t = get(key).ok_or_else(|| CandleError::OptimizerState(format!("`{key}` is missing")))?;
    if t.dims() != shape {
        return Err(CandleError::OptimizerState(format!("`{key}` has shape {:?}, its parameter {shape:?}", t.dims())));
    }
    HostVec::read(key, &t.to_dtype(like.dtype())?)
}

/// Reads a 0-d step counter tensor (PyTorch keeps `step` as a float32 scalar tensor).
pub(crate) fn step_value(get: &dyn Fn(&str) -> Option<Tensor>, key: &str) -> Result<f64> {
    let t = get(key).ok_or_else(|| CandleError::OptimizerState(format!("`{key}` is missing")))?;
    let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    match v.as_slice() {
        [s] if *s >= 0.0 && s.fract() == 0.0 => Ok(*s),
        _ => Err(CandleError::OptimizerState(format!("`{key}` is not a non-negative whole step count"))),
    }
}

/// Names for the positional `candle_nn::Optimizer::new` constructor: "0", "1", … as PyTorch
/// numbers parameters in a state dict.
pub(crate) fn positional(vars: Vec<Var>) -> Vec<(String, Var)> {
    vars.into_iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect()
}

/// Restores a PyTorch optimizer's state from a converted PyTorch checkpoint: the tensors
/// `<prefix>.state.<index>.<key>` and the metadata `<prefix>.param_groups`, as `safeckpt convert`
/// writes them (e.g. `prefix` = `optimizer_state_dict`).
///
/// PyTorch numbers parameters by their position in `model.parameters()`; `param_names` gives that
/// order (the optimizer's own parameter names), so the moments land on the right parameters and a
/// run started in PyTorch continues here.
pub fn load_torch_state(
    set: &safeckpt_reader::ShardedReader,
    prefix: &str,
    param_names: &[&str],
    opt: &mut dyn StatefulOptimizer,
) -> Result<()> {
    let groups = torch_param_groups(set, prefix)?;
    let count: usize =
        groups.as_array().map_or(0, |g| g.iter().map(|g| g["params"].as_array().map_or(0, Vec::len)).sum());
    if count != param_names.len() {
        return Err(CandleError::OptimizerState(format!(
            "{}: the PyTorch optimizer has {count} parameters, {} names were given",
            set.path().display(),
            param_names.len()
        )));
    }
    let map = torch_state_names(prefix, param_names);
    let get = |name: &str| -> Option<Tensor> {
        let stored = map.get(name)?;
        let view = set.get(stored)?;
        crate::tensor::view_to_tensor(&view, &Device::Cpu, None).ok()
    };
    // The hyper-parameters as `load_state_dict` restores them, put back if the state is refused.
    let before = opt.param_groups();
    opt.load_param_groups(&groups)?;
    if let Err(e) = opt.load_state(&get) {
        opt.load_param_groups(&before)?;
        return Err(e);
    }
    Ok(())
}

/// The `<prefix>.param_groups` metadata of a converted PyTorch checkpoint.
pub fn torch_param_groups(set: &safeckpt_reader::ShardedReader, prefix: &str) -> Result<serde_json::Value> {
    let key = format!("{prefix}.param_groups");
    let text = set.shards().first().and_then(|s| s.metadata()).and_then(|m| m.get(&key)).ok_or_else(|| {
        CandleError::OptimizerState(format!(
            "{}: no `{key}` metadata (was the file made by `safeckpt convert`?)",
            set.path().display()
        ))
    })?;
    serde_json::from_str(text).map_err(|e| CandleError::OptimizerState(format!("`{key}` is not JSON: {e}")))
}

/// Maps a converted PyTorch optimizer state (`<prefix>.state.<index>.<key>`, indices in
/// `param_groups[..].params` order) to parameter names, for [`StatefulOptimizer::load_state`].
///
/// `param_names` lists the model's parameters in the order `model.parameters()` yields them in
/// PyTorch (the order the optimizer was built with).
pub fn torch_state_names(prefix: &str, param_names: &[&str]) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (i, name) in param_names.iter().enumerate() {
        for key in ["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "step"] {
            map.insert(format!("state.{name}.{key}"), format!("{prefix}.state.{i}.{key}"));
        }
    }
    map
}
