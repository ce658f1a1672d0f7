//! Converting a PyTorch file to safetensors, streaming tensor by tensor from the mapped archive.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use half::{bf16, f16};
use rayon::prelude::*;
use safeckpt_format::index::shard_file_name;
use safeckpt_format::{Dtype, Metadata, ShardIndex, TensorSpec};
use safeckpt_writer::{PendingFile, StreamWriter, WriteOptions, commit_set, index_file_name, plan_shards};

use crate::archive::{ArchiveFormat, TorchArchive};
use crate::cast::CastPolicy;
use crate::error::{Result, TorchError};
use crate::flatten::flatten;
use crate::tensor::{Chunk, TensorPlan};

/// Bytes produced per step for tensors that are gathered, byte-swapped or cast: the memory a
/// conversion needs beyond the mapped file, per thread.
pub const CONVERT_CHUNK: usize = 8 << 20;

/// A floating-point type to cast floating tensors to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CastTo {
    /// bfloat16.
    BF16,
    /// IEEE half.
    F16,
    /// IEEE single.
    F32,
}

impl CastTo {
    /// The safetensors dtype.
    pub fn dtype(self) -> Dtype {
        match self {
            CastTo::BF16 => Dtype::BF16,
            CastTo::F16 => Dtype::F16,
            CastTo::F32 => Dtype::F32,
        }
    }
}

impl FromStr for CastTo {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "bf16" | "bfloat16" => Ok(CastTo::BF16),
            "f16" | "fp16" | "float16" | "half" => Ok(CastTo::F16),
            "f32" | "fp32" | "float32" | "float" => Ok(CastTo::F32),
            other => Err(format!("unknown dtype `{other}` (expected bf16, f16 or f32)")),
        }
    }
}

/// How to convert.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Convert only this sub-tree (e.g. `model_state_dict`), without its prefix.
    pub key: Option<String>,
    /// Cast the floating tensors this policy selects (by default those outside optimizer state;
    /// see [`CastPolicy`]).
    pub cast: Option<CastPolicy>,
    /// Write tied tensors as real copies instead of recording aliases in the metadata.
    pub keep_aliases: bool,
    /// Split the output into shards of at most this many bytes, with an index.
    pub max_shard_size: Option<u64>,
    /// The most bytes the conversion may produce: tensor data written plus deflated storages
    /// inflated. `None` is [`crate::default_output_limit`] of the input's size (4x it plus
    /// 16 MiB), which no real checkpoint reaches; raise it for files that need more.
    pub max_output_size: Option<u64>,
    /// Writer options (checksums, fsync, overwrite).
    pub write: WriteOptions,
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertSummary {
    /// The container read.
    pub format: ArchiveFormat,
    /// Files written (one, or the shards).
    pub outputs: Vec<PathBuf>,
    /// The index, for sharded output.
    pub index: Option<PathBuf>,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data written.
    pub data_bytes: u64,
    /// Names written as aliases (`alias -> kept`).
    pub aliases: Vec<(String, String)>,
    /// Metadata entries from the file's non-tensor values.
    pub values: usize,
    /// Tensors cast to another dtype.
    pub cast: usize,
    /// Tensors that were not contiguous in their storage (gathered on the way).
    pub gathered: usize,
    /// Whether the file's storages were big-endian.
    pub big_endian: bool,
    /// Bytes of deflated storages inflated (each once).
    pub inflated_bytes: u64,
}

/// A planned conversion: which tensors are written, as what, and the metadata.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// Tensors to write, in the order the file holds them.
    pub tensors: Vec<(TensorPlan, Dtype)>,
    /// Aliases recorded instead of written (`alias -> kept`).
    pub aliases: Vec<(String, String)>,
    /// Output metadata: `format: pt`, the file's values as JSON, and the aliases.
    pub metadata: Metadata,
    /// Number of the file's non-tensor values.
    pub values: usize,
    /// Bytes of tensor data the conversion writes.
    pub data_bytes: u64,
    /// Bytes of deflated storages it must inflate to do so.
    pub inflate_bytes: u64,
}

impl TorchArchive {
    /// Plans a conversion with `opts` (nothing is written).
    pub fn plan_conversion(&self, opts: &ConvertOptions) -> Result<Conversion> {
        let path = self.path().to_path_buf();
        let flat = flatten(self.arena(), self.root(), opts.key.as_deref())
            .map_err(|reason| TorchError::Structure { path: path.clone(), reason })?;
        let mut metadata = Metadata::new();
        metadata.insert("format".into(), "pt".into());
        let values = flat.metadata.len();
        for (k, v) in flat.metadata {
            if metadata.insert(k.clone(), v).is_some() {
                return Err(TorchError::Structure {
                    path: path.clone(),
                    reason: format!("the file's value `{k}` collides with the `format` metadata key"),
                });
            }
        }
        let mut plans = Vec::with_capacity(flat.tensors.len());
        for (name, def) in &flat.tensors {
            plans.push(TensorPlan::new(self, name, def)?);
        }
        // Tied weights: the same view of the same storage under several names.
        let mut aliases = Vec::new();
        let mut keep = vec![true; plans.len()];
        if !opts.keep_aliases {
            type ViewKey<'k> = (u32, usize, &'k [usize], &'k [usize], &'k str);
            let mut groups: HashMap<ViewKey<'_>, Vec<usize>> = HashMap::new();
            for (i, p) in plans.iter().enumerate() {
                let d = &p.def;
                groups.entry((d.storage, d.offset, &d.shape, &d.stride, d.dtype.name())).or_default().push(i);
            }
            for members in groups.values().filter(|m| m.len() > 1) {
                let kept = *members.iter().min_by(|&&a, &&b| plans[a].name.cmp(&plans[b].name)).expect("non-empty");
                for &m in members.iter().filter(|&&m| m != kept) {
                    keep[m] = false;
                    aliases.push((plans[m].name.clone(), plans[kept].name.clone()));
                }
            }
            aliases.sort();
            for (alias, kept) in &aliases {
                if metadata.insert(alias.clone(), kept.clone()).is_some() {
                    return Err(TorchError::Structure {
                        path: path.clone(),
                        reason: format!("alias `{alias}` collides with a metadata key of the same name"),
                    });
                }
            }
        }
        let tensors: Vec<(TensorPlan, Dtype)> = plans
            .into_iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(p, _)| {
                let out = match &opts.cast {
                    Some(policy) if policy.applies(&p.name, p.dtype) => policy.to().dtype(),
                    _ => p.dtype,
                };
                (p, out)
            })
            .collect();
        let data_bytes = tensors.iter().fold(0u64, |a, (p, out)| a.saturating_add(p.out_len(*out)));
        let inflate_bytes = self.inflation_for(tensors.iter().map(|(p, _)| p));
        self.check_output(data_bytes, inflate_bytes, opts.max_output_size, "--max-output-size")?;
        Ok(Conversion { tensors, aliases, metadata, values, data_bytes, inflate_bytes })
    }

    /// Bytes of the deflated storages that `plans` read (each storage once).
    pub(crate) fn inflation_for<'p>(&self, plans: impl Iterator<Item = &'p TensorPlan>) -> u64 {
        let mut seen = std::collections::HashSet::new();
        plans
            .filter(|p| p.numel() > 0 && self.storage_is_deflated(p.def.storage) && seen.insert(p.def.storage))
            .map(|p| self.storages()[p.def.storage as usize].bytes)
            .fold(0u64, u64::saturating_add)
    }

    /// Refuses work that would produce more than the limit (the default one when `None`).
    pub(crate) fn check_output(&self, data: u64, inflate: u64, limit: Option<u64>, option: &str) -> Result<()> {
        let limit = limit.unwrap_or_else(|| self.default_output_limit());
        let total = data.saturating_add(inflate);
        if total > limit {
            let inflating = if inflate > 0 {
                format!(" (including {inflate} bytes of deflated storages to inflate)")
            } else {
                String::new()
            };
            return Err(TorchError::TooLarge {
                path: self.path().to_path_buf(),
                reason: format!(
                    "reading its tensors would produce {total} bytes{inflating} from a {}-byte file, over the limit of {limit} bytes; views that repeat their storage (zero strides) or highly compressed records do this. Raise the limit with {option} if the file is trusted",
                    self.mapped().bytes().len()
                ),
            });
        }
        Ok(())
    }

    /// Writes one planned tensor through a stream writer, in bounded pieces.
    fn write_tensor(
        &self,
        w: &StreamWriter,
        plan: &TensorPlan,
        out: Dtype,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        let mut tw = w.begin(&plan.name)?;
        let mut scratch: Vec<u8> = Vec::new();
        self.tensor_chunks(&plan.name, &plan.def, CONVERT_CHUNK, &mut |chunk: Chunk<'_, '_>| {
            let bytes = chunk.as_slice();
            if out == plan.dtype {
                tw.write(bytes)?;
            } else {
                cast(bytes, plan.dtype, out, &mut scratch);
                tw.write(&scratch)?;
            }
            progress(bytes.len() as u64);
            Ok(())
        })?;
        tw.finish()?;
        Ok(())
    }

    /// Writes `tensors` (planned into `w`). Tensors copied straight from the map go one at a
    /// time in output order: the writer hashes each large piece on a second thread while it
    /// writes it, and concurrent writes to one file would only queue on its inode lock. Tensors
    /// that need work on the way (cast, gathered, byte-swapped or inflated) are spread over the
    /// pool.
    fn write_tensors(
        &self,
        w: &StreamWriter,
        tensors: &[&(TensorPlan, Dtype)],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<()> {
        type Planned<'p> = Vec<&'p (TensorPlan, Dtype)>;
        let (mut direct, work): (Planned<'_>, Planned<'_>) = tensors
            .iter()
            .partition(|(p, out)| *out == p.dtype && p.is_zero_copy(self) && !self.storage_is_deflated(p.def.storage));
        let offset = |p: &TensorPlan| w.layout().position(&p.name).map(|i| w.layout().file_range(i).start);
        direct.sort_by_key(|(p, _)| offset(p));
        // On a pool thread, so that the writer's hash-while-writing joins stay inside the pool.
        rayon::scope(|_| direct.iter().try_for_each(|(p, out)| self.write_tensor(w, p, *out, progress)))?;
        work.par_iter().try_for_each(|(p, out)| self.write_tensor(w, p, *out, progress))
    }

    /// Converts to a safetensors file (or a sharded set in the directory `output` when
    /// `max_shard_size` is set; `output/model.safetensors` alone when everything fits one shard).
    pub fn convert(
        &self,
        output: &Path,
        opts: &ConvertOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<ConvertSummary> {
        let conv = self.plan_conversion(opts)?;
        let spec = |(p, out): &(TensorPlan, Dtype)| TensorSpec::new(p.name.clone(), *out, p.shape.clone());
        let byte_len = |(p, out): &(TensorPlan, Dtype)| -> u64 { p.out_len(*out) };
        let mut summary = ConvertSummary {
            format: self.format().clone(),
            outputs: Vec::new(),
            index: None,
            tensors: conv.tensors.len(),
            data_bytes: conv.data_bytes,
            aliases: conv.aliases.clone(),
            values: conv.values,
            cast: conv.tensors.iter().filter(|(p, out)| *out != p.dtype).count(),
            gathered: conv
                .tensors
                .iter()
                .filter(|(p, _)| !crate::tensor::is_contiguous(&p.def.shape, &p.def.stride))
                .count(),
            big_endian: self.is_big_endian(),
            inflated_bytes: 0,
        };
        // Sequential order through the archive, biggest work spread over the pool.
        let sizes: Vec<u64> = conv.tensors.iter().map(byte_len).collect();
        let groups = match opts.max_shard_size {
            Some(max) if max > 0 => plan_shards(&sizes, max),
            Some(_) => {
                return Err(
                    safeckpt_writer::WriteError::Invalid("the maximum shard size must be positive".into()).into()
                );
            }
            None => vec![(0..conv.tensors.len()).collect()],
        };
        if groups.len() == 1 {
            // Everything fits one shard: one file, no index, as `save_pretrained` and
            // `write_sharded` do (in the directory `output` when sharding was asked for).
            let file = match opts.max_shard_size {
                None => output.to_path_buf(),
                Some(_) => {
                    std::fs::create_dir_all(output)
                        .map_err(|e| safeckpt_writer::WriteError::Io { path: output.to_path_buf(), source: e })?;
                    // A set already there would keep being what readers open (they prefer the
                    // index): refused unless overwriting, and retired after the commit if so.
                    let index_path = output.join(index_file_name("model"));
                    if !opts.write.has_overwrite() && index_path.exists() {
                        return Err(safeckpt_writer::WriteError::Exists { path: index_path }.into());
                    }
                    output.join("model.safetensors")
                }
            };
            let specs: Vec<TensorSpec> = conv.tensors.iter().map(spec).collect();
            let w = StreamWriter::create(&file, specs, Some(conv.metadata.clone()), &opts.write)?;
            self.write_tensors(&w, &conv.tensors.iter().collect::<Vec<_>>(), progress)?;
            let s = w.finish()?;
            if opts.max_shard_size.is_some() && opts.write.has_overwrite() {
                safeckpt_writer::retire_replaced_set(output, "model", opts.write.has_fsync())?;
            }
            summary.outputs.push(s.path);
            summary.inflated_bytes = self.inflated_bytes();
            return Ok(summary);
        }
        // Sharded: `output` is a directory.
        std::fs::create_dir_all(output)
            .map_err(|e| safeckpt_writer::WriteError::Io { path: output.to_path_buf(), source: e })?;
        let n = groups.len();
        let index_path = output.join(index_file_name("model"));
        if !opts.write.has_overwrite() && index_path.exists() {
            return Err(safeckpt_writer::WriteError::Exists { path: index_path }.into());
        }
        let pending: Vec<PendingFile> = groups
            .par_iter()
            .enumerate()
            .map(|(k, group)| -> Result<PendingFile> {
                let path = output.join(shard_file_name("model", k + 1, n));
                let specs: Vec<TensorSpec> = group.iter().map(|&i| spec(&conv.tensors[i])).collect();
                let w = StreamWriter::create(&path, specs, Some(conv.metadata.clone()), &opts.write)?;
                self.write_tensors(&w, &group.iter().map(|&i| &conv.tensors[i]).collect::<Vec<_>>(), progress)?;
                Ok(w.finish_pending()?)
            })
            .collect::<Result<_>>()?;
        let mut weight_map = BTreeMap::new();
        for (k, group) in groups.iter().enumerate() {
            for &i in group {
                weight_map.insert(conv.tensors[i].0.name.clone(), shard_file_name("model", k + 1, n));
            }
        }
        let index = ShardIndex::new(weight_map, sizes.iter().sum());
        let written = commit_set(output, pending, &index_path, &index, opts.write.has_fsync())?;
        summary.outputs = written.into_iter().map(|s| s.path).collect();
        summary.index = Some(index_path);
        summary.inflated_bytes = self.inflated_bytes();
        Ok(summary)
    }
}

/// Converts `input` (a PyTorch file) to `output` (a safetensors file, or a directory of shards).
pub fn convert(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ConvertSummary> {
    TorchArchive::open(input)?.convert(output, opts, progress)
}

/// Casts little-endian floats between F64, F32, F16 and BF16, rounding to nearest even as torch's
/// `.to(dtype)` does (F64 goes through F32 first when narrowed to 16 bits, like torch).
pub fn cast(src: &[u8], from: Dtype, to: Dtype, out: &mut Vec<u8>) {
    out.clear();
    let f32s: Box<dyn Iterator<Item = f32> + '_> = match from {
        Dtype::F64 => Box::new(src.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)),
        Dtype::F32 => Box::new(src.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))),
        Dtype::F16 => Box::new(src.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        Dtype::BF16 => Box::new(src.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        _ => {
            out.extend_from_slice(src);
            return;
        }
    };
    match to {
        Dtype::F32 if from == Dtype::F64 => {
            out.reserve(src.len() / 2);
            for c in src.chunks_exact(8) {
                out.extend_from_slice(&(f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).to_le_bytes());
            }
        }
        Dtype::F32 => f32s.for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        Dtype::F16 => f32s.for_each(|x| out.extend_from_slice(&f16::from_f32(x).to_le_bytes())),
        Dtype::BF16 => f32s.for_each(|x| out.extend_from_slice(&bf16::from_f32(x).to_le_bytes())),
        _ => out.extend_from_slice(src),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn casts_round_to_nearest_even() {
        let mut out = Vec::new();
        let src: Vec<u8> =
            [1.0f32, 1.0 + 2f32.powi(-8), -0.0, f32::INFINITY].iter().flat_map(|x| x.to_le_bytes()).collect();
        cast(&src, Dtype::F32, Dtype::BF16, &mut out);
        let got: Vec<u16> = out.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        // 1 + 2^-8 is a tie between 1.0 and 1.0078125: even wins (1.0).
        assert_eq!(got, vec![0x3f80, 0x3f80, 0x8000, 0x7f80]);
        cast(&out.clone(), Dtype::BF16, Dtype::F32, &mut out);
        assert_eq!(f32::from_le_bytes(out[..4].try_into().unwrap()), 1.0);
        let d: Vec<u8> = 0.1f64.to_le_bytes().to_vec();
        cast(&d, Dtype::F64, Dtype::F16, &mut out);
        assert_eq!(f16::from_le_bytes([out[0], out[1]]), f16::from_f32(0.1));
        assert_eq!("BF16".parse::<CastTo>(), Ok(CastTo::BF16));
        assert!("int8".parse::<CastTo>().is_err());
    }
}
