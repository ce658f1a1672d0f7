//! End-to-end tests of the `safeckpt` binary.

use std::path::Path;
use std::process::Output;

mod common;
use common::{bin, fixtures, run, text};

/// Compares against a golden file; `SAFECKPT_BLESS=1` rewrites it.
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("SAFECKPT_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let want =
        std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing golden {name}; run with SAFECKPT_BLESS=1"));
    assert_eq!(actual, want, "golden {name} differs; rerun with SAFECKPT_BLESS=1 if intended");
}

#[test]
fn inspect_matches_golden_output() {
    let model = fixtures().join("models/tiny-gpt.safetensors");
    let o = bin().current_dir(fixtures().join("models")).args(["inspect", "tiny-gpt.safetensors"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    golden("inspect_tiny_gpt.txt", &String::from_utf8(o.stdout).unwrap());
    let o = run(&["inspect", "--json", model.to_str().unwrap()]);
    assert!(o.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["tensor_count"], 52);
    assert_eq!(doc["parameters"], 241024);
    assert_eq!(doc["metadata"]["format"], "pt");
    assert_eq!(doc["tensors"][0]["name"], "h.0.attn.c_attn.bias");
}

#[test]
fn every_malformed_file_exits_2_naming_the_file() {
    for e in std::fs::read_dir(fixtures().join("malformed")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "safetensors") {
            continue;
        }
        for cmd in ["verify", "inspect"] {
            let o = run(&[cmd, p.to_str().unwrap()]);
            assert_eq!(o.status.code(), Some(2), "{cmd} {}: {}", p.display(), text(&o));
            let msg = text(&o);
            assert!(msg.contains(p.file_name().unwrap().to_str().unwrap()), "{msg}");
            assert!(!msg.contains("panicked"), "{msg}");
        }
    }
}

#[test]
fn verify_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("models/tiny-gpt.safetensors");
    let out = dir.path().join("sharded");
    let o =
        run(&["shard", src.to_str().unwrap(), "--max-shard-size", "300KB", "-o", out.to_str().unwrap(), "--no-fsync"]);
    assert!(o.status.success(), "{}", text(&o));
    let index = out.join("model.safetensors.index.json");
    let o = run(&["verify", index.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).starts_with("OK"), "{}", text(&o));
    // Without checksums, verify still validates structure and says so.
    let o = run(&["verify", src.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o).contains("no checksums recorded"), "{}", text(&o));
    let o = run(&["verify", "--require-checksums", src.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no checksums recorded"), "{}", text(&o));
    let o = run(&["verify", "--require-checksums", index.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // One flipped bit: exit 1, naming the tensor.
    let shard = out.join("model-00002-of-00004.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let o = run(&["verify", index.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("checksum mismatch") && text(&o).contains("tensor `h."), "{}", text(&o));
    let o = run(&["verify", "--json", index.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["ok"], false);
}

#[test]
fn shard_then_merge_reproduces_a_checksummed_file_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let src = fixtures().join("models/tiny-gpt.safetensors");
    // A checksummed single file first (merge of a one-file "set").
    assert!(run(&["merge", src.to_str().unwrap(), "-o", &d("one.safetensors"), "-q"]).status.success());
    assert!(run(&["shard", &d("one.safetensors"), "--max-shard-size", "200KiB", "-o", &d("s"), "-q"]).status.success());
    assert!(run(&["merge", &d("s/model.safetensors.index.json"), "-o", &d("back.safetensors"), "-q"]).status.success());
    assert_eq!(std::fs::read(d("one.safetensors")).unwrap(), std::fs::read(d("back.safetensors")).unwrap());
    // Refuses to overwrite without --force; exit 2, file untouched.
    let o = run(&["merge", &d("s/model.safetensors.index.json"), "-o", &d("back.safetensors")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("already exists"));
    assert!(
        run(&["merge", &d("s/model.safetensors.index.json"), "-o", &d("back.safetensors"), "--force", "-q"])
            .status
            .success()
    );
    // The reference crate reads what we wrote.
    let bytes = std::fs::read(d("back.safetensors")).unwrap();
    assert_eq!(safetensors::SafeTensors::deserialize(&bytes).unwrap().len(), 52);
}

#[test]
fn bad_arguments_exit_2() {
    let o = run(&["shard", "x.safetensors", "--max-shard-size", "lots", "-o", "/tmp/never"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    let o = run(&["inspect", "/nonexistent.safetensors"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("/nonexistent.safetensors"));
}

#[test]
fn help_lists_every_command() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    for c in ["inspect", "verify", "shard", "merge", "demo"] {
        assert!(text(&o).contains(c), "{c}");
    }
}

#[test]
fn demo_tours_the_engine_after_training() {
    let o = run(&["demo", "--epochs", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    for step in [
        "epoch  1/2",
        "best checkpoint",
        "memory-mapped for inference",
        "1. write",
        "2. shard",
        "3. verify",
        "4. inspect",
        "5. damage",
        "6. merge",
        "7. read",
        "8. convert",
        "refused",
    ] {
        assert!(out.contains(step), "missing {step}:\n{out}");
    }
}

fn digest(o: &Output) -> String {
    let out = text(o);
    out.lines()
        .find_map(|l| l.strip_prefix("final weights and optimizer state digest: "))
        .unwrap_or_else(|| panic!("no digest in:\n{out}"))
        .to_string()
}

#[test]
fn interrupted_runs_resume_bit_exactly_and_diff_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let straight = run(&["demo", "--dir", &d("a"), "--epochs", "5", "--seed", "7"]);
    assert!(straight.status.success(), "{}", text(&straight));
    let first = run(&["demo", "--dir", &d("b"), "--epochs", "5", "--seed", "7", "--stop-after-epoch", "2"]);
    assert!(text(&first).contains("stopping after epoch 2"), "{}", text(&first));
    let resumed = run(&["demo", "--dir", &d("b"), "--epochs", "5", "--seed", "7"]);
    assert!(text(&resumed).contains("resumed from"), "{}", text(&resumed));
    assert_eq!(digest(&straight), digest(&resumed));
    // The final checkpoints are the same, tensor by tensor; another seed's are not.
    let last = |run: &str| {
        let mut v: Vec<String> = std::fs::read_dir(d(run))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ckpt-"))
            .collect();
        v.sort();
        format!("{}/{}", d(run), v.last().unwrap())
    };
    let o = run(&["diff", &last("a"), &last("b")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(run(&["demo", "--dir", &d("c"), "--epochs", "1", "--seed", "8", "-q"]).status.success());
    let o = run(&["diff", &last("a"), &last("c")]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("values outside the tolerance"), "{}", text(&o));
}

/// Whether a run directory holds what a save interrupted by a kill leaves: a temporary file or
/// staging directory of the writer.
fn save_in_progress(run_dir: &Path) -> bool {
    std::fs::read_dir(run_dir)
        .map(|r| r.flatten().any(|e| e.file_name().to_string_lossy().contains(".safeckpt-tmp.")))
        .unwrap_or(false)
}

/// SIGKILL at random instants (during training) and right after an epoch's background save
/// starts, then the same command again: the run ends bit-identical to an uninterrupted one. The
/// kills must be seen to land inside saves: a temporary file of the interrupted save is left
/// (and removed by the next run), or the next run adopts a checkpoint whose ledger entry the kill
/// prevented.
#[test]
fn sigkill_at_any_moment_then_resume_is_bit_exact() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    let args = |run: &str| {
        vec!["demo".to_string(), "--dir".into(), d(run), "--epochs".into(), "6".into(), "--seed".into(), "3".into()]
    };
    let straight = bin().args(args("straight")).output().unwrap();
    assert!(straight.status.success(), "{}", text(&straight));
    let want = digest(&straight);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut during_saves, mut attempts) = (0, 0);
    while during_saves < 3 {
        attempts += 1;
        assert!(attempts <= 30, "only {during_saves} of {attempts} kills landed during a save");
        let run_dir = format!("killed{attempts}");
        // A kill at a random instant first (training or saving).
        let mut child = bin().args(args(&run_dir)).stdout(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20 + next() % 250));
        let _ = child.kill();
        let _ = child.wait();
        // Then one right after the run reports that an epoch's checkpoint is being saved.
        let mut child = bin().args(args(&run_dir)).stdout(std::process::Stdio::piped()).spawn().unwrap();
        let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut killed_in_save = false;
        for line in lines {
            if line.unwrap().contains("(checkpoint saving in the background)") {
                let _ = child.kill();
                let _ = child.wait();
                killed_in_save = save_in_progress(Path::new(&d(&run_dir)));
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let done = bin().args(args(&run_dir)).output().unwrap();
        assert!(done.status.success(), "{}", text(&done));
        if killed_in_save || text(&done).contains("adopted checkpoints committed before a crash") {
            during_saves += 1;
            assert!(!save_in_progress(Path::new(&d(&run_dir))), "the interrupted save's files were not removed");
        }
        assert_eq!(digest(&done), want, "attempt {attempts}: {}", text(&done));
    }
    eprintln!("{during_saves} of {attempts} runs were killed during a save, each resumed bit-exact");
}

#[test]
fn convert_pytorch_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ck.safetensors");
    let src = fixtures().join("pytorch/checkpoint_adam.pth");
    let o = run(&["convert", src.to_str().unwrap(), out.to_str().unwrap(), "--no-fsync"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("24 tensors"), "{}", text(&o));
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 24);
    // Refuses to overwrite without --force.
    let o = run(&["convert", src.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // Malicious and broken files: exit 2, a clear message, no output, no code run.
    for (name, needle) in [
        ("pytorch/evil_os_system.pth", "posix.system"),
        ("pytorch/whole_model.pth", "state_dict"),
        ("pytorch/extra/memo_bomb.pth", "memo bomb"),
        ("pytorch/extra/truncated.pth", "truncated"),
        ("pytorch/extra/evil_ext2.pth", "extension registry"),
    ] {
        let target = dir.path().join("refused.safetensors");
        let o = bin()
            .current_dir(dir.path())
            .args(["convert", fixtures().join(name).to_str().unwrap(), target.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o));
        assert!(text(&o).contains(needle), "{name}: {}", text(&o));
        assert!(!target.exists(), "{name}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "{name}: {left:?}");
    }
    // Inspect without converting.
    let o = run(&["inspect", src.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(
        text(&o).contains("optimizer_state_dict.state.0.exp_avg") && text(&o).contains("no code was run"),
        "{}",
        text(&o)
    );
    let o = run(&["inspect", "--json", fixtures().join("pytorch/legacy.pth").to_str().unwrap()]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["format"], "legacy torch file");
    assert_eq!(doc["tensor_count"], 6);
}

#[test]
fn hostile_pytorch_files_are_bounded_and_the_limit_can_be_raised() {
    let dir = tempfile::tempdir().unwrap();
    let attacks = fixtures().join("pytorch/attacks");
    // A 4-byte storage viewed as 2^34 floats through a zero stride: inspect describes it (64 GiB)
    // without reading it; convert refuses it by the default output limit, naming the option.
    let bomb = attacks.join("expand_2_34.pth");
    let o = run(&["inspect", "--json", bomb.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["tensors"][0]["bytes"], 1u64 << 36);
    let out = dir.path().join("bomb.safetensors");
    let o = run(&["convert", bomb.to_str().unwrap(), out.to_str().unwrap(), "-q"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--max-output-size") && text(&o).contains("expand_2_34.pth"), "{}", text(&o));
    assert!(!out.exists());
    // A deflated storage too large for the default limit converts once the limit is raised.
    let views = attacks.join("deflated_views.pth");
    let out = dir.path().join("views.safetensors");
    let o = run(&["convert", views.to_str().unwrap(), out.to_str().unwrap(), "-q", "--no-fsync"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(&[
        "convert",
        views.to_str().unwrap(),
        out.to_str().unwrap(),
        "-q",
        "--no-fsync",
        "--max-output-size",
        "1GB",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(safeckpt_reader::Reader::open(&out).unwrap().len(), 2_000);
    let o = run(&["convert", views.to_str().unwrap(), out.to_str().unwrap(), "--max-output-size", "lots"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--max-output-size"), "{}", text(&o));
}

#[test]
fn a_multi_rank_save_inspects_and_merges_whole() {
    use safeckpt_format::{Dtype, RawTensor};
    use safeckpt_writer::rank::{RankTensor, commit_ranks, save_rank};
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let opts = safeckpt_writer::WriteOptions::new().fsync(false);
    // A 4x3 u8 matrix whose rows are split between two ranks; rank 0 also holds a whole tensor.
    let global: Vec<u8> = (0..12).collect();
    for rank in 0..2 {
        let rows = global[rank * 6..rank * 6 + 6].to_vec();
        let mut tensors =
            vec![RankTensor::piece("w", RawTensor::owned(Dtype::U8, vec![2, 3], rows), vec![4, 3], vec![rank * 2, 0])];
        if rank == 0 {
            tensors.push(RankTensor::whole("b", RawTensor::owned(Dtype::U8, vec![3], vec![7, 8, 9])));
        }
        save_rank(&ckpt, "model", rank, 2, "s1", &tensors, None, &opts).unwrap();
    }
    let index = commit_ranks(&ckpt, "model", 2, "s1", std::time::Duration::from_secs(5), &opts).unwrap();
    let o = run(&["inspect", index.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("split tensors") && text(&o).contains("  w     U8     [4, 3]  2 pieces"), "{}", text(&o));
    let merged = dir.path().join("merged.safetensors");
    let o = run(&["merge", index.to_str().unwrap(), "-o", merged.to_str().unwrap(), "--no-fsync"]);
    assert!(o.status.success(), "{}", text(&o));
    let r = safeckpt_reader::Reader::open(&merged).unwrap();
    assert_eq!(r.names(), ["b", "w"]);
    assert_eq!(r.tensor("w").unwrap().shape(), [4, 3]);
    assert_eq!(r.tensor("w").unwrap().data(), global.as_slice());
    assert_eq!(r.tensor("b").unwrap().data(), [7, 8, 9]);
    let o = run(&["verify", index.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // diff compares the tensors the program saw: the split save equals its merged file.
    let o = run(&["diff", index.to_str().unwrap(), merged.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("equal: 2 tensors (2 bit for bit)"), "{}", text(&o));
}

#[test]
fn diff_checks_a_conversion_against_its_pytorch_source() {
    let dir = tempfile::tempdir().unwrap();
    let pth = fixtures().join("pytorch/checkpoint_adam.pth");
    let out = dir.path().join("c.safetensors");
    assert!(run(&["convert", pth.to_str().unwrap(), out.to_str().unwrap(), "-q"]).status.success());
    let o = run(&["diff", pth.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("equal: 24 tensors (24 bit for bit); a PyTorch file has no metadata"), "{}", text(&o));
    let cast = dir.path().join("bf16.safetensors");
    assert!(run(&["convert", pth.to_str().unwrap(), cast.to_str().unwrap(), "--dtype", "bf16", "-q"]).status.success());
    // Across dtypes the values are compared: exactly, bf16's rounding differs; under numpy's
    // allclose rule with bf16's precision (8 bits: a relative error under 2^-8), equal.
    let p = pth.to_str().unwrap();
    let o = run(&["diff", p, cast.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("values outside the tolerance"), "{}", text(&o));
    assert!(text(&o).contains("compared by value across dtypes"), "{}", text(&o));
    assert!(text(&o).contains("largest difference: "), "{}", text(&o));
    let o = run(&["diff", p, cast.to_str().unwrap(), "--rtol", "4e-3"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(&["diff", p, cast.to_str().unwrap(), "--rtol", "1e-4", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["equal"], false);
    let worst = &doc["largest_difference"];
    let values: Vec<_> = doc["differences"].as_array().unwrap().iter().filter(|d| d["kind"] == "values").collect();
    assert!(!values.is_empty(), "{doc}");
    assert!(values.iter().any(|d| d["name"] == worst["name"]), "{doc}");
    assert!(worst["abs"].as_f64().unwrap() > 0.0);
    let o = run(&["diff", pth.to_str().unwrap(), out.to_str().unwrap(), "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((doc["equal"].as_bool(), doc["identical_tensors"].as_u64()), (Some(true), Some(24)));
}

#[path = "../../store/tests/common/http.rs"]
mod http_server;
#[path = "../../store/tests/common/mod.rs"]
mod s3;

#[test]
fn urls_work_in_every_command() {
    let Some(server) = s3::Server::start() else { return };
    let run_s3 = |args: &[&str]| bin().args(args).envs(server.env()).output().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pth = fixtures().join("pytorch/state_dict_mlp.pth");
    let url = "s3://ckpt/conv/model.safetensors";
    let o = run_s3(&["convert", pth.to_str().unwrap(), url]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("uploaded s3://ckpt/conv/model.safetensors"), "{}", text(&o));
    // inspect reads the two header requests and nothing else.
    let o = run_s3(&["inspect", url]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("in 2 requests; no tensor data"), "{}", text(&o));
    let o = run_s3(&["verify", url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The same conversion locally is identical.
    let local = dir.path().join("local.safetensors");
    let o = run(&["convert", pth.to_str().unwrap(), local.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run_s3(&["diff", local.to_str().unwrap(), url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Existing objects are kept unless --force.
    let o = run_s3(&["convert", pth.to_str().unwrap(), url]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("already exists"), "{}", text(&o));
    // A sharded set up and back.
    let src = fixtures().join("models/tiny-gpt.safetensors");
    let o = run_s3(&["shard", src.to_str().unwrap(), "--max-shard-size", "300KB", "-o", "s3://ckpt/sharded", "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let index = "s3://ckpt/sharded/model.safetensors.index.json";
    let o = run_s3(&["verify", index]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The prefix stands for the set under it, as a directory does.
    let o = run_s3(&["inspect", "s3://ckpt/sharded"]);
    assert!(text(&o).contains("model-00002-of-00004.safetensors"), "{}", text(&o));
    let o = run_s3(&["inspect", "s3://ckpt/empty-prefix"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no such object"), "{}", text(&o));
    let merged = dir.path().join("merged.safetensors");
    let o = run_s3(&["merge", index, "-o", merged.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["diff", src.to_str().unwrap(), merged.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Damage in the store is found by a remote verify.
    let shard = server.file_of("sharded/model-00002-of-00004.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x10;
    std::fs::write(&shard, bytes).unwrap();
    let o = run_s3(&["verify", index]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("s3://ckpt/sharded/model-00002-of-00004.safetensors"), "{}", text(&o));
}

#[test]
fn a_training_run_on_a_bucket_prefix_resumes_bit_exactly() {
    let Some(server) = s3::Server::start() else { return };
    let run_s3 = |args: &[&str]| bin().args(args).envs(server.env()).output().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("straight");
    let straight = run(&["demo", "--dir", local.to_str().unwrap(), "--epochs", "4", "--seed", "5"]);
    assert!(straight.status.success(), "{}", text(&straight));
    let prefix = "s3://ckpt/runs/demo";
    let first = run_s3(&["demo", "--dir", prefix, "--epochs", "4", "--seed", "5", "--stop-after-epoch", "2"]);
    assert!(text(&first).contains("new run in s3://ckpt/runs/demo"), "{}", text(&first));
    assert!(text(&first).contains("stopping after epoch 2"), "{}", text(&first));
    assert!(server.file_of("runs/demo/ledger.json").exists());
    assert!(!server.file_of("runs/demo/.lock").exists(), "the lease is released when the run ends");
    let resumed = run_s3(&["demo", "--dir", prefix, "--epochs", "4", "--seed", "5"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(text(&resumed).contains("resumed from ckpt-000000000"), "{}", text(&resumed));
    assert!(text(&resumed).contains("memory-mapped for inference"), "{}", text(&resumed));
    assert_eq!(digest(&straight), digest(&resumed));
    // The run as a whole: listed from the ledger, every checkpoint verified remotely.
    let o = run_s3(&["inspect", prefix]);
    assert!(
        text(&o).contains("run s3://ckpt/runs/demo: 2 checkpoints") && text(&o).contains("writer: none"),
        "{}",
        text(&o)
    );
    let o = run_s3(&["verify", prefix]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn a_run_directory_is_listed_and_every_checkpoint_verified() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let d = run_dir.to_str().unwrap();
    assert!(run(&["demo", "--dir", d, "--epochs", "4", "--seed", "3", "-q"]).status.success());
    let o = run(&["inspect", d]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("keeps the best 1 by val_loss (lowest) besides the latest"), "{out}");
    assert!(out.contains("writer: none (the last was pid"), "{out}");
    assert!(out.lines().any(|l| l.contains("ckpt-000000000252.safetensors") && l.contains("latest")), "{out}");
    let o = run(&["inspect", d, "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cps = doc["checkpoints"].as_array().unwrap();
    assert_eq!(cps.last().unwrap()["step"], 252);
    assert_eq!(cps.iter().filter(|c| c["best"] == true).count(), 1);
    assert!(cps.iter().all(|c| c["bytes"].as_u64().unwrap() > 40_000 && c["checksums"] == true));
    // A process holding the run (its lock) is reported without disturbing it.
    let lock = std::fs::File::open(run_dir.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    assert!(text(&run(&["inspect", d])).contains("(holds the lock now)"));
    drop(lock);
    let o = run(&["verify", d]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("all 2 checkpoints verified"), "{}", text(&o));
    // One damaged checkpoint: named by step, exit 1; the other still checks out.
    let victim = run_dir.join("ckpt-000000000189.safetensors");
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n - 9] ^= 0x40;
    std::fs::write(&victim, bytes).unwrap();
    let o = run(&["verify", d]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAILED  step 189"), "{}", text(&o));
    assert!(text(&o).contains("OK      step 252"), "{}", text(&o));
    assert!(text(&o).contains("1 of 2 checkpoints failed"), "{}", text(&o));
    // A tampered ledger naming a file outside the run: listed as ignored, never read or verified.
    let outside = dir.path().join("outside.safetensors");
    std::fs::write(&outside, b"not a checkpoint").unwrap();
    let ledger_path = run_dir.join("ledger.json");
    let mut ledger: serde_json::Value = serde_json::from_slice(&std::fs::read(&ledger_path).unwrap()).unwrap();
    let mut evil = ledger["checkpoints"][0].clone();
    evil["path"] = "../outside.safetensors".into();
    evil["step"] = 999.into();
    ledger["checkpoints"].as_array_mut().unwrap().push(evil);
    std::fs::write(&ledger_path, serde_json::to_vec(&ledger).unwrap()).unwrap();
    let out = text(&run(&["inspect", d]));
    assert!(out.contains("ignored ledger entry `../outside.safetensors`"), "{out}");
    assert!(!out.lines().any(|l| l.contains("999") && l.contains("latest")), "{out}");
    let o = run(&["verify", d]);
    assert!(!text(&o).contains("outside"), "{}", text(&o));
    assert!(text(&o).contains("1 of 2 checkpoints failed"), "{}", text(&o));
}

#[test]
fn a_plain_directory_opens_its_checkpoint_and_errors_say_why_once() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["inspect", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is a directory with no safetensors file or index in it"), "{}", text(&o));
    std::fs::copy(fixtures().join("models/tiny-gpt.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let o = run(&["verify", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let missing = dir.path().join("absent.safetensors");
    let o = run(&["inspect", missing.to_str().unwrap()]);
    assert_eq!(text(&o).matches("no such file or directory").count(), 1, "{}", text(&o));
}

#[test]
fn a_model_on_a_web_server_is_inspected_from_its_header_alone() {
    let server = http_server::HttpServer::start();
    std::fs::copy(fixtures().join("models/tiny-gpt.safetensors"), server.file("model.safetensors")).unwrap();
    let url = server.url("resolve/main/model.safetensors");
    let o = run(&["inspect", &url]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("h.0.attn.c_attn.weight") && out.contains("in 2 requests; no tensor data"), "{out}");
    let size = std::fs::metadata(server.file("model.safetensors")).unwrap().len();
    assert!(server.counts().1 < size / 10, "{:?} of {size}", server.counts());
    let o = run(&["verify", &url]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let local = tempfile::tempdir().unwrap();
    let copy = local.path().join("copy.safetensors");
    let o = run(&["merge", &url, "-o", copy.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["diff", copy.to_str().unwrap(), fixtures().join("models/tiny-gpt.safetensors").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // A PyTorch file on the hub: inspected and converted without running it.
    std::fs::copy(fixtures().join("pytorch/pytorch_model.bin"), server.file("pytorch_model.bin")).unwrap();
    let bin = server.url("resolve/main/pytorch_model.bin");
    let o = run(&["inspect", &bin]);
    assert!(o.status.success(), "{}", text(&o));
    let out = local.path().join("converted.safetensors");
    let o = run(&["convert", &bin, out.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let local_bin = local.path().join("local.safetensors");
    let o = run(&[
        "convert",
        fixtures().join("pytorch/pytorch_model.bin").to_str().unwrap(),
        local_bin.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&local_bin).unwrap());
}

#[test]
fn names_and_metadata_from_a_file_cannot_drive_the_terminal() {
    use safeckpt_format::{Dtype, Metadata, RawTensor};
    let dir = tempfile::tempdir().unwrap();
    let evil = "w\x1b]0;pwned\x07\x1b[2J\u{202e}txt.exe\nOK  forged line";
    let a = dir.path().join("a.safetensors");
    let meta = Metadata::from([("note\x1b[31m".to_string(), "red\x1b[0m\nforged".to_string())]);
    let data = vec![1u8, 2, 3, 4];
    let tensors = vec![(evil, RawTensor::borrowed(Dtype::U8, vec![4], &data))];
    safeckpt_writer::write_file(&a, &tensors, Some(meta), &safeckpt_writer::WriteOptions::new().fsync(false)).unwrap();
    let b = dir.path().join("b.safetensors");
    let plain = vec![("w", RawTensor::borrowed(Dtype::U8, vec![4], &data))];
    safeckpt_writer::write_file(&b, &plain, None, &safeckpt_writer::WriteOptions::new().fsync(false)).unwrap();
    // Damage the data so that verify names the tensor in its failure.
    let mut bytes = std::fs::read(&a).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&a, bytes).unwrap();
    for args in [
        vec!["inspect", a.to_str().unwrap()],
        vec!["diff", a.to_str().unwrap(), b.to_str().unwrap()],
        vec!["verify", a.to_str().unwrap()],
    ] {
        let o = run(&args);
        let all: Vec<u8> = [o.stdout.as_slice(), o.stderr.as_slice()].concat();
        assert!(!all.contains(&0x1b) && !all.contains(&0x07), "{args:?}: {}", text(&o));
        assert!(!String::from_utf8_lossy(&all).contains('\u{202e}'), "{args:?}");
        assert!(text(&o).contains("\\u{1b}"), "{args:?}: {}", text(&o));
        assert!(!text(&o).lines().any(|l| l.starts_with("OK  forged")), "{args:?}: {}", text(&o));
    }
    // JSON stays JSON, with the name intact.
    let o = run(&["inspect", a.to_str().unwrap(), "--json"]);
    assert!(!o.stdout.contains(&0x1b));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(doc.to_string().contains("txt.exe"), "{doc}");
    assert!(serde_json::to_string(&doc).unwrap().contains(&serde_json::to_string(evil).unwrap()[1..10]), "{doc}");
}

#[test]
fn a_reader_that_stops_early_ends_the_output_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("many.safetensors");
    let names: Vec<String> =
        (0..20_000).map(|i| format!("model.layers.{i}.a_rather_long_parameter_name.weight")).collect();
    let data = [0u8; 4];
    let tensors: Vec<_> = names
        .iter()
        .map(|n| (n.as_str(), safeckpt_format::RawTensor::borrowed(safeckpt_format::Dtype::U8, vec![4], &data)))
        .collect();
    safeckpt_writer::write_file(&p, &tensors, None, &safeckpt_writer::WriteOptions::new().fsync(false)).unwrap();
    // As `safeckpt inspect many.safetensors | head -1`.
    let mut child =
        bin().args(["inspect", p.to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(first.contains("many.safetensors"), "{first}");
    assert_eq!(out.status.code(), Some(141));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}
