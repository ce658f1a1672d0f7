//! Which tensors a `--dtype` conversion casts.
//!
//! A checkpoint is more than weights: Adam's moments lose what makes them useful in bf16, and a
//! step counter stored as a float cannot count past 256 in bf16. So by default only floating
//! tensors outside optimizer state are cast (optimizer state: any tensor under a top-level key
//! whose name contains `optim`, such as `optimizer_state_dict.…` or `optimizer.…`), integer and
//! boolean tensors never are, and globs over tensor names say otherwise where needed.

use globset::{Glob, GlobSet, GlobSetBuilder};
use safeckpt_format::Dtype;

use crate::convert::CastTo;

/// The tensors a cast applies to.
#[derive(Debug, Clone)]
pub struct CastPolicy {
    to: CastTo,
    only: Option<GlobSet>,
    keep: Option<GlobSet>,
}

fn globs(patterns: &[String], flag: &str) -> Result<Option<GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| format!("{flag} `{p}`: {e}"))?);
    }
    b.build().map(Some).map_err(|e| format!("{flag}: {e}"))
}

impl CastPolicy {
    /// Cast to `to` the tensors matching none of `keep_dtype` and, when `cast_only` is given,
    /// one of `cast_only` (globs over flattened tensor names: `*` matches any run of
    /// characters, dots included). Without `cast_only`, optimizer state is left alone.
    pub fn new(to: CastTo, cast_only: &[String], keep_dtype: &[String]) -> Result<Self, String> {
        Ok(CastPolicy { to, only: globs(cast_only, "--cast-only")?, keep: globs(keep_dtype, "--keep-dtype")? })
    }

    /// The type cast to.
    pub fn to(&self) -> CastTo {
        self.to
    }

    /// Whether tensor `name` of `dtype` is cast: a floating type the cast handles (F64, F32,
    /// F16, BF16), not excluded by `--keep-dtype`, and either matched by `--cast-only` or, by
    /// default, outside optimizer state.
    pub fn applies(&self, name: &str, dtype: Dtype) -> bool {
        if !matches!(dtype, Dtype::F64 | Dtype::F32 | Dtype::F16 | Dtype::BF16) || dtype == self.to.dtype() {
            return false;
        }
        if self.keep.as_ref().is_some_and(|k| k.is_match(name)) {
            return false;
        }
        match &self.only {
            Some(only) => only.is_match(name),
            None => !is_optimizer_state(name),
        }
    }
}

/// Whether a tensor belongs to optimizer state: its top-level key contains `optim`.
pub fn is_optimizer_state(name: &str) -> bool {
    name.split('.').next().is_some_and(|top| top.to_ascii_lowercase().contains("optim"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_cast_and_training_state_is_not() {
        let p = CastPolicy::new(CastTo::BF16, &[], &[]).unwrap();
        assert!(p.applies("model_state_dict.fc1.weight", Dtype::F32));
        assert!(p.applies("model.fc1.weight", Dtype::F64));
        assert!(!p.applies("optimizer_state_dict.state.0.exp_avg", Dtype::F32));
        assert!(!p.applies("optimizer.state.fc1.weight.step", Dtype::F32));
        assert!(!p.applies("model.embed.ids", Dtype::I64));
        assert!(!p.applies("model.mask", Dtype::BOOL));
        assert!(!p.applies("model.q", Dtype::F8_E4M3));
        assert!(!p.applies("model.already", Dtype::BF16));
        let keep = CastPolicy::new(CastTo::BF16, &[], &["*norm*".into()]).unwrap();
        assert!(!keep.applies("model.layers.0.input_norm.weight", Dtype::F32));
        assert!(keep.applies("model.layers.0.attn.q.weight", Dtype::F32));
        let only = CastPolicy::new(CastTo::F16, &["optimizer_state_dict.state.*.exp_avg*".into()], &[]).unwrap();
        assert!(only.applies("optimizer_state_dict.state.3.exp_avg_sq", Dtype::F32));
        assert!(!only.applies("model_state_dict.fc1.weight", Dtype::F32));
        assert!(CastPolicy::new(CastTo::F16, &["[".into()], &[]).unwrap_err().contains("--cast-only `[`"));
    }
}
