//! Saving and loading named variables (a `VarMap`, or any name -> `Var` map), with a load report
//! like PyTorch's `load_state_dict`: strict by default, and all-or-nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use candle_core::{DType, Var};
use candle_nn::VarMap;
use safeckpt_format::{Dtype, Metadata};
use safeckpt_reader::ShardedReader;
use safeckpt_writer::{WriteOptions, WriteSummary, write_file};

use crate::error::{CandleError, Result};
use crate::tensor::{CandleSource, view_to_tensor};

/// A tensor whose shape in the file differs from the variable's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The variable's name.
    pub name: String,
    /// The variable's shape.
    pub expected: Vec<usize>,
    /// The shape in the file.
    pub found: Vec<usize>,
    /// The dtype in the file.
    pub found_dtype: Dtype,
}

/// What a load found, as PyTorch's `load_state_dict` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Variables given a value from the file.
    pub loaded: Vec<String>,
    /// Variables with no tensor in the file.
    pub missing: Vec<String>,
    /// Tensors in the file (under the prefix) with no variable.
    pub unexpected: Vec<String>,
    /// Tensors whose shape does not fit their variable.
    pub mismatched: Vec<Mismatch>,
    /// Tensors loaded with a dtype conversion (the file's dtype differs from the variable's).
    pub cast: Vec<String>,
}

impl LoadReport {
    /// Whether everything matched (no missing, unexpected or mismatched tensors).
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return write!(f, "all {} tensors loaded", self.loaded.len());
        }
        let quoted = |v: &[String]| v.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
        write!(f, "error(s) in loading state dict (nothing was modified):")?;
        if !self.missing.is_empty() {
            write!(f, "\n    missing key(s): {}.", quoted(&self.missing))?;
        }
        if !self.unexpected.is_empty() {
            write!(f, "\n    unexpected key(s): {}.", quoted(&self.unexpected))?;
        }
        for m in &self.mismatched {
            write!(
                f,
                "\n    size mismatch for {}: the file has shape {:?} ({}), the variable has shape {:?}.",
                m.name, m.found, m.found_dtype, m.expected
            )?;
        }
        Ok(())
    }
}

/// Options for loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Refuse (and modify nothing) unless every variable and every tensor under `prefix` match.
    pub strict: bool,
    /// Tensor names in the file are `prefix + variable name` (e.g. `model.`).
    pub prefix: String,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { strict: true, prefix: String::new() }
    }
}

/// The variables of a `VarMap`, sorted by name.
pub fn varmap_vars(vm: &VarMap) -> Vec<(String, Var)> {
    let data = vm.data().lock().unwrap_or_else(|p| p.into_inner());
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Writes named variables (under `prefix`) to a safetensors file through the parallel writer,
/// straight from their CPU storage.
pub fn save_vars(
    path: impl AsRef<Path>,
    vars: &[(String, Var)],
    prefix: &str,
    metadata: Option<Metadata>,
    opts: &WriteOptions,
) -> Result<WriteSummary> {
    let tensors: Vec<(String, &candle_core::Tensor)> =
        vars.iter().map(|(n, v)| (format!("{prefix}{n}"), v.as_tensor())).collect();
    let sources: Vec<(&str, CandleSource<'_>)> =
        tensors.iter().map(|(n, t)| Ok((n.as_str(), CandleSource::new(n, t)?))).collect::<Result<_>>()?;
    Ok(write_file(path, &sources, metadata, opts)?)
}

/// Writes a `VarMap`.
pub fn save_varmap(
    path: impl AsRef<Path>,
    vm: &VarMap,
    metadata: Option<Metadata>,
    opts: &WriteOptions,
) -> Result<WriteSummary> {
    save_vars(path, &varmap_vars(vm), "", metadata, opts)
}

/// Compares variables with a file's tensors.
pub fn check_vars(set: &ShardedReader, vars: &[(String, Var)], opts: &LoadOptions) -> LoadReport {
    let mut report = LoadReport::default();
    let mut expected: BTreeMap<String, &Var> = BTreeMap::new();
    for (name, var) in vars {
        expected.insert(format!("{}{name}", opts.prefix), var);
    }
    for (full, var) in &expected {
        let short = full[opts.prefix.len()..].to_string();
        match set.get(full) {
            None => report.missing.push(short),
            Some(view) if view.shape() != var.dims() => report.mismatched.push(Mismatch {
                name: short,
                expected: var.dims().to_vec(),
                found: view.shape().to_vec(),
                found_dtype: view.dtype(),
            }),
            Some(view) => {
                if crate::tensor::to_candle(view.dtype()) != Some(var.dtype()) {
                    report.cast.push(short.clone());
                }
                report.loaded.push(short);
            }
        }
    }
    for name in set.names() {
        if let Some(short) = name.strip_prefix(opts.prefix.as_str())
            && !expected.contains_key(name)
        {
            report.unexpected.push(short.to_string());
        }
    }
    report
}

/// Loads tensors into variables. With `strict` (the default) nothing is modified unless every
/// variable has a tensor of the right shape and no tensor under the prefix is left over; the
/// report says what was found. Without it, what fits is loaded and the rest is reported. Values
/// are converted to each variable's dtype and device (PyTorch's `copy_` semantics). Every new
/// value is built before any variable is touched.
pub fn load_vars(set: &ShardedReader, vars: &[(String, Var)], opts: &LoadOptions) -> Result<LoadReport> {
    let report = check_vars(set, vars, opts);
    if opts.strict && !report.is_clean() {
        return Err(CandleError::Load(report));
    }
    let by_name: BTreeMap<&str, &Var> = vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let mut staged = Vec::with_capacity(report.loaded.len());
    for name in &report.loaded {
        let var = by_name[name.as_str()];
        let view = set.tensor(&format!("{}{name}", opts.prefix))?;
        let dtype: DType = var.dtype();
        staged.push((var, view_to_tensor(&view, var.device(), Some(dtype))?));
    }
    for (var, t) in staged {
        var.set(&t)?;
    }
    Ok(report)
}

/// Loads a file or sharded set into a `VarMap` (see [`load_vars`]).
pub fn load_varmap(path: impl AsRef<Path>, vm: &VarMap, opts: &LoadOptions) -> Result<LoadReport> {
    let set = ShardedReader::open(path)?;
    load_vars(&set, &varmap_vars(vm), opts)
}
