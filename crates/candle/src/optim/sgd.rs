//! SGD with momentum, dampening, Nesterov and weight decay, as PyTorch's `torch.optim.SGD`
//! (`foreach=False`).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::{
    Float, HostVec, StateEntry, StatefulOptimizer, group_bool, group_f64, positional, single_group, state_vec,
};
use crate::error::Result;
use crate::manager::Fence;

/// Hyper-parameters of SGD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamsSgd {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0 disables the momentum buffer).
    pub momentum: f64,
    /// Dampening for momentum.
    pub dampening: f64,
    /// Weight decay (L2, added to the gradient).
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Maximise the objective instead of minimising it.
    pub maximize: bool,
}

impl ParamsSgd {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f64) -> Self {
        ParamsSgd { lr, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false, maximize: false }
    }
}

struct Slot {
    name: String,
    var: Var,
    momentum_buffer: Option<HostVec>,
}

/// SGD with exportable, name-keyed state.
pub struct Sgd {
    slots: Vec<Slot>,
    params: ParamsSgd,
    fence: Option<Fence>,
    positional: bool,
}

impl std::fmt::Debug for Sgd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sgd").field("params", &self.params).field("parameters", &self.slots.len()).finish()
    }
}

/// One SGD update; returns a new momentum buffer when there was none.
fn update<T: Float>(p: &mut [T], g: &[T], buf: Option<&mut [T]>, h: &ParamsSgd) -> Option<Vec<T>> {
    let t = |x: f64| T::of(x);
    let (wd, mom, keep, neg_lr) = (t(h.weight_decay), t(h.momentum), t(1.0 - h.dampening), t(-h.lr));
    let mut grad: Vec<T> = g.iter().map(|&x| if h.maximize { x.negate() } else { x }).collect();
    if h.weight_decay != 0.0 {
        // grad.plus(param, alpha=weight_decay), fused.
        for (gi, &pi) in grad.iter_mut().zip(p.iter()) {
            *gi = pi.fma(wd, *gi);
        }
    }
    let mut fresh = None;
    if h.momentum != 0.0 {
        let b: &[T] = match buf {
            None => fresh.insert(grad.clone()),
            Some(b) => {
                // buf.mul_(momentum).add_(grad, alpha=1 - dampening).
                for (bi, &gi) in b.iter_mut().zip(&grad) {
                    *bi = gi.fma(keep, bi.times(mom));
                }
                b
            }
        };
        if h.nesterov {
            for (gi, &bi) in grad.iter_mut().zip(b.iter()) {
                *gi = bi.fma(mom, *gi);
            }
        } else {
            grad.copy_from_slice(b);
        }
    }
    // param.add_(grad, alpha=-lr), fused.
    for (pi, &gi) in p.iter_mut().zip(&grad) {
        *pi = gi.fma(neg_lr, *pi);
    }
    fresh
}

impl Sgd {
    /// An optimizer over named variables.
    pub fn new_named(vars: Vec<(String, Var)>, params: ParamsSgd) -> Result<Self> {
        let slots = vars.into_iter().map(|(name, var)| Slot { name, var, momentum_buffer: None }).collect();
        Ok(Sgd { slots, params, fence: None, positional: false })
    }

    /// An optimizer over every variable of a `VarMap`.
    pub fn from_varmap(vm: &candle_nn::VarMap, params: ParamsSgd) -> Result<Self> {
        Self::new_named(crate::state_dict::varmap_vars(vm), params)
    }

    /// The hyper-parameters.
    pub fn params(&self) -> &ParamsSgd {
        &self.params
    }

    /// The learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    /// Sets the learning rate (a schedule's job).
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Applies one update from `grads`.
    pub fn step_grads(&mut self, grads: &GradStore) -> Result<()> {
        if let Some(f) = &self.fence {
            f.wait();
        }
        for slot in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else { continue };
            let mut p = HostVec::read(&slot.name, slot.var.as_tensor())?;
            let g = HostVec::read(&slot.name, &grad.to_dtype(slot.var.dtype())?)?;
            match &g {
                HostVec::F32(g) => {
                    let pp = p.f32_mut().expect("parameter read as its dtype");
                    let buf = slot.momentum_buffer.as_mut().and_then(HostVec::f32_mut);
                    let fresh = update(pp, g, buf, &self.params);
                    if let Some(b) = fresh {
                        slot.momentum_buffer = Some(HostVec::F32(std::sync::Arc::new(b)));
                    }
                }
                HostVec::F64(g) => {
                    let pp = p.f64_mut().expect("parameter read as its dtype");
                    let buf = slot.momentum_buffer.as_mut().and_then(HostVec::f64_mut);
                    let fresh = update(pp, g, buf, &self.params);
                    if let Some(b) = fresh {
                        slot.momentum_buffer = Some(HostVec::F64(std::sync::Arc::new(b)));
                    }
                }
            }
            slot.var.set(&p.to_tensor(slot.var.dims(), slot.var.device())?)?;
        }
        Ok(())
    }
}

impl candle_nn::Optimizer for Sgd {
    type Config = ParamsSgd;

    fn new(vars: Vec<Var>, config: ParamsSgd) -> candle_core::Result<Self> {
        let mut opt = Sgd::new_named(positional(vars), config)?;
        opt.positional = true;
        Ok(opt)
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        Ok(self.step_grads(grads)?)
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }
}

impl StatefulOptimizer for Sgd {
    fn kind(&self) -> &'static str {
        "SGD"
    }

    fn state_snapshot(&self) -> Vec<StateEntry> {
        self.slots
            .iter()
            .filter_map(|s| s.momentum_buffer.as_ref().map(|b| (s, b)))
            .map(|(s, b)| StateEntry::of(format!("state.{}.momentum_buffer", s.name), s.var.dims(), b))
            .collect()
    }

    fn param_groups(&self) -> serde_json::Value {
        let h = &self.params;
        serde_json::json!([{
            "lr": h.lr, "momentum": h.momentum, "dampening": h.dampening, "weight_decay": h.weight_decay,
            "nesterov": h.nesterov, "maximize": h.maximize, "foreach": false,
            "params": self.slots.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        }])
    }

    fn load_state(&mut self, get: &dyn Fn(&str) -> Option<Tensor>) -> Result<()> {
        let mut staged = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let key = format!("state.{}.momentum_buffer", s.name);
            if get(&key).is_none() {
                staged.push(None);
                continue;
            }
            let like = HostVec::read(&s.name, s.var.as_tensor())?;
            staged.push(Some(state_vec(get, &key, &like, s.var.dims())?));
        }
        for (s, b) in self.slots.iter_mut().zip(staged) {
            s.momentum_buffer = b;
        }
        Ok(())
    }

    fn param_names(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.name.clone()).collect()
    }

    fn set_fence(&mut self, fence: Option<Fence>) {
        self.fence = fence;
    }

    fn load_param_groups(&mut self, groups: &serde_json::Value) -> Result<()> {
        let g = single_group(groups, &self.param_names())?;
        let mut p = self.params;
        for (key, field) in [
            ("lr", &mut p.lr),
            ("momentum", &mut p.momentum),
            ("dampening", &mut p.dampening),
            ("weight_decay", &mut p.weight_decay),
        ] {
            if let Some(v) = group_f64(g, key)? {
                *field = v;
            }
        }
        if let Some(v) = group_bool(g, "nesterov")? {
            p.nesterov = v;
        }
        if let Some(v) = group_bool(g, "maximize")? {
            p.maximize = v;
        }
        self.params = p;
        Ok(())
    }

    fn positional_names(&self) -> bool {
        self.positional
    }
}
