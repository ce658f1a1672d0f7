//! `TrainState`: everything besides tensors that a training loop needs to resume exactly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The metadata key holding the [`TrainState`] as JSON.
pub const TRAIN_STATE_KEY: &str = "safeckpt.train_state";
/// The metadata key describing the checkpoint's layout (schema version, prefixes, optimizer).
pub const CHECKPOINT_KEY: &str = "safeckpt.checkpoint";
/// Version of the checkpoint schema written here.
pub const CHECKPOINT_VERSION: u64 = 1;

/// Progress and context of a training run, stored in a checkpoint's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: u64,
    /// Optimizer steps completed.
    pub step: u64,
    /// Named metrics (validation loss, accuracy, …). Non-finite values are kept as strings.
    #[serde(with = "finite_map")]
    pub metrics: BTreeMap<String, f64>,
    /// Whatever the loop needs to replay the same batches: RNG seeds or states, data-loader
    /// position, shuffling seed.
    pub rng: serde_json::Value,
    /// Hyper-parameters of the run.
    pub hyper_parameters: serde_json::Value,
    /// Free-form user data (e.g. preprocessing parameters: a model without its preprocessing is
    /// not usable in production).
    pub user: serde_json::Value,
    /// Library versions that wrote the checkpoint (`safeckpt`, `candle`, …).
    pub versions: BTreeMap<String, String>,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: f64,
}

impl TrainState {
    /// A state at `epoch` and `step`, with the library versions and the current time filled in.
    pub fn new(epoch: u64, step: u64) -> Self {
        let mut versions = BTreeMap::new();
        versions.insert("safeckpt".into(), env!("CARGO_PKG_VERSION").into());
        versions.insert("candle".into(), "0.11".into());
        let created_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        TrainState { epoch, step, versions, created_unix, ..Default::default() }
    }

    /// Adds or replaces a metric.
    pub fn with_metric(mut self, name: impl Into<String>, value: f64) -> Self {
        self.metrics.insert(name.into(), value);
        self
    }

    /// The state as metadata JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the metadata JSON.
    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }
}

mod finite_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Num {
        F(f64),
        S(String),
    }

    pub(super) fn serialize<S: Serializer>(m: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        let out: BTreeMap<&String, Num> = m
            .iter()
            .map(|(k, &v)| {
                let n = if v.is_finite() {
                    Num::F(v)
                } else if v.is_nan() {
                    Num::S("NaN".into())
                } else if v > 0.0 {
                    Num::S("Infinity".into())
                } else {
                    Num::S("-Infinity".into())
                };
                (k, n)
            })
            .collect();
        out.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let m: BTreeMap<String, Num> = BTreeMap::deserialize(d)?;
        m.into_iter()
            .map(|(k, v)| {
                let f = match v {
                    Num::F(f) => f,
                    Num::S(s) => match s.as_str() {
                        "NaN" => f64::NAN,
                        "Infinity" => f64::INFINITY,
                        "-Infinity" => f64::NEG_INFINITY,
                        other => {
                            return Err(serde::de::Error::custom(format!("metric `{k}` is not a number: {other}")));
                        }
                    },
                };
                Ok((k, f))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_non_finite_metrics() {
        let s = TrainState::new(3, 120)
            .with_metric("val_loss", 0.25)
            .with_metric("best", f64::INFINITY)
            .with_metric("x", f64::NAN);
        let back = TrainState::from_json(&s.to_json()).unwrap();
        assert_eq!(back.epoch, 3);
        assert_eq!(back.metrics["val_loss"], 0.25);
        assert!(back.metrics["best"].is_infinite());
        assert!(back.metrics["x"].is_nan());
        assert_eq!(back.versions["safeckpt"], env!("CARGO_PKG_VERSION"));
    }
}
