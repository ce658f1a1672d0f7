//! The optimizers against PyTorch's own trajectories (`fixtures/optim`, made by torch 2.15 with
//! `foreach=False`): six steps from fixed parameters and gradients, every parameter and state
//! tensor compared after every step.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use safeckpt_candle::optim::{AdamW, ParamsAdamW, ParamsSgd, Sgd, StateData, StatefulOptimizer};
use safeckpt_reader::Reader;

use crate::common::{fixtures, ulps};

fn tensor(r: &Reader, name: &str) -> Tensor {
    let v = r.tensor(name).unwrap();
    Tensor::from_vec(v.to_vec::<f32>().unwrap(), v.shape(), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Runs a fixture; returns the largest difference in ULPs over every value compared.
fn run(file: &str, make: impl Fn(Vec<(String, Var)>, &serde_json::Value) -> Box<dyn Stepper>) -> u32 {
    let r = Reader::open(fixtures().join("optim").join(file)).unwrap();
    let meta = r.metadata().unwrap();
    let hp: serde_json::Value = serde_json::from_str(&meta["hyperparameters"]).unwrap();
    let steps: usize = meta["steps"].parse().unwrap();
    let vars: Vec<(String, Var)> = ["w", "b"]
        .iter()
        .map(|n| (n.to_string(), Var::from_tensor(&tensor(&r, &format!("init.{n}"))).unwrap()))
        .collect();
    let mut opt = make(vars.clone(), &hp);
    let mut worst = 0;
    for t in 1..=steps {
        let mut grads = GradStore::default();
        for (n, v) in &vars {
            grads.insert(v.as_tensor(), tensor(&r, &format!("grads.{n}.{t}")));
        }
        opt.step(&grads);
        for (n, v) in &vars {
            let want = values(&tensor(&r, &format!("params.{n}.{t}")));
            for (a, b) in values(v.as_tensor()).iter().zip(&want) {
                worst = worst.max(ulps(*a, *b));
            }
        }
        for e in opt.state() {
            // `state.<param>.<key>` here; `state.<param>.<key>.<t>` in the fixture.
            let want = values(&tensor(&r, &format!("{}.{t}", e.name)));
            let got: Vec<f32> = match &e.data {
                StateData::F32(v) => v.to_vec(),
                StateData::F64(v) => v.iter().map(|&x| x as f32).collect(),
            };
            assert_eq!(got.len(), want.len(), "{file}: {}", e.name);
            for (a, b) in got.iter().zip(&want) {
                worst = worst.max(ulps(*a, *b));
            }
        }
    }
    worst
}

trait Stepper {
    fn step(&mut self, g: &GradStore);
    fn state(&self) -> Vec<safeckpt_candle::optim::StateEntry>;
}

impl Stepper for AdamW {
    fn step(&mut self, g: &GradStore) {
        self.step_grads(g).unwrap()
    }
    fn state(&self) -> Vec<safeckpt_candle::optim::StateEntry> {
        self.state_snapshot()
    }
}

impl Stepper for Sgd {
    fn step(&mut self, g: &GradStore) {
        self.step_grads(g).unwrap()
    }
    fn state(&self) -> Vec<safeckpt_candle::optim::StateEntry> {
        self.state_snapshot()
    }
}

fn adam(vars: Vec<(String, Var)>, hp: &serde_json::Value, decoupled: bool) -> Box<dyn Stepper> {
    let mut p = if decoupled { ParamsAdamW::adamw(1e-3) } else { ParamsAdamW::adam(1e-3) };
    if let Some(x) = hp["lr"].as_f64() {
        p.lr = x;
    }
    if let Some(b) = hp["betas"].as_array() {
        p.beta1 = b[0].as_f64().unwrap();
        p.beta2 = b[1].as_f64().unwrap();
    }
    if let Some(x) = hp["eps"].as_f64() {
        p.eps = x;
    }
    if let Some(x) = hp["weight_decay"].as_f64() {
        p.weight_decay = x;
    }
    if let Some(x) = hp["amsgrad"].as_bool() {
        p.amsgrad = x;
    }
    Box::new(AdamW::new_named(vars, p).unwrap())
}

fn sgd(vars: Vec<(String, Var)>, hp: &serde_json::Value) -> Box<dyn Stepper> {
    let mut p = ParamsSgd::new(hp["lr"].as_f64().unwrap());
    p.momentum = hp["momentum"].as_f64().unwrap_or(0.0);
    p.dampening = hp["dampening"].as_f64().unwrap_or(0.0);
    p.weight_decay = hp["weight_decay"].as_f64().unwrap_or(0.0);
    p.nesterov = hp["nesterov"].as_bool().unwrap_or(false);
    Box::new(Sgd::new_named(vars, p).unwrap())
}

#[test]
fn match_pytorch_trajectories() {
    let cases: Vec<(&str, u32)> = vec![
        ("adam.safetensors", run("adam.safetensors", |v, h| adam(v, h, false))),
        ("adam_wd.safetensors", run("adam_wd.safetensors", |v, h| adam(v, h, false))),
        ("adamw.safetensors", run("adamw.safetensors", |v, h| adam(v, h, true))),
        ("adamw_amsgrad.safetensors", run("adamw_amsgrad.safetensors", |v, h| adam(v, h, true))),
        ("sgd.safetensors", run("sgd.safetensors", sgd)),
        ("sgd_momentum.safetensors", run("sgd_momentum.safetensors", sgd)),
        ("sgd_nesterov.safetensors", run("sgd_nesterov.safetensors", sgd)),
    ];
    for (f, u) in &cases {
        println!("{f}: max {u} ulp");
    }
    for (f, u) in cases {
        assert_eq!(u, 0, "{f}: {u} ulp from PyTorch (the updates are meant to be bit-identical)");
    }
}

/// An optimizer given a fence waits on it before it modifies any variable: while the fence is
/// held (as an asynchronous save holds it until its bytes are written) a step does not start,
/// and it runs as soon as the fence opens.
#[test]
fn an_optimizer_step_waits_for_the_save_fence() {
    fn check<O: StatefulOptimizer + Send>(
        name: &str,
        make: impl Fn(Vec<(String, Var)>) -> O,
        step: impl Fn(&mut O, &GradStore) + Sync,
    ) {
        let w = Var::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], 4, &Device::Cpu).unwrap();
        let mut opt = make(vec![("w".to_string(), w.clone())]);
        let mut grads = GradStore::default();
        grads.insert(w.as_tensor(), Tensor::new(&[1.0f32, 1.0, 1.0, 1.0], &Device::Cpu).unwrap());
        let fence = safeckpt_candle::Fence::default();
        opt.set_fence(Some(fence.clone()));
        let before = values(w.as_tensor());
        let hold = fence.hold();
        assert!(fence.is_closed());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                step(&mut opt, &grads);
                tx.send(()).unwrap();
            });
            // Held: the step has not run (nor touched the variable) half a second later.
            assert!(
                rx.recv_timeout(std::time::Duration::from_millis(500)).is_err(),
                "{name}: the step ran while the fence was held"
            );
            assert_eq!(values(w.as_tensor()), before, "{name}: a variable changed under a held fence");
            drop(hold);
            assert!(!fence.is_closed());
            rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the step never ran after the fence opened");
        });
        assert_ne!(values(w.as_tensor()), before, "{name}: the step did not update the variable");
    }
    check("AdamW", |v| AdamW::new_named(v, ParamsAdamW::adamw(0.1)).unwrap(), |o, g| o.step_grads(g).unwrap());
    check("SGD", |v| Sgd::new_named(v, ParamsSgd::new(0.1)).unwrap(), |o, g| o.step_grads(g).unwrap());
}
