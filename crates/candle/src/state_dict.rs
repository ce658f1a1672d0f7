//! Saving and loading named variables (a `VarMap`, or any name -> `Var` map), with a load report
//! like PyTorch's `load_state_dict`: strict by default, and all-or-nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use candle_core::{DType, Tensor, Var};
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
/// are converted to each variable's dtype and device (PyTorch's `copy_` semantics).
///
/// Everything that can fail is checked before the first variable is touched (names, shapes, and
/// whether each dtype converts); then tensors are loaded and assigned one at a time, so the extra
/// memory is one tensor, not the model.
pub fn load_vars(set: &ShardedReader, vars: &[(String, Var)], opts: &LoadOptions) -> Result<LoadReport> {
    let report = check_vars(set, vars, opts);
    if opts.strict && !report.is_clean() {
        return Err(CandleError::Load(Box::new(report)));
    }
    let by_name: BTreeMap<&str, &Var> = vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
    let mut plan = Vec::with_capacity(report.loaded.len());
    for name in &report.loaded {
        let var = by_name[name.as_str()];
        let view = set.tensor(&format!("{}{name}", opts.prefix))?;
        crate::tensor::check_convertible(&view, var.dtype())?;
        plan.push((var, view));
    }
    for (var, view) in plan {
        let dtype: DType = var.dtype();
        var.set(&view_to_tensor(&view, var.device(), Some(dtype))?)?;
    }
    Ok(report)
}

/// A new `VarMap` holding every tensor of a file or sharded set (under `prefix`, which is
/// removed from the names), as `dtype` variables on `device`.
///
/// Each tensor is copied once, in parallel, into memory the variable then owns (no second copy,
/// unlike loading into existing variables, which must copy into their storage). Build the model
/// from it with `VarBuilder::from_varmap`: the model then uses these variables.
pub fn varmap_from_file(
    path: impl AsRef<Path>,
    prefix: &str,
    dtype: Option<DType>,
    device: &candle_core::Device,
) -> Result<VarMap> {
    let set = ShardedReader::open(path)?;
    let vm = VarMap::new();
    let built: Vec<(String, Var)> = {
        use rayon::prelude::*;
        let jobs: Vec<(&safeckpt_reader::Reader, safeckpt_reader::TensorView<'_>)> = set
            .shards()
            .iter()
            .flat_map(|r| r.tensors().filter(|t| t.name().starts_with(prefix)).map(move |t| (r, t)))
            .collect();
        jobs.par_iter()
            .map(|(reader, view)| {
                let name = view.name()[prefix.len()..].to_string();
                let natural = crate::tensor::to_candle(view.dtype());
                // The common case, no cast to the CPU: read the bytes straight from the file into
                // the vector the variable will own (parallel `pread`, no page faults on a map).
                if device.is_cpu()
                    && natural.is_some()
                    && dtype.is_none_or(|d| Some(d) == natural)
                    && let Some(var) = crate::tensor::owned_to_var(reader.load_owned(view.name())?)?
                {
                    return Ok((name, var));
                }
                Ok((name, crate::tensor::view_to_var(view, device, dtype)?))
            })
            .collect::<Result<_>>()?
    };
    {
        let mut data = vm.data().lock().unwrap_or_else(|p| p.into_inner());
        data.extend(built);
    }
    Ok(vm)
}

/// Loads a file or sharded set into a `VarMap` (see [`load_vars`]).
pub fn load_varmap(path: impl AsRef<Path>, vm: &VarMap, opts: &LoadOptions) -> Result<LoadReport> {
    let set = ShardedReader::open(path)?;
    load_vars(&set, &varmap_vars(vm), opts)
}

/// Every tensor of a safetensors file, a sharded set (an index, or a directory holding one) or
/// a multi-rank save, as candle tensors on `device`: what `candle_core::safetensors::load`
/// returns, from more kinds of input. Tensors a multi-rank save split into pieces come back
/// whole.
pub fn load(path: impl AsRef<Path>, device: &candle_core::Device) -> Result<std::collections::HashMap<String, Tensor>> {
    let set = ShardedReader::open(path)?;
    let mut out = std::collections::HashMap::with_capacity(set.len());
    for name in set.global_names() {
        let tensor = match set.global(name) {
            Some(safeckpt_reader::GlobalTensor::Whole(view)) => crate::tensor::view_to_tensor(&view, device, None)?,
            Some(g) => {
                let bytes = set.read_global(name)?;
                crate::tensor::bytes_to_tensor(name, &bytes, g.dtype(), g.shape(), device, None)?
            }
            None => continue,
        };
        out.insert(name.to_string(), tensor);
    }
    Ok(out)
}

/// Writes named tensors to `path`, as `candle_core::safetensors::save` does, with safeckpt's
/// checksums and crash-safe commit (temporary file, flush, rename). Tensors on any device are
/// written straight from their storage when on the CPU, copied to it otherwise.
pub fn save<K: AsRef<str>>(
    tensors: &std::collections::HashMap<K, Tensor>,
    path: impl AsRef<Path>,
) -> Result<safeckpt_writer::WriteSummary> {
    let mut named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_ref(), t)).collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let sources: Vec<(&str, CandleSource<'_>)> =
        named.iter().map(|(n, t)| Ok((*n, CandleSource::new(n, t)?))).collect::<Result<_>>()?;
    Ok(write_file(path, &sources, None, &WriteOptions::default())?)
}
