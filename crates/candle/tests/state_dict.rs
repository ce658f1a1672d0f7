//! VarMap save/load: round trips, strict all-or-nothing loads, casts, the VarBuilder backend.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, VarMap};
use safeckpt_candle::{
    CandleError, CandleSource, LoadOptions, load_varmap, save_varmap, var_builder, varmap_vars, view_to_tensor,
};
use safeckpt_format::{Dtype, TensorSource};
use safeckpt_reader::Reader;
use safeckpt_writer::WriteOptions;

use crate::common::{Mlp, bits, seeded_model};

fn opts() -> WriteOptions {
    WriteOptions::new().fsync(false)
}

#[test]
fn varmap_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let (vm, _, vars) = seeded_model(1);
    save_varmap(&p, &vm, None, &opts()).unwrap();
    assert!(Reader::open(&p).unwrap().verify().unwrap().is_ok());
    let (vm2, _, vars2) = seeded_model(2);
    assert_ne!(bits(&vars), bits(&vars2));
    let report = load_varmap(&p, &vm2, &LoadOptions::default()).unwrap();
    assert!(report.is_clean());
    assert_eq!(report.loaded.len(), 6);
    assert_eq!(bits(&vars), bits(&vars2));
}

#[test]
fn cpu_tensors_are_written_without_a_copy() {
    let t = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((3, 4)).unwrap();
    let src = CandleSource::new("t", &t).unwrap();
    assert_eq!(src.dtype(), Dtype::F32);
    let data = src.data();
    assert!(matches!(data, std::borrow::Cow::Borrowed(_)));
    assert_eq!(bytemuck::cast_slice::<u8, f32>(&data), t.flatten_all().unwrap().to_vec1::<f32>().unwrap().as_slice());
    // A transposed view is copied into row-major order.
    let tt = t.t().unwrap();
    let src = CandleSource::new("tt", &tt).unwrap();
    assert_eq!(
        bytemuck::cast_slice::<u8, f32>(&src.data()),
        tt.contiguous().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

#[test]
fn strict_loading_reports_and_modifies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("partial.safetensors");
    let (_, _, vars) = seeded_model(1);
    // The file lacks fc3.bias, has an extra tensor, and fc2.weight has the wrong shape.
    let mut file_vars: Vec<_> = vars.iter().filter(|(n, _)| n != "fc3.bias" && n != "fc2.weight").cloned().collect();
    file_vars.push(("extra.weight".into(), candle_core::Var::zeros((2, 2), DType::F32, &Device::Cpu).unwrap()));
    file_vars.push(("fc2.weight".into(), candle_core::Var::zeros((64, 32), DType::F32, &Device::Cpu).unwrap()));
    safeckpt_candle::save_vars(&p, &file_vars, "", None, &opts()).unwrap();

    let (vm2, _, vars2) = seeded_model(2);
    let before = bits(&vars2);
    let err = load_varmap(&p, &vm2, &LoadOptions::default()).unwrap_err();
    let CandleError::Load(report) = &err else { panic!("{err}") };
    assert_eq!(report.missing, ["fc3.bias"]);
    assert_eq!(report.unexpected, ["extra.weight"]);
    assert_eq!(report.mismatched.len(), 1);
    assert_eq!(report.mismatched[0].name, "fc2.weight");
    assert_eq!(report.mismatched[0].found, [64, 32]);
    let msg = err.to_string();
    assert!(msg.contains("missing key(s): \"fc3.bias\"") && msg.contains("size mismatch for fc2.weight"), "{msg}");
    assert_eq!(bits(&vars2), before, "a failed strict load must not modify anything");

    // Non-strict: what fits is loaded, the rest reported.
    let report = load_varmap(&p, &vm2, &LoadOptions { strict: false, ..Default::default() }).unwrap();
    assert_eq!(report.loaded.len(), 4);
    let after = bits(&vars2);
    let by = |v: &[(String, Vec<u32>)], n: &str| v.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(by(&after, "fc1.weight"), by(&bits(&vars), "fc1.weight"));
    assert_eq!(by(&after, "fc3.bias"), by(&before, "fc3.bias"));
}

#[test]
fn loads_cast_to_the_variable_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f64.safetensors");
    let (_, _, vars) = seeded_model(3);
    let as_f64: Vec<_> = vars
        .iter()
        .map(|(n, v)| (n.clone(), candle_core::Var::from_tensor(&v.to_dtype(DType::F64).unwrap()).unwrap()))
        .collect();
    safeckpt_candle::save_vars(&p, &as_f64, "", None, &opts()).unwrap();
    let (vm2, _, vars2) = seeded_model(4);
    let report = load_varmap(&p, &vm2, &LoadOptions::default()).unwrap();
    assert_eq!(report.cast.len(), 6);
    assert_eq!(bits(&vars), bits(&vars2));
}

#[test]
fn views_load_with_parallel_casts_and_exact_widening() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mixed.safetensors");
    let f: Vec<u8> = (0..1000).flat_map(|i| (i as f32 * 0.37 - 50.0).to_le_bytes()).collect();
    let u16s: Vec<u8> = [1u16, 65535, 300].iter().flat_map(|x| x.to_le_bytes()).collect();
    let i8s: Vec<u8> = [-128i8, 5, 127].iter().map(|&x| x as u8).collect();
    let tensors = [
        ("f", safeckpt_format::RawTensor::borrowed(Dtype::F32, [1000], &f)),
        ("u", safeckpt_format::RawTensor::borrowed(Dtype::U16, [3], &u16s)),
        ("i", safeckpt_format::RawTensor::borrowed(Dtype::I8, [3], &i8s)),
        ("c", safeckpt_format::RawTensor::borrowed(Dtype::C64, [1], &[0u8; 8])),
    ];
    safeckpt_writer::write_file(&p, &tensors, None, &opts()).unwrap();
    let r = Reader::open(&p).unwrap();
    let fv = r.tensor("f").unwrap();
    let f32t = view_to_tensor(&fv, &Device::Cpu, None).unwrap();
    for dt in [DType::BF16, DType::F16, DType::F64] {
        let ours = view_to_tensor(&fv, &Device::Cpu, Some(dt)).unwrap();
        let candle = f32t.to_dtype(dt).unwrap();
        assert_eq!(
            ours.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap(),
            candle.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap(),
            "{dt:?}"
        );
    }
    assert_eq!(
        view_to_tensor(&r.tensor("u").unwrap(), &Device::Cpu, None).unwrap().to_vec1::<u32>().unwrap(),
        [1, 65535, 300]
    );
    assert_eq!(
        view_to_tensor(&r.tensor("i").unwrap(), &Device::Cpu, None).unwrap().to_vec1::<i16>().unwrap(),
        [-128, 5, 127]
    );
    let err = view_to_tensor(&r.tensor("c").unwrap(), &Device::Cpu, None).unwrap_err();
    assert!(err.to_string().contains("no dtype that holds C64"), "{err}");
}

#[test]
fn var_builder_serves_models_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mlp.safetensors");
    let (vm, mlp, _) = seeded_model(5);
    save_varmap(&p, &vm, None, &opts()).unwrap();
    let vb = var_builder(&p, DType::F32, &Device::Cpu).unwrap();
    let loaded = candle_nn::linear(20, 64, vb.pp("fc1")).unwrap();
    let x = crate::common::batch(1, 4).0;
    let a = mlp.fc1.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = loaded.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);
    // A wrong shape is an error naming the tensor.
    let vb = var_builder(&p, DType::F32, &Device::Cpu).unwrap();
    let err = match candle_nn::linear(20, 65, vb.pp("fc1")) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("shape mismatch accepted"),
    };
    assert!(err.contains("fc1.weight"), "{err}");
    let _unused: Option<Mlp> = None;
    let _ = varmap_vars(&VarMap::new());
}

#[test]
fn a_new_varmap_from_a_file_builds_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let (vm, mlp, _) = seeded_model(6);
    save_varmap(&p, &vm, None, &opts()).unwrap();
    let loaded = safeckpt_candle::varmap_from_file(&p, "", None, &Device::Cpu).unwrap();
    assert_eq!(varmap_vars(&loaded).len(), 6);
    let vb = candle_nn::VarBuilder::from_varmap(&loaded, DType::F32, &Device::Cpu);
    let fc1 = candle_nn::linear(20, 64, vb.pp("fc1")).unwrap();
    let x = crate::common::batch(2, 3).0;
    assert_eq!(
        fc1.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        mlp.fc1.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // The variables are real variables (trainable).
    assert!(varmap_vars(&loaded).iter().all(|(_, v)| v.as_tensor().is_variable()));
}
