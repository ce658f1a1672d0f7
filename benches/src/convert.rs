//! PyTorch-to-safetensors converters, each run once in this process and timed from the moment
//! the input is opened to the moment the output is complete; and the streaming copies of the
//! same number of bytes that bound what any converter can do on the machine.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use safeckpt_torch::ConvertOptions;
use safeckpt_writer::WriteOptions;

use crate::harness::timed;

fn st_dtype(d: pytorch_reader::DType) -> safetensors::Dtype {
    match d {
        pytorch_reader::DType::F64 => safetensors::Dtype::F64,
        pytorch_reader::DType::F32 => safetensors::Dtype::F32,
        pytorch_reader::DType::F16 => safetensors::Dtype::F16,
        pytorch_reader::DType::BF16 => safetensors::Dtype::BF16,
        pytorch_reader::DType::I64 => safetensors::Dtype::I64,
        pytorch_reader::DType::I32 => safetensors::Dtype::I32,
        pytorch_reader::DType::I16 => safetensors::Dtype::I16,
        pytorch_reader::DType::I8 => safetensors::Dtype::I8,
        pytorch_reader::DType::U64 => safetensors::Dtype::U64,
        pytorch_reader::DType::U32 => safetensors::Dtype::U32,
        pytorch_reader::DType::U16 => safetensors::Dtype::U16,
        pytorch_reader::DType::U8 => safetensors::Dtype::U8,
        pytorch_reader::DType::Bool => safetensors::Dtype::BOOL,
    }
}

/// A pytorch-reader tensor whose bytes are read only when the safetensors writer asks for them,
/// so `serialize_to_file` holds one tensor in memory at a time.
struct LazyTensor<'r> {
    tensor: &'r pytorch_reader::Tensor,
    dtype: safetensors::Dtype,
}

impl safetensors::View for LazyTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.tensor.shape()
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // The trait cannot return an error; a failed read ends the benchmark run.
        Cow::Owned(self.tensor.read().expect("pytorch-reader read"))
    }
    fn data_len(&self) -> usize {
        self.tensor.byte_len()
    }
}

/// Runs one converter; prints the seconds it took.
pub(crate) fn run(converter: &str, input: &Path, output: &Path) -> Result<()> {
    let (t, r) = match converter {
        // The library call behind `safeckpt convert` (no fsync, like the peers).
        "safeckpt" => timed(|| -> Result<()> {
            let opts = ConvertOptions { write: WriteOptions::new().fsync(false), ..Default::default() };
            safeckpt_torch::convert(input, output, &opts, &|_| {})?;
            Ok(())
        }),
        // candle-core: read every tensor, then write them with candle's safetensors writer.
        "candle" => timed(|| -> Result<()> {
            let tensors = candle_core::pickle::read_all(input)?;
            let map: HashMap<String, candle_core::Tensor> = tensors.into_iter().collect();
            candle_core::safetensors::save(&map, output)?;
            Ok(())
        }),
        // burn's pytorch-reader, eagerly: read every tensor's bytes, then the safetensors crate's
        // writer.
        "pytorch-reader" => timed(|| -> Result<()> {
            let reader = pytorch_reader::PytorchReader::new(input).context("pytorch-reader open")?;
            let mut owned = Vec::new();
            for (name, t) in reader.tensors() {
                owned.push((name.clone(), st_dtype(t.dtype()), t.shape().to_vec(), t.read()?));
            }
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
                .iter()
                .map(|(n, d, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b)?)))
                .collect::<Result<_>>()?;
            safetensors::serialize_to_file(views, None, output)?;
            Ok(())
        }),
        // burn's pytorch-reader, lazily: open (metadata only), then `serialize_to_file` pulls each
        // tensor's bytes from the file as it writes it, one tensor in memory at a time.
        "pytorch-reader-lazy" => timed(|| -> Result<()> {
            let reader = pytorch_reader::PytorchReader::new(input).context("pytorch-reader open")?;
            let views = reader
                .tensors()
                .iter()
                .map(|(name, t)| (name.as_str(), LazyTensor { tensor: t, dtype: st_dtype(t.dtype()) }));
            safetensors::serialize_to_file(views, None, output)?;
            Ok(())
        }),
        other => anyhow::bail!("unknown converter `{other}`"),
    };
    r?;
    println!("{}", t.as_secs_f64());
    Ok(())
}

/// Copies the first `bytes` bytes of `input` into a new file `output` (no fsync): `method` is
/// `read-write` (one reused buffer of `piece_kib` KiB, `read` then `write_all`) or
/// `copy-file-range` (`std::io::copy` between files, which is `copy_file_range` on Linux: the
/// kernel copies page cache to page cache). Prints the seconds from opening the input to the
/// last write.
pub(crate) fn copy(method: &str, bytes: u64, input: &Path, output: &Path, piece_kib: usize) -> Result<()> {
    let (t, r) = timed(|| -> Result<u64> {
        let src = std::fs::File::open(input).with_context(|| format!("open {}", input.display()))?;
        let mut dst = std::fs::File::create(output).with_context(|| format!("create {}", output.display()))?;
        let mut src = src.take(bytes);
        match method {
            "read-write" => {
                let mut buf = vec![0u8; piece_kib << 10];
                let mut done = 0u64;
                loop {
                    let n = src.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    dst.write_all(&buf[..n])?;
                    done += n as u64;
                }
                Ok(done)
            }
            "copy-file-range" => Ok(std::io::copy(&mut src, &mut dst)?),
            other => anyhow::bail!("unknown copy method `{other}`"),
        }
    });
    let done = r?;
    anyhow::ensure!(done == bytes, "copied {done} of {bytes} bytes (is the input that long?)");
    println!("{}", t.as_secs_f64());
    Ok(())
}
