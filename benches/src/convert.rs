//! PyTorch-to-safetensors converters, each run once in this process and timed from the moment
//! the input is opened to the moment the output is complete.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use safeckpt_torch::ConvertOptions;
use safeckpt_writer::WriteOptions;

use crate::harness::timed;

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
        // burn's pytorch-reader: read every tensor's bytes, then the safetensors crate's writer.
        "pytorch-reader" => timed(|| -> Result<()> {
            let reader = pytorch_reader::PytorchReader::new(input).context("pytorch-reader open")?;
            let mut owned = Vec::new();
            for (name, t) in reader.tensors() {
                let dtype = match t.dtype() {
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
                };
                owned.push((name.clone(), dtype, t.shape().to_vec(), t.read()?));
            }
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
                .iter()
                .map(|(n, d, s, b)| Ok((n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b)?)))
                .collect::<Result<_>>()?;
            safetensors::serialize_to_file(views, None, output)?;
            Ok(())
        }),
        other => anyhow::bail!("unknown converter `{other}`"),
    };
    r?;
    println!("{}", t.as_secs_f64());
    Ok(())
}

/// One `write_all` of a pre-filled buffer (filled before the timer starts).
pub(crate) fn raw_write(bytes: usize, output: &Path) -> Result<()> {
    let buf: Vec<u8> = (0..bytes).map(|i| (i * 31 % 251) as u8).collect();
    let (t, r) = timed(|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(output)?;
        f.write_all(&buf)
    });
    r?;
    println!("{}", t.as_secs_f64());
    Ok(())
}
