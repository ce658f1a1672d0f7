//! Corruption: random single-bit flips and byte overwrites anywhere in a checkpoint.

use anyhow::Result;
use safeckpt_candle::optim::{AdamW, ParamsAdamW};
use safeckpt_candle::{CheckpointOptions, TrainState, save_checkpoint};
use safeckpt_reader::{IntegrityFailure, Reader};
use safeckpt_writer::WriteOptions;

use crate::{Rng, content};

/// Counts by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorruptionReport {
    /// Trials in the data region.
    pub data_trials: usize,
    /// Of those, reported by `verify` naming exactly the damaged tensor.
    pub data_named: usize,
    /// Trials in the length prefix or header.
    pub header_trials: usize,
    /// Of those, refused as structurally invalid when opened.
    pub header_structural: usize,
    /// Of those, opened but reported by `verify` (header checksum, tensor checksum, integrity
    /// record).
    pub header_checksum: usize,
    /// Of those, opened and verified, with content identical to the original (e.g. a padding space
    /// overwritten by another whitespace): harmless.
    pub header_benign: usize,
    /// Of those, the integrity record's key itself damaged: the file reads as one without
    /// checksums, with every tensor intact; `verify --require-checksums` and the checkpoint
    /// manager (whose ledger says it had checksums) refuse it.
    pub header_record_lost: usize,
    /// Damage that loaded silently with different content. Must be zero.
    pub silent_wrong: usize,
    /// What each silent case was: offset, old and new byte, and the header text around it.
    pub silent_cases: Vec<String>,
}

/// Builds a training checkpoint (model and AdamW state) and damages copies of it `trials` times:
/// half single-bit flips, half random byte overwrites, at uniformly random offsets.
pub fn campaign(trials: usize, seed: u64) -> Result<CorruptionReport> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ckpt.safetensors");
    let vars = content::vars(3, 1)?;
    let mut opt = AdamW::new_named(vars.clone(), ParamsAdamW::adam(1e-3))?;
    let mut grads = candle_core::backprop::GradStore::default();
    for (_, v) in &vars {
        grads.insert(v.as_tensor(), v.as_tensor().affine(0.5, 0.1)?);
    }
    opt.step_grads(&grads)?;
    let state = TrainState::new(2, 40).with_metric("val_loss", 0.25);
    let opts = CheckpointOptions { write: WriteOptions::new().fsync(false), max_shard_size: None };
    save_checkpoint(&path, &vars, Some(&opt), &state, &opts)?;
    let clean = std::fs::read(&path)?;
    let original = Reader::from_bytes(&clean, "original")?;
    let data_start = original.header().data_start();
    let owners: Vec<(String, usize, usize)> = original
        .tensors()
        .map(|t| (t.name().to_string(), data_start + t.info().data_offsets.0, data_start + t.info().data_offsets.1))
        .collect();
    let mut rng = Rng::new(seed);
    let mut r = CorruptionReport::default();
    for k in 0..trials {
        let at = rng.below(clean.len() as u64) as usize;
        let mut bad = clean.clone();
        if k % 2 == 0 {
            bad[at] ^= 1 << rng.below(8);
        } else {
            let mut v = rng.below(256) as u8;
            if v == bad[at] {
                v ^= 0xff;
            }
            bad[at] = v;
        }
        let opened = Reader::from_bytes(&bad, "damaged");
        if at >= data_start {
            r.data_trials += 1;
            let owner = owners.iter().find(|(_, b, e)| (*b..*e).contains(&at)).map(|o| o.0.clone());
            let named = opened.ok().and_then(|rd| rd.verify().ok()).is_some_and(|rep| {
                rep.failures.len() == 1
                    && matches!(&rep.failures[0], IntegrityFailure::Tensor { name, .. } if Some(name) == owner.as_ref())
            });
            if named {
                r.data_named += 1;
            } else {
                r.silent_wrong += 1;
            }
            continue;
        }
        r.header_trials += 1;
        match opened {
            Err(_) => r.header_structural += 1,
            Ok(rd) => match rd.verify() {
                Err(_) => r.header_structural += 1,
                Ok(rep) if !rep.is_ok() => r.header_checksum += 1,
                Ok(rep) => {
                    // Verified: acceptable only if nothing that matters changed.
                    let tensors_same = rd.header().tensors() == original.header().tensors()
                        && rd.data_section() == original.data_section();
                    if tensors_same && rep.has_checksums && rd.metadata() == original.metadata() {
                        r.header_benign += 1
                    } else if tensors_same && !rep.has_checksums {
                        r.header_record_lost += 1
                    } else {
                        r.silent_wrong += 1;
                        let ctx = &clean[at.saturating_sub(24)..(at + 24).min(data_start)];
                        r.silent_cases.push(format!(
                            "byte {at}: {:#04x} -> {:#04x} in `{}`",
                            clean[at],
                            bad[at],
                            String::from_utf8_lossy(ctx)
                        ));
                    }
                }
            },
        }
    }
    Ok(r)
}
