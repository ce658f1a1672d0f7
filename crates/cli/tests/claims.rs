//! The README's promises about the command line, each checked: convert's `--key`,
//! `--keep-aliases` and `--max-shard-size`, `--no-checksums` output equal byte for byte to the
//! reference writer's, `diff --atol`, `verify -q`, and the conversion's memory bound.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{bin, fixtures, run, s, text};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// Tensor names of a file, sorted.
fn names(bytes: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = SafeTensors::deserialize(bytes).unwrap().names().into_iter().map(str::to_string).collect();
    v.sort();
    v
}

/// The same tensors and metadata written by the reference writer (the `safetensors` crate).
fn reference_bytes(ours: &[u8]) -> Vec<u8> {
    let (_, meta) = SafeTensors::read_metadata(ours).unwrap();
    let st = SafeTensors::deserialize(ours).unwrap();
    let views: Vec<(String, TensorView<'_>)> = st.tensors();
    safetensors::serialize(views, meta.metadata().clone()).unwrap()
}

/// A header's `__metadata__` object (its text) and the text after it.
fn split_metadata(header: &str) -> (&str, &str) {
    let start = "{\"__metadata__\":".len();
    assert!(header.starts_with("{\"__metadata__\":{"), "{header}");
    let (mut depth, mut in_string, mut escaped) = (0, false, false);
    for (i, c) in header[start..].char_indices() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_string = false,
            (false, _, '"') => in_string = true,
            (false, _, '{') => depth += 1,
            (false, _, '}') => {
                depth -= 1;
                if depth == 0 {
                    return header[start..].split_at(i + 1);
                }
            }
            _ => {}
        }
    }
    panic!("unterminated metadata in {header}")
}

/// Asserts that `ours` is the reference writer's file for the same tensors and metadata: the
/// same bytes exactly when there is at most one metadata key; with more, the same bytes but for
/// the order of the metadata keys, which is sorted in ours and varies from run to run in the
/// reference's (it writes a `HashMap`).
fn assert_reference_bytes(ours: &[u8], what: &str) {
    let theirs = reference_bytes(ours);
    let (_, meta) = SafeTensors::read_metadata(ours).unwrap();
    if meta.metadata().as_ref().is_none_or(|m| m.len() <= 1) {
        assert!(ours == theirs.as_slice(), "{what}: not the reference writer's bytes");
        return;
    }
    assert_eq!(ours.len(), theirs.len(), "{what}");
    assert_eq!(ours[..8], theirs[..8], "{what}: header length");
    let n = 8 + u64::from_le_bytes(ours[..8].try_into().unwrap()) as usize;
    assert!(ours[n..] == theirs[n..], "{what}: data sections differ");
    let (h1, h2) = (std::str::from_utf8(&ours[8..n]).unwrap(), std::str::from_utf8(&theirs[8..n]).unwrap());
    let ((m1, rest1), (m2, rest2)) = (split_metadata(h1), split_metadata(h2));
    assert_eq!(rest1, rest2, "{what}: tensor entries or padding differ");
    let sorted: std::collections::BTreeMap<String, String> = serde_json::from_str(m2).unwrap();
    assert_eq!(m1, serde_json::to_string(&sorted).unwrap(), "{what}: metadata differs or is not in key order");
}

#[test]
fn convert_key_takes_a_sub_tree_without_its_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("pytorch/checkpoint_adam.pth");
    let whole = dir.path().join("whole.safetensors");
    let model = dir.path().join("model.safetensors");
    assert!(run(&["convert", s(&src), s(&whole), "-q", "--no-fsync"]).status.success());
    let o = run(&["convert", s(&src), s(&model), "--key", "model_state_dict", "-q", "--no-fsync"]);
    assert!(o.status.success(), "{}", text(&o));
    let whole = std::fs::read(&whole).unwrap();
    let model = std::fs::read(&model).unwrap();
    let inside: Vec<String> =
        names(&whole).into_iter().filter_map(|n| n.strip_prefix("model_state_dict.").map(str::to_string)).collect();
    assert_eq!(names(&model), inside);
    assert_eq!(inside.len(), 6);
    let (w, m) = (SafeTensors::deserialize(&whole).unwrap(), SafeTensors::deserialize(&model).unwrap());
    for n in &inside {
        assert_eq!(m.tensor(n).unwrap().data(), w.tensor(&format!("model_state_dict.{n}")).unwrap().data(), "{n}");
    }
    // A key that is not there: refused, naming it, nothing written.
    let none = dir.path().join("none.safetensors");
    let o = run(&["convert", s(&src), s(&none), "--key", "no_such_key", "-q"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no_such_key"), "{}", text(&o));
    assert!(!none.exists());
}

#[test]
fn tied_weights_are_an_alias_or_with_keep_aliases_real_copies() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("pytorch/tied.pth");
    let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
    assert!(run(&["convert", s(&src), s(&a), "-q", "--no-fsync"]).status.success());
    assert!(run(&["convert", s(&src), s(&b), "--keep-aliases", "-q", "--no-fsync"]).status.success());
    let a = std::fs::read(&a).unwrap();
    let b = std::fs::read(&b).unwrap();
    // Default: stored once, the tie recorded in the metadata (transformers' convention).
    assert_eq!(names(&a), ["embed.weight", "norm.weight"]);
    let (_, meta) = SafeTensors::read_metadata(&a).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["lm_head.weight"], "embed.weight");
    // --keep-aliases: both names are real tensors with equal data.
    assert_eq!(names(&b), ["embed.weight", "lm_head.weight", "norm.weight"]);
    let st = SafeTensors::deserialize(&b).unwrap();
    assert_eq!(st.tensor("embed.weight").unwrap().data(), st.tensor("lm_head.weight").unwrap().data());
    let (_, meta) = SafeTensors::read_metadata(&b).unwrap();
    assert!(!meta.metadata().as_ref().is_some_and(|m| m.contains_key("lm_head.weight")));
}

#[test]
fn convert_max_shard_size_writes_a_sharded_set_equal_to_the_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("pytorch/checkpoint_adam.pth");
    let one = dir.path().join("one.safetensors");
    let out = dir.path().join("sharded");
    assert!(run(&["convert", s(&src), s(&one), "-q", "--no-fsync"]).status.success());
    let o = run(&["convert", s(&src), s(&out), "--max-shard-size", "8KB", "-q", "--no-fsync"]);
    assert!(o.status.success(), "{}", text(&o));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    let map = index["weight_map"].as_object().unwrap();
    let mut shards: Vec<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    shards.sort();
    shards.dedup();
    assert!(shards.len() > 2, "{shards:?}");
    let one = std::fs::read(&one).unwrap();
    let whole = SafeTensors::deserialize(&one).unwrap();
    assert_eq!(map.len(), whole.len());
    for shard in &shards {
        let n = shards.len();
        assert!(shard.starts_with("model-") && shard.ends_with(&format!("-of-{n:05}.safetensors")), "{shard}");
        let bytes = std::fs::read(out.join(shard)).unwrap();
        // Each shard holds at most 8 KB of tensor data unless one tensor alone is larger.
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let data: usize = st.tensors().iter().map(|(_, t)| t.data().len()).sum();
        assert!(data <= 8_000 || st.len() == 1, "{shard}: {data} bytes in {} tensors", st.len());
        for (name, t) in st.tensors() {
            assert_eq!(map[&name], *shard, "{name}");
            assert_eq!(t.data(), whole.tensor(&name).unwrap().data(), "{name}");
        }
    }
    // The same through `verify` and `diff` against the single file.
    let index_path = out.join("model.safetensors.index.json");
    assert_eq!(run(&["verify", s(&index_path), "-q"]).status.code(), Some(0));
    let o = run(&["diff", s(&index_path), s(&dir.path().join("one.safetensors"))]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn no_checksums_output_equals_the_reference_writer_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in
        ["checkpoint_adam.pth", "tied.pth", "dtypes.pth", "legacy.pth", "pytorch_model.bin"].iter().enumerate()
    {
        let out = dir.path().join(format!("c{i}.safetensors"));
        let o = run(&["convert", s(&fixtures().join("pytorch").join(name)), s(&out), "--no-checksums", "-q"]);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let ours = std::fs::read(&out).unwrap();
        assert_reference_bytes(&ours, name);
        // With checksums the header differs (the integrity record), the tensors do not.
        let with = dir.path().join(format!("k{i}.safetensors"));
        assert!(run(&["convert", s(&fixtures().join("pytorch").join(name)), s(&with), "-q"]).status.success());
        let with = std::fs::read(&with).unwrap();
        assert_ne!(with, ours, "{name}");
        let (a, b) = (SafeTensors::deserialize(&ours).unwrap(), SafeTensors::deserialize(&with).unwrap());
        for (n, t) in a.tensors() {
            assert_eq!(t.data(), b.tensor(&n).unwrap().data(), "{name}: {n}");
        }
    }
    // Shard and merge write the reference writer's bytes too.
    let src = dir.path().join("c0.safetensors");
    let sharded = dir.path().join("sharded");
    let o = run(&["shard", s(&src), "--max-shard-size", "8KB", "-o", s(&sharded), "--no-checksums", "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    let mut shards = 0;
    for e in std::fs::read_dir(&sharded).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let b = std::fs::read(&p).unwrap();
            assert_reference_bytes(&b, &p.display().to_string());
            shards += 1;
        }
    }
    assert!(shards > 2);
    let merged = dir.path().join("merged.safetensors");
    let index = sharded.join("model.safetensors.index.json");
    assert!(run(&["merge", s(&index), "-o", s(&merged), "--no-checksums", "-q"]).status.success());
    let m = std::fs::read(&merged).unwrap();
    assert_reference_bytes(&m, "merged");
}

/// Two files equal but for one value of one tensor, which differs by `delta`.
fn pair(dir: &Path, delta: f32) -> (PathBuf, PathBuf) {
    let write = |name: &str, x: f32| {
        let a: Vec<u8> = [1.0f32, 2.0, x, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b: Vec<u8> = [7i32, 8].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = vec![
            ("w", TensorView::new(Dtype::F32, vec![2, 2], &a).unwrap()),
            ("steps", TensorView::new(Dtype::I32, vec![2], &b).unwrap()),
        ];
        let p = dir.join(name);
        safetensors::serialize_to_file(t, None::<HashMap<String, String>>, &p).unwrap();
        p
    };
    (write("a.safetensors", 3.0), write("b.safetensors", 3.0 + delta))
}

#[test]
fn diff_atol_allows_small_float_differences_only() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = pair(dir.path(), 1e-3);
    let o = run(&["diff", s(&a), s(&b)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains('w'), "{}", text(&o));
    for (atol, code) in [("1e-2", 0), ("2e-3", 0), ("5e-4", 1), ("0", 1)] {
        let o = run(&["diff", s(&a), s(&b), "--atol", atol]);
        assert_eq!(o.status.code(), Some(code), "--atol {atol}: {}", text(&o));
    }
    let o = run(&["diff", s(&a), s(&b), "--atol", "1e-2", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["equal"], true, "{doc}");
    let same = dir.path().join("same");
    std::fs::create_dir(&same).unwrap();
    let (c, d) = pair(&same, 0.0);
    assert_eq!(run(&["diff", s(&c), s(&d)]).status.code(), Some(0));
}

#[test]
fn verify_quiet_prints_nothing_when_sound_and_names_the_damage_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ck.safetensors");
    let src = fixtures().join("pytorch/checkpoint_adam.pth");
    assert!(run(&["convert", s(&src), s(&f), "-q", "--no-fsync"]).status.success());
    let o = run(&["verify", s(&f), "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{}", text(&o));
    let loud = run(&["verify", s(&f)]);
    assert_eq!(loud.status.code(), Some(0));
    assert!(!loud.stdout.is_empty());
    // One flipped bit in the last byte (tensor data): exit 1, the tensor named even with -q.
    let mut bytes = std::fs::read(&f).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&f, &bytes).unwrap();
    let o = run(&["verify", s(&f), "-q"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let victim = st.tensors().into_iter().max_by_key(|(_, t)| t.data().as_ptr() as usize).unwrap().0;
    assert!(text(&o).contains(&victim), "{victim}: {}", text(&o));
}

/// Peak anonymous memory (heap and private mappings, not the mapped input) of a child process,
/// polled from /proc every millisecond until it exits; the child's exit status with it.
fn peak_anon_kib(mut cmd: Command) -> (u64, std::process::ExitStatus) {
    let mut child = cmd.stdout(std::process::Stdio::null()).spawn().unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            let anon = s
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak = peak.max(anon.unwrap_or(0));
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (peak, status);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// README: the conversion streams, its memory bounded by the largest tensor, not the model. A
/// 256 MiB state dict of 16 MiB tensors converts with a peak of anonymous memory well under the
/// documented bound (1.2 x the largest tensor + 64 MiB = 83 MiB), while a converter that held
/// the model would need 256 MiB.
#[test]
fn conversion_memory_is_bounded_by_the_largest_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("large.pth");
    let status = Command::new("python3")
        .arg(fixtures().join("pytorch/make_large.py"))
        .args([s(&pth), "16", "16"])
        .status()
        .expect("python3 runs fixtures/pytorch/make_large.py (the test needs it)");
    assert!(status.success());
    assert!(std::fs::metadata(&pth).unwrap().len() > 256 << 20);
    let out = dir.path().join("large.safetensors");
    let mut cmd = bin();
    cmd.args(["convert", s(&pth), s(&out), "--no-fsync"]);
    let (peak_kib, status) = peak_anon_kib(cmd);
    assert!(status.success());
    let bound_kib = 12 * 16 * 1024 / 10 + 64 * 1024;
    assert!(peak_kib > 0, "no memory figure was read");
    assert!(peak_kib < bound_kib, "peak anonymous memory {peak_kib} KiB over the bound {bound_kib} KiB");
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("conversion of 256 MiB: peak anonymous memory {peak_kib} KiB\n").as_bytes(),
    );
    let st_bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&st_bytes).unwrap();
    assert_eq!(st.len(), 16);
    let t = st.tensor("layer.15.weight").unwrap();
    assert_eq!(t.shape(), [4096, 1024]);
    assert!(t.data().chunks_exact(4).all(|c| c == 15.0f32.to_le_bytes()));
}
