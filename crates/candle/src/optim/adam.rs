//! Adam and AdamW, as PyTorch's `torch.optim.Adam` / `AdamW` (`foreach=False`).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rayon::prelude::*;

use super::{
    Float, HostVec, StateEntry, StatefulOptimizer, group_bool, group_f64, positional, single_group, state_vec,
    step_value,
};
use crate::error::{CandleError, Result};
use crate::manager::Fence;

/// Hyper-parameters of Adam and AdamW.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamsAdamW {
    /// Learning rate.
    pub lr: f64,
    /// Coefficient of the running average of gradients.
    pub beta1: f64,
    /// Coefficient of the running average of squared gradients.
    pub beta2: f64,
    /// Term added to the denominator.
    pub eps: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Decoupled weight decay (AdamW) instead of L2 added to the gradient (Adam).
    pub decoupled_weight_decay: bool,
    /// Use the maximum of past squared-gradient averages (AMSGrad).
    pub amsgrad: bool,
    /// Maximise the objective instead of minimising it.
    pub maximize: bool,
}

impl ParamsAdamW {
    /// PyTorch's `Adam` defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay).
    pub fn adam(lr: f64) -> Self {
        ParamsAdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            amsgrad: false,
            maximize: false,
        }
    }

    /// PyTorch's `AdamW` defaults (weight decay 1e-2, decoupled).
    pub fn adamw(lr: f64) -> Self {
        ParamsAdamW { weight_decay: 1e-2, decoupled_weight_decay: true, ..Self::adam(lr) }
    }
}

impl ParamsAdamW {
    /// Hyper-parameters from a PyTorch `Adam`/`AdamW` parameter group (as in
    /// `optimizer.state_dict()["param_groups"][0]`); `adamw` says which class it came from
    /// (older torch versions do not record `decoupled_weight_decay`).
    pub fn from_torch_group(group: &serde_json::Value, adamw: bool) -> ParamsAdamW {
        let base = if adamw { Self::adamw(1e-3) } else { Self::adam(1e-3) };
        let f = |k: &str, d: f64| group[k].as_f64().unwrap_or(d);
        let b = |k: &str, d: bool| group[k].as_bool().unwrap_or(d);
        ParamsAdamW {
            lr: f("lr", base.lr),
            beta1: group["betas"][0].as_f64().unwrap_or(base.beta1),
            beta2: group["betas"][1].as_f64().unwrap_or(base.beta2),
            eps: f("eps", base.eps),
            weight_decay: f("weight_decay", base.weight_decay),
            decoupled_weight_decay: b("decoupled_weight_decay", base.decoupled_weight_decay),
            amsgrad: b("amsgrad", false),
            maximize: b("maximize", false),
        }
    }
}

impl Default for ParamsAdamW {
    fn default() -> Self {
        Self::adamw(1e-3)
    }
}

struct Slot {
    name: String,
    var: Var,
    step: f64,
    exp_avg: Option<HostVec>,
    exp_avg_sq: Option<HostVec>,
    max_exp_avg_sq: Option<HostVec>,
}

/// Adam / AdamW with exportable, name-keyed state.
pub struct AdamW {
    slots: Vec<Slot>,
    params: ParamsAdamW,
    fence: Option<Fence>,
    positional: bool,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW").field("params", &self.params).field("parameters", &self.slots.len()).finish()
    }
}

/// One Adam update of one parameter, in PyTorch's operation order (see the module docs).
#[allow(clippy::too_many_arguments)]
fn update<T: Float>(
    p: &mut [T],
    g: &[T],
    m: &mut [T],
    v: &mut [T],
    vmax: Option<&mut [T]>,
    step: f64,
    h: &ParamsAdamW,
) {
    let t = |x: f64| T::of(x);
    let bias_correction1 = 1.0 - h.beta1.powf(step);
    let bias_correction2 = 1.0 - h.beta2.powf(step);
    let step_size = h.lr / bias_correction1;
    let bc2_sqrt = t(bias_correction2.root());
    let (w1, b2, c2, eps, wd, neg_step) =
        (t(1.0 - h.beta1), t(h.beta2), t(1.0 - h.beta2), t(h.eps), t(h.weight_decay), t(-step_size));
    let decay = t(1.0 - h.lr * h.weight_decay);
    let chunk = 1 << 14;
    type Chunks<'c, T> = (((&'c mut [T], &'c [T]), &'c mut [T]), &'c mut [T]);
    let body = |(((p, g), m), v): Chunks<'_, T>, mut vmax: Option<&mut [T]>| {
        for i in 0..p.len() {
            let mut grad = if h.maximize { g[i].negate() } else { g[i] };
            if h.weight_decay != 0.0 {
                if h.decoupled_weight_decay {
                    p[i] = p[i].times(decay);
                } else {
                    grad = p[i].fma(wd, grad);
                }
            }
            // exp_avg.lerp_(grad, 1 - beta1): fused `weight * (end - self) + self`.
            m[i] = grad.minus(m[i]).fma(w1, m[i]);
            // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2).
            let vi = v[i].times(b2);
            v[i] = c2.times(grad).fma(grad, vi);
            let second = match vmax.as_deref_mut() {
                Some(mx) => {
                    // torch.maximum: NaN wins from either side.
                    #[allow(clippy::eq_op, reason = "x != x is the NaN test in a generic float")]
                    if mx[i] == mx[i] && (v[i] > mx[i] || v[i] != v[i]) {
                        mx[i] = v[i];
                    }
                    mx[i]
                }
                None => v[i],
            };
            let denom = second.root().over(bc2_sqrt).plus(eps);
            // param.addcdiv_(exp_avg, denom, value=-step_size).
            p[i] = p[i].plus(neg_step.times(m[i]).over(denom));
        }
    };
    match vmax {
        None => p
            .par_chunks_mut(chunk)
            .zip(g.par_chunks(chunk))
            .zip(m.par_chunks_mut(chunk))
            .zip(v.par_chunks_mut(chunk))
            .for_each(|x| body(x, None)),
        Some(vmax) => p
            .par_chunks_mut(chunk)
            .zip(g.par_chunks(chunk))
            .zip(m.par_chunks_mut(chunk))
            .zip(v.par_chunks_mut(chunk))
            .zip(vmax.par_chunks_mut(chunk))
            .for_each(|(x, mx)| body(x, Some(mx))),
    }
}

impl AdamW {
    /// An optimizer over named variables (names key the saved state).
    pub fn new_named(vars: Vec<(String, Var)>, params: ParamsAdamW) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| Slot { name, var, step: 0.0, exp_avg: None, exp_avg_sq: None, max_exp_avg_sq: None })
            .collect();
        Ok(AdamW { slots, params, fence: None, positional: false })
    }

    /// An optimizer over every variable of a `VarMap`, named as in the map.
    pub fn from_varmap(vm: &candle_nn::VarMap, params: ParamsAdamW) -> Result<Self> {
        Self::new_named(crate::state_dict::varmap_vars(vm), params)
    }

    /// The hyper-parameters.
    pub fn params(&self) -> &ParamsAdamW {
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

    /// Applies one update from `grads`. Parameters without a gradient are skipped (their step
    /// count does not advance), as in PyTorch.
    pub fn step_grads(&mut self, grads: &GradStore) -> Result<()> {
        if let Some(f) = &self.fence {
            f.wait();
        }
        for slot in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else { continue };
            let mut p = HostVec::read(&slot.name, slot.var.as_tensor())?;
            let g = HostVec::read(&slot.name, &grad.to_dtype(slot.var.dtype())?)?;
            slot.step += 1.0;
            let m = slot.exp_avg.get_or_insert_with(|| p.zeros_like());
            let v = slot.exp_avg_sq.get_or_insert_with(|| p.zeros_like());
            let vmax = if self.params.amsgrad {
                Some(slot.max_exp_avg_sq.get_or_insert_with(|| p.zeros_like()))
            } else {
                None
            };
            match &g {
                HostVec::F32(g) => {
                    let (Some(pp), Some(mm), Some(vv)) = (p.f32_mut(), m.f32_mut(), v.f32_mut()) else {
                        unreachable!("state has its parameter's dtype")
                    };
                    update(pp, g, mm, vv, vmax.and_then(HostVec::f32_mut), slot.step, &self.params);
                }
                HostVec::F64(g) => {
                    let (Some(pp), Some(mm), Some(vv)) = (p.f64_mut(), m.f64_mut(), v.f64_mut()) else {
                        unreachable!("state has its parameter's dtype")
                    };
                    update(pp, g, mm, vv, vmax.and_then(HostVec::f64_mut), slot.step, &self.params);
                }
            }
            slot.var.set(&p.to_tensor(slot.var.dims(), slot.var.device())?)?;
        }
        Ok(())
    }
}

impl candle_nn::Optimizer for AdamW {
    type Config = ParamsAdamW;

    fn new(vars: Vec<Var>, config: ParamsAdamW) -> candle_core::Result<Self> {
        let mut opt = AdamW::new_named(positional(vars), config)?;
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

impl StatefulOptimizer for AdamW {
    fn kind(&self) -> &'static str {
        if self.params.decoupled_weight_decay { "AdamW" } else { "Adam" }
    }

    fn state_snapshot(&self) -> Vec<StateEntry> {
        let mut out = Vec::new();
        for s in &self.slots {
            let Some(m) = &s.exp_avg else { continue };
            let shape = s.var.dims();
            out.push(StateEntry::scalar(format!("state.{}.step", s.name), s.step as f32));
            out.push(StateEntry::of(format!("state.{}.exp_avg", s.name), shape, m));
            if let Some(v) = &s.exp_avg_sq {
                out.push(StateEntry::of(format!("state.{}.exp_avg_sq", s.name), shape, v));
            }
            if let Some(v) = &s.max_exp_avg_sq {
                out.push(StateEntry::of(format!("state.{}.max_exp_avg_sq", s.name), shape, v));
            }
        }
        out
    }

    fn param_groups(&self) -> serde_json::Value {
        let h = &self.params;
        serde_json::json!([{
            "lr": h.lr, "betas": [h.beta1, h.beta2], "eps": h.eps, "weight_decay": h.weight_decay,
            "amsgrad": h.amsgrad, "maximize": h.maximize, "decoupled_weight_decay": h.decoupled_weight_decay,
            "foreach": false,
            "params": self.slots.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        }])
    }

    fn load_state(&mut self, get: &dyn Fn(&str) -> Option<Tensor>) -> Result<()> {
        // Build everything first; assign only when all of it is valid.
        let mut staged = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let key = |k: &str| format!("state.{}.{k}", s.name);
            if get(&key("exp_avg")).is_none() && get(&key("step")).is_none() {
                staged.push(None);
                continue;
            }
            let like = HostVec::read(&s.name, s.var.as_tensor())?;
            let step = step_value(get, &key("step"))?;
            let dims = s.var.dims();
            let m = state_vec(get, &key("exp_avg"), &like, dims)?;
            let v = state_vec(get, &key("exp_avg_sq"), &like, dims)?;
            let vmax =
                if self.params.amsgrad { Some(state_vec(get, &key("max_exp_avg_sq"), &like, dims)?) } else { None };
            staged.push(Some((step, m, v, vmax)));
        }
        for (s, st) in self.slots.iter_mut().zip(staged) {
            match st {
                Some((step, m, v, vmax)) => {
                    s.step = step;
                    s.exp_avg = Some(m);
                    s.exp_avg_sq = Some(v);
                    s.max_exp_avg_sq = vmax;
                }
                None => {
                    s.step = 0.0;
                    s.exp_avg = None;
                    s.exp_avg_sq = None;
                    s.max_exp_avg_sq = None;
                }
            }
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
        if let Some(v) = group_f64(g, "lr")? {
            p.lr = v;
        }
        if let Some(b) = g.get("betas") {
            let pair = b
                .as_array()
                .and_then(|b| Some((b.first()?.as_f64()?, b.get(1)?.as_f64()?)))
                .filter(|_| b.as_array().is_some_and(|b| b.len() == 2));
            let (b1, b2) = pair
                .ok_or_else(|| CandleError::OptimizerState(format!("param_groups: `betas` is {b}, not two numbers")))?;
            (p.beta1, p.beta2) = (b1, b2);
        }
        if let Some(v) = group_f64(g, "eps")? {
            p.eps = v;
        }
        if let Some(v) = group_f64(g, "weight_decay")? {
            p.weight_decay = v;
        }
        if let Some(v) = group_bool(g, "amsgrad")? {
            p.amsgrad = v;
        }
        if let Some(v) = group_bool(g, "maximize")? {
            p.maximize = v;
        }
        if let Some(v) = group_bool(g, "decoupled_weight_decay")? {
            p.decoupled_weight_decay = v;
        }
        self.params = p;
        Ok(())
    }

    fn positional_names(&self) -> bool {
        self.positional
    }
}
