//! candle's own loaders read what safeckpt writes, checksummed headers (the `safeckpt.integrity`
//! metadata entry) included: `candle_core::safetensors::load`, `VarMap::load` and
//! `VarBuilder::from_buffered_safetensors`, on a saved `VarMap` and on a whole training checkpoint
//! written by the manager.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use safeckpt_candle::optim::{AdamW, ParamsAdamW};
use safeckpt_candle::{CheckpointManager, ManagerOptions, TrainState, save_varmap, varmap_vars};
use safeckpt_writer::WriteOptions;

use crate::common::{Mlp, batch};

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// A trained MLP (a few AdamW steps, so no value is an initial one).
fn trained() -> (VarMap, AdamW) {
    let vm = VarMap::new();
    let mlp = Mlp::new(&vm);
    let mut opt = AdamW::new_named(varmap_vars(&vm), ParamsAdamW::adamw(1e-2)).unwrap();
    for step in 0..3 {
        let (x, y) = batch(step, 32);
        let loss = (mlp.forward(&x) - y).unwrap().sqr().unwrap().mean_all().unwrap();
        opt.backward_step(&loss).unwrap();
    }
    (vm, opt)
}

#[test]
fn candle_loads_our_files_with_checksummed_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, _) = trained();
    let path = dir.path().join("model.safetensors");
    save_varmap(&path, &vm, None, &WriteOptions::new().fsync(false)).unwrap();
    let r = safeckpt_reader::Reader::open(&path).unwrap();
    assert!(r.metadata().unwrap().contains_key("safeckpt.integrity"), "the file carries checksums");
    assert!(r.verify().unwrap().is_ok());

    let ours = vm.data().lock().unwrap().clone();
    // candle_core::safetensors::load
    let loaded = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.len(), ours.len());
    for (name, var) in &ours {
        assert_eq!(bits(&loaded[name]), bits(var.as_tensor()), "{name}");
    }
    // VarMap::load into a fresh model's variables.
    let mut fresh = VarMap::new();
    let _ = Mlp::new(&fresh);
    fresh.load(&path).unwrap();
    for (name, var) in fresh.data().lock().unwrap().iter() {
        assert_eq!(bits(var.as_tensor()), bits(ours[name].as_tensor()), "{name}");
    }
    // VarBuilder over the file's bytes, building the model by name.
    let vb = VarBuilder::from_buffered_safetensors(std::fs::read(&path).unwrap(), DType::F32, &Device::Cpu).unwrap();
    let w = vb.pp("fc2").get((32, 64), "weight").unwrap();
    assert_eq!(bits(&w), bits(ours["fc2.weight"].as_tensor()));
}

#[test]
fn candle_loads_a_training_checkpoint_written_by_the_manager() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, opt) = trained();
    let vars = varmap_vars(&vm);
    let mut m = CheckpointManager::open(dir.path(), ManagerOptions::default()).unwrap();
    let state = TrainState::new(1, 3).with_metric("loss", 0.5);
    let path = m.save(&vars, Some(&opt), &state).unwrap();
    let loaded = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    // The model under `model.`, AdamW's moments under `optimizer.`: all plain tensors to candle.
    for (name, var) in &vars {
        assert_eq!(bits(&loaded[&format!("model.{name}")]), bits(var.as_tensor()), "{name}");
    }
    assert!(loaded.keys().any(|k| k.starts_with("optimizer.") && k.ends_with("exp_avg_sq")), "{:?}", loaded.keys());
    // And a model built from the checkpoint through candle's VarBuilder, prefix and all.
    let vb = VarBuilder::from_buffered_safetensors(std::fs::read(&path).unwrap(), DType::F32, &Device::Cpu).unwrap();
    let fc1 = candle_nn::linear(20, 64, vb.pp("model").pp("fc1")).unwrap();
    let (x, _) = batch(9, 4);
    let want = candle_nn::Module::forward(&Mlp::new(&vm).fc1, &x).unwrap();
    assert_eq!(bits(&candle_nn::Module::forward(&fc1, &x).unwrap()), bits(&want));
}
