//! What a candle user reaches for: optimizers built the candle way are refused by checkpoints
//! (their parameters are named by a position that changes from process to process), state is
//! checked by shape, hyper-parameters come back with the state, and the `candle_core`-style
//! helpers (`load`, `save`, `?` into `candle_core::Result`, a builder over a list of files).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::Optimizer;
use safeckpt_candle::optim::{AdamW, ParamsAdamW, ParamsSgd, Sgd, StatefulOptimizer};
use safeckpt_candle::{
    CandleError, CheckpointManager, CheckpointOptions, ManagerOptions, TrainState, load_checkpoint, save_checkpoint,
};
use safeckpt_reader::ShardedReader;
use safeckpt_writer::WriteOptions;

use crate::common::{bits, seeded_model, train_step};

fn opts() -> CheckpointOptions {
    CheckpointOptions { write: WriteOptions::new().fsync(false), max_shard_size: None }
}

#[test]
fn positionally_named_optimizers_are_refused_by_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, mlp, vars) = seeded_model(3);
    // candle's idiom: `Optimizer::new(varmap.all_vars(), params)`, in HashMap order.
    let mut adam = AdamW::new(vm.all_vars(), ParamsAdamW::adamw(1e-3)).unwrap();
    train_step(&mlp, &mut adam, 0);
    let mut sgd = Sgd::new(vm.all_vars(), ParamsSgd::new(0.1)).unwrap();
    let p = dir.path().join("c.safetensors");
    for (opt, hint) in [(&adam as &dyn StatefulOptimizer, "AdamW::from_varmap"), (&sgd, "Sgd::from_varmap")] {
        let e = save_checkpoint(&p, &vars, Some(opt), &TrainState::new(0, 1), &opts()).unwrap_err();
        assert!(matches!(e, CandleError::OptimizerState(_)), "{e}");
        assert!(e.to_string().contains("by position") && e.to_string().contains(hint), "{e}");
        assert!(!p.exists());
    }
    let mut m = CheckpointManager::open(dir.path().join("run"), ManagerOptions::default()).unwrap();
    assert!(m.save(&vars, Some(&adam), &TrainState::new(0, 1)).is_err());
    assert!(m.save_async(&vars, Some(&adam), &TrainState::new(0, 1)).is_err());
    assert!(m.latest().is_none());
    // Resuming into one is refused too, with nothing modified.
    let named = AdamW::from_varmap(&vm, ParamsAdamW::adamw(1e-3)).unwrap();
    save_checkpoint(&p, &vars, Some(&named), &TrainState::new(0, 1), &opts()).unwrap();
    let set = ShardedReader::open(&p).unwrap();
    let e = load_checkpoint(&set, &vars, Some(&mut sgd as &mut dyn StatefulOptimizer), false).unwrap_err();
    assert!(e.to_string().contains("SGD") || e.to_string().contains("by position"), "{e}");
    let before = bits(&vars);
    let e = load_checkpoint(&set, &vars, Some(&mut adam as &mut dyn StatefulOptimizer), true).unwrap_err();
    assert!(e.to_string().contains("by position"), "{e}");
    assert_eq!(bits(&vars), before);
}

#[test]
fn state_is_checked_by_shape_and_hyper_parameters_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.safetensors");
    let (_, mlp, vars) = seeded_model(5);
    let saved = ParamsAdamW { weight_decay: 0.02, beta1: 0.8, ..ParamsAdamW::adamw(3e-3) };
    let mut opt = AdamW::new_named(vars.clone(), saved).unwrap();
    train_step(&mlp, &mut opt, 0);
    save_checkpoint(&p, &vars, Some(&opt), &TrainState::new(0, 1), &opts()).unwrap();
    let set = ShardedReader::open(&p).unwrap();

    // A fresh optimizer with other hyper-parameters takes the saved ones, as PyTorch's
    // load_state_dict does.
    let (_, _, fresh) = seeded_model(6);
    let mut other = AdamW::new_named(fresh.clone(), ParamsAdamW::adamw(0.5)).unwrap();
    load_checkpoint(&set, &fresh, Some(&mut other), true).unwrap();
    assert_eq!(*other.params(), saved);
    assert_eq!(other.learning_rate(), 3e-3);
    other.set_learning_rate(1e-4);
    assert_eq!(other.params().lr, 1e-4);

    // Moments of a [64, 20] weight do not fit a [20, 64] one, though the counts match.
    let (_, _, model) = seeded_model(7);
    let fc1 = model.iter().find(|(n, _)| n == "fc1.weight").unwrap().1.clone();
    let transposed = candle_core::Var::from_tensor(&fc1.as_tensor().t().unwrap().contiguous().unwrap()).unwrap();
    let mut wrong = AdamW::new_named(vec![("fc1.weight".to_string(), transposed)], ParamsAdamW::adamw(0.5)).unwrap();
    let get = |name: &str| {
        set.get(&format!("optimizer.{name}")).map(|v| safeckpt_candle::view_to_tensor(&v, &Device::Cpu, None).unwrap())
    };
    let e = wrong.load_state(&get).unwrap_err().to_string();
    assert!(e.contains("shape [64, 20]") && e.contains("[20, 64]"), "{e}");

    // Strict: an optimizer parameter with no saved state (names that do not match) is an error,
    // and a refused state leaves the hyper-parameters as they were.
    let mut renamed = vars.clone();
    renamed[0].0 = "encoder.fc1.weight".into();
    let (_, _, target) = seeded_model(8);
    let mut mismatched = AdamW::new_named(renamed, ParamsAdamW::adamw(0.5)).unwrap();
    let e = load_checkpoint(&set, &target, Some(&mut mismatched), true).unwrap_err().to_string();
    assert!(e.contains("no saved optimizer state for 1 of 6 parameters") && e.contains("encoder.fc1.weight"), "{e}");
    assert_eq!(mismatched.learning_rate(), 0.5);
}

/// `?` from safeckpt into code that returns `candle_core::Result`, the message intact.
fn load_into_candle_code(path: &std::path::Path) -> candle_core::Result<HashMap<String, Tensor>> {
    let map = safeckpt_candle::load(path, &Device::Cpu)?;
    Ok(map)
}

#[test]
fn load_and_save_as_candle_core_safetensors_does() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let mut map = HashMap::new();
    map.insert("w".to_string(), Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((3, 4)).unwrap());
    map.insert("i".to_string(), Tensor::new(&[7i64, -2], &Device::Cpu).unwrap());
    map.insert("h".to_string(), Tensor::ones(5, DType::BF16, &Device::Cpu).unwrap());
    safeckpt_candle::save(&map, &p).unwrap();
    // candle reads what `save` wrote, and `load` reads what candle wrote.
    let theirs = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    let candle_file = dir.path().join("candle.safetensors");
    candle_core::safetensors::save(&map, &candle_file).unwrap();
    for loaded in
        [safeckpt_candle::load(&p, &Device::Cpu).unwrap(), load_into_candle_code(&candle_file).unwrap(), theirs]
    {
        assert_eq!(loaded.len(), 3);
        for (name, t) in &map {
            let got = &loaded[name];
            assert_eq!((got.dtype(), got.dims()), (t.dtype(), t.dims()), "{name}");
            let diff = (got.to_dtype(DType::F64).unwrap() - t.to_dtype(DType::F64).unwrap()).unwrap();
            assert_eq!(diff.abs().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap(), 0.0, "{name}");
        }
    }
    let e = load_into_candle_code(&dir.path().join("absent.safetensors")).unwrap_err();
    assert!(e.to_string().contains("absent.safetensors"), "{e}");
}

#[test]
fn a_builder_over_the_list_of_files_hf_hub_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, _, vars) = seeded_model(4);
    let half = vars.len() / 2;
    let files =
        [dir.path().join("model-00001-of-00002.safetensors"), dir.path().join("model-00002-of-00002.safetensors")];
    let opts = WriteOptions::new().fsync(false);
    safeckpt_candle::save_vars(&files[0], &vars[..half], "", None, &opts).unwrap();
    safeckpt_candle::save_vars(&files[1], &vars[half..], "", None, &opts).unwrap();
    let vb = safeckpt_candle::var_builder_from_files(&files, DType::F32, &Device::Cpu).unwrap();
    for (name, var) in vm.data().lock().unwrap().iter() {
        let got = vb.get(var.dims(), name).unwrap();
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            var.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    // The same file twice: every tensor in two files, named.
    let e = safeckpt_candle::var_builder_from_files(&[&files[0], &files[0]], DType::F32, &Device::Cpu).err().unwrap();
    assert!(e.to_string().contains("is in both"), "{e}");
}
