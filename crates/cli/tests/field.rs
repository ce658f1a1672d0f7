//! Files and folders as the field makes them: the HuggingFace hub cache, headers of every length,
//! real conversions compared, and the CLI's conventions.

use std::path::{Path, PathBuf};

mod common;
use common::{fixtures, run, s, text};

/// Moves every file of `src` into a HuggingFace hub cache under `root`, as `huggingface_hub`
/// leaves a download: `models--org--name/blobs/<hash>` holds the bytes and
/// `snapshots/<revision>/<file name>` is a symbolic link to `../../blobs/<hash>`. Returns the
/// snapshot directory.
fn hub_cache(root: &Path, src: &Path) -> PathBuf {
    let repo = root.join("models--org--name");
    let snap = repo.join("snapshots/9d6b2f3c1a0e8d7c6b5a4f3e2d1c0b9a8f7e6d5c");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    for (i, e) in std::fs::read_dir(src).unwrap().enumerate() {
        let p = e.unwrap().path();
        let blob = format!("{:064x}", 0xb10b_0000_u64 + i as u64);
        std::fs::rename(&p, repo.join("blobs").join(&blob)).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snap.join(p.file_name().unwrap())).unwrap();
    }
    snap
}

#[test]
fn every_command_reads_a_huggingface_hub_cache_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("pytorch/checkpoint_adam.pth");
    let one = dir.path().join("one.safetensors");
    assert!(run(&["convert", s(&src), s(&one), "-q", "--no-fsync"]).status.success());
    // A sharded snapshot and a single-file one.
    let staged = dir.path().join("staged");
    let o = run(&["convert", s(&src), s(&staged), "--max-shard-size", "8KB", "-q", "--no-fsync"]);
    assert!(o.status.success(), "{}", text(&o));
    let sharded = hub_cache(&dir.path().join("hub"), &staged);
    let single_src = dir.path().join("single");
    std::fs::create_dir(&single_src).unwrap();
    std::fs::copy(&one, single_src.join("model.safetensors")).unwrap();
    let single = hub_cache(&dir.path().join("hub1"), &single_src);
    assert!(std::fs::symlink_metadata(sharded.join("model.safetensors.index.json")).unwrap().is_symlink());

    for snap in [&sharded, &single] {
        let index = snap.join("model.safetensors.index.json");
        let target = if index.exists() { index } else { snap.join("model.safetensors") };
        for at in [snap.clone(), target] {
            let o = run(&["inspect", s(&at)]);
            assert!(o.status.success(), "inspect {}: {}", at.display(), text(&o));
            assert!(text(&o).contains("model_state_dict.fc1.weight"), "{}", text(&o));
            let o = run(&["verify", s(&at), "-q"]);
            assert_eq!(o.status.code(), Some(0), "verify {}: {}", at.display(), text(&o));
            let o = run(&["diff", s(&at), s(&one)]);
            assert_eq!(o.status.code(), Some(0), "diff {}: {}", at.display(), text(&o));
            let merged = dir.path().join("merged.safetensors");
            let o = run(&["merge", s(&at), "-o", s(&merged), "--force", "-q", "--no-fsync"]);
            assert!(o.status.success(), "merge {}: {}", at.display(), text(&o));
            assert_eq!(run(&["diff", s(&merged), s(&one)]).status.code(), Some(0));
        }
    }
    // A link whose name is plain is followed; a name with a separator is still refused.
    let evil = dir.path().join("evil");
    std::fs::create_dir(&evil).unwrap();
    std::fs::write(
        evil.join("model.safetensors.index.json"),
        r#"{"metadata":{},"weight_map":{"a":"../one.safetensors"}}"#,
    )
    .unwrap();
    let o = run(&["inspect", s(&evil.join("model.safetensors.index.json"))]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("not a plain file name"), "{}", text(&o));
}

/// A valid safetensors file whose header is exactly `len` bytes (padded with spaces, as the
/// format allows): one U8 tensor when it fits, else no tensor.
fn safetensors_with_header_len(len: usize) -> Vec<u8> {
    let with_tensor = r#"{"t":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}"#;
    let (json, data): (&str, &[u8]) = if with_tensor.len() <= len { (with_tensor, b"abc") } else { ("{}", b"") };
    let mut file = (len as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json.as_bytes());
    file.resize(8 + len, b' ');
    file.extend_from_slice(data);
    file
}

/// The kind of a file is decided by its structure, not its first byte: a header length that
/// begins with 0x80 (a pickle's first byte; one length in 32) or with `PK` (19,280) is still a
/// safetensors file to `inspect` and `diff`, and `convert` says it is one already.
#[test]
fn every_header_length_is_read_as_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let mut lens: Vec<usize> = (8..=2048).step_by(8).collect();
    lens.push(19_280);
    assert_eq!(&19_280u64.to_le_bytes()[..2], b"PK");
    let mut looked_like_pickles = 0;
    for len in lens {
        let bytes = safetensors_with_header_len(len);
        looked_like_pickles += usize::from(bytes[0] == 0x80);
        safetensors::SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{len}: the reference refuses it: {e}"));
        let f = dir.path().join(format!("h{len}.safetensors"));
        std::fs::write(&f, &bytes).unwrap();
        let o = run(&["inspect", s(&f), "--json"]);
        assert!(o.status.success(), "inspect, header of {len} bytes: {}", text(&o));
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(doc["format"], "safetensors", "{len}: {doc}");
        assert_eq!(doc["header_bytes"].as_u64(), Some(8 + len as u64), "{len}: {doc}");
        let o = run(&["diff", s(&f), s(&f)]);
        assert_eq!(o.status.code(), Some(0), "diff, header of {len} bytes: {}", text(&o));
    }
    assert_eq!(looked_like_pickles, 8);
    let f = dir.path().join("h384.safetensors");
    let o = run(&["convert", s(&f), s(&dir.path().join("out.safetensors"))]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("a safetensors file already"), "{}", text(&o));
}

/// A converted model with tied weights equals its source: the alias `convert` records (the
/// HuggingFace way: `lm_head.weight` -> `embed.weight` in the metadata) is resolved, and an
/// alias-free conversion (`--keep-aliases`) equals an aliased one.
#[test]
fn diff_resolves_tied_weights_recorded_as_aliases() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("pytorch/tied.pth");
    let (aliased, copies) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
    assert!(run(&["convert", s(&src), s(&aliased), "-q", "--no-fsync"]).status.success());
    assert!(run(&["convert", s(&src), s(&copies), "--keep-aliases", "-q", "--no-fsync"]).status.success());
    for (x, y) in [(&src, &aliased), (&aliased, &src), (&aliased, &copies), (&copies, &src)] {
        let o = run(&["diff", s(x), s(y)]);
        assert_eq!(o.status.code(), Some(0), "{} vs {}: {}", x.display(), y.display(), text(&o));
        assert!(text(&o).contains("equal: 3 tensors"), "{}", text(&o));
    }
}

/// Writes one tensor `t` of `dtype` holding `values` (little-endian bytes of each).
fn one_tensor(path: &Path, dtype: safetensors::Dtype, bytes: Vec<u8>, n: usize) {
    let view = safetensors::tensor::TensorView::new(dtype, vec![n], &bytes).unwrap();
    safetensors::serialize_to_file([("t", view)], None, path).unwrap();
}

/// Integers are compared as integers (exactly, even past 2^53 where f64 cannot tell them apart),
/// across integer widths; numpy's allclose rule applies to them too.
#[test]
fn diff_compares_integers_as_integers() {
    let dir = tempfile::tempdir().unwrap();
    let big = 1i64 << 60;
    let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (a, b, c, d) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
        dir.path().join("c.safetensors"),
        dir.path().join("d.safetensors"),
    );
    one_tensor(&a, safetensors::Dtype::I64, i64s(&[big, 7]), 2);
    one_tensor(&b, safetensors::Dtype::I64, i64s(&[big + 1, 7]), 2);
    let o = run(&["diff", s(&a), s(&b)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(&format!("element 0: {big} vs {}", big + 1)), "{}", text(&o));
    assert_eq!(run(&["diff", s(&a), s(&b), "--atol", "1"]).status.code(), Some(0));
    // I32 against I64 holding the same values: equal by value.
    one_tensor(&c, safetensors::Dtype::I64, i64s(&[-3, 70_000]), 2);
    one_tensor(&d, safetensors::Dtype::I32, [-3i32, 70_000].iter().flat_map(|x| x.to_le_bytes()).collect(), 2);
    let o = run(&["diff", s(&c), s(&d)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("1 tensor compared by value across dtypes"), "{}", text(&o));
    // An integer tensor against a float one is a layout difference, and bad tolerances are refused.
    one_tensor(&d, safetensors::Dtype::F32, [-3f32, 7e4].iter().flat_map(|x| x.to_le_bytes()).collect(), 2);
    let o = run(&["diff", s(&c), s(&d)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("I64 [2] vs F32 [2]"), "{}", text(&o));
    assert_eq!(run(&["diff", s(&c), s(&d), "--rtol", "-1"]).status.code(), Some(2));
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// `shard` and `convert --max-shard-size` into a folder that holds a set: refused without
/// `--force` (exit 2, nothing changed); with it, the new set replaces the old one and none of the
/// old files stay behind, as `save_pretrained` leaves a folder.
#[test]
fn writing_a_set_over_a_set_leaves_no_stale_shards() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("pytorch/checkpoint_adam.pth");
    let one = dir.path().join("one.safetensors");
    assert!(run(&["convert", s(&src), s(&one), "-q", "--no-fsync"]).status.success());
    let out = dir.path().join("out");
    let shard = |size: &str, force: bool| {
        let mut args = vec!["shard", s(&one), "--max-shard-size", size, "-o", s(&out), "-q", "--no-fsync"];
        if force {
            args.push("--force");
        }
        run(&args)
    };
    assert!(shard("8KB", false).status.success());
    let first = listing(&out);
    assert!(first.len() > 4, "{first:?}");
    let bytes: Vec<Vec<u8>> = first.iter().map(|n| std::fs::read(out.join(n)).unwrap()).collect();
    // Without --force: refused, every file as it was.
    let o = shard("20KB", false);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(listing(&out), first);
    for (n, b) in first.iter().zip(&bytes) {
        assert_eq!(&std::fs::read(out.join(n)).unwrap(), b, "{n}");
    }
    let o = run(&["convert", s(&src), s(&out), "--max-shard-size", "4KB", "-q"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert_eq!(listing(&out), first);
    // With --force: only the new set is left, and it reads back equal.
    for (size, expect_convert) in [("20KB", false), ("4KB", true)] {
        let o = if expect_convert {
            run(&["convert", s(&src), s(&out), "--max-shard-size", size, "--force", "-q", "--no-fsync"])
        } else {
            shard(size, true)
        };
        assert!(o.status.success(), "{}", text(&o));
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap()).unwrap();
        let mut expected: Vec<String> =
            index["weight_map"].as_object().unwrap().values().map(|v| v.as_str().unwrap().to_string()).collect();
        expected.push("model.safetensors.index.json".into());
        expected.sort();
        expected.dedup();
        assert_eq!(listing(&out), expected, "{size}");
        assert_eq!(run(&["diff", s(&out), s(&one)]).status.code(), Some(0));
    }
}

/// `inspect` shows what zero-copy users need: where the data section starts and whether every
/// tensor is aligned to its element size; on a PyTorch file, tied tensors are flagged and their
/// bytes counted once.
#[test]
fn inspect_shows_alignment_and_tied_tensors() {
    let dir = tempfile::tempdir().unwrap();
    // Our own files are aligned: the header is padded to 8 bytes and tensors sorted by alignment.
    let ours = dir.path().join("ours.safetensors");
    assert!(
        run(&["convert", s(&fixtures().join("pytorch/dtypes.pth")), s(&ours), "-q", "--no-fsync"]).status.success()
    );
    let o = run(&["inspect", s(&ours), "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["aligned"], true, "{doc}");
    assert_eq!(doc["data_offset"].as_u64(), doc["header_bytes"].as_u64());
    assert!(text(&run(&["inspect", s(&ours)])).contains("every tensor aligned to its element size"));
    // A valid file whose header is 54 bytes: its F32 tensor starts at byte 62.
    let json = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.extend_from_slice(&[0; 8]);
    assert_eq!(json.len(), 54);
    let odd = dir.path().join("odd.safetensors");
    std::fs::write(&odd, &bytes).unwrap();
    safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let o = run(&["inspect", s(&odd), "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((doc["aligned"].as_bool(), doc["data_offset"].as_u64()), (Some(false), Some(62)), "{doc}");
    assert_eq!(doc["misaligned_tensors"], serde_json::json!(["w"]));
    let o = run(&["inspect", s(&odd)]);
    assert!(
        text(&o).contains("data: starts at byte 62; 1 tensor not aligned") && text(&o).contains("`w` at byte 62"),
        "{}",
        text(&o)
    );
    // Tied weights of a PyTorch file.
    let tied = fixtures().join("pytorch/tied.pth");
    let o = run(&["inspect", s(&tied)]);
    assert!(text(&o).contains("3 tensors (1 tied to another, stored once), 408 parameters"), "{}", text(&o));
    assert!(text(&o).contains("tied to embed.weight"), "{}", text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&run(&["inspect", s(&tied), "--json"]).stdout).unwrap();
    assert_eq!((doc["data_bytes"].as_u64(), doc["tied_tensors"].as_u64()), (Some(1632), Some(1)));
    let head = doc["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "lm_head.weight").unwrap();
    assert_eq!(head["tied_to"], "embed.weight");
}

/// One convention across commands: a missing input is exit 2 everywhere; `--json` prints a JSON
/// object on failure too, with the same status; `shard` and `merge` take their output
/// positionally as `convert` does; `-q` everywhere; an EXIT STATUS section in every `--help`;
/// messages in the right number; no temporary file names and no library option names in errors.
#[test]
fn one_convention_across_commands() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    let m = s(&missing);
    let out = dir.path().join("out");
    for args in [
        vec!["inspect", m],
        vec!["verify", m],
        vec!["shard", m, s(&out)],
        vec!["merge", m, s(&out)],
        vec!["convert", m, s(&out)],
        vec!["diff", m, m],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains("missing.safetensors: no such file or directory"), "{args:?}: {}", text(&o));
    }
    // JSON on failure, same status: a missing file, a malformed one.
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"\x05\0\0\0\0\0\0\0{\"a\":").unwrap();
    for (args, code, kind) in [
        (vec!["inspect", "--json", m], 2, "not_found"),
        (vec!["verify", "--json", m], 2, "not_found"),
        (vec!["diff", "--json", m, m], 2, "not_found"),
        (vec!["inspect", "--json", s(&bad)], 2, "bad_input"),
        (vec!["verify", "--json", s(&bad)], 2, "bad_input"),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        let doc: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&o)));
        assert_eq!((doc["ok"].as_bool(), doc["error"]["kind"].as_str()), (Some(false), Some(kind)), "{args:?}: {doc}");
        assert!(!doc["error"]["message"].as_str().unwrap().is_empty());
    }
    // Positional outputs for shard and merge (and -o still works).
    let src = fixtures().join("pytorch/checkpoint_adam.pth");
    let one = dir.path().join("one.safetensors");
    let o = run(&["convert", s(&src), s(&one), "--no-fsync"]);
    assert!(o.status.success());
    assert!(
        text(&o).contains("24 tensors") && text(&o).contains("0 aliases") && text(&o).contains("3 values"),
        "{}",
        text(&o)
    );
    let o = run(&["shard", s(&one), s(&out), "--max-shard-size", "8KB", "-q", "--no-fsync"]);
    assert!(o.status.success() && o.stdout.is_empty(), "{}", text(&o));
    let index = out.join("model.safetensors.index.json");
    let merged = dir.path().join("merged.safetensors");
    assert!(run(&["merge", s(&index), s(&merged), "-q", "--no-fsync"]).status.success());
    let again = dir.path().join("again.safetensors");
    assert!(run(&["merge", s(&index), "-o", s(&again), "-q", "--no-fsync"]).status.success());
    assert_eq!(run(&["merge", s(&index), s(&again), "-o", s(&again)]).status.code(), Some(2));
    // -q on every command: nothing printed, the status says it.
    for (args, code) in [
        (vec!["inspect", s(&one), "-q"], 0),
        (vec!["inspect", s(&src), "-q"], 0),
        (vec!["verify", s(&index), "-q"], 0),
        (vec!["diff", s(&merged), s(&one), "-q"], 0),
        (vec!["diff", s(&src), s(&one), "-q", "--rtol", "0"], 0),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{args:?}: {}", text(&o));
    }
    let tied = dir.path().join("tied.safetensors");
    assert!(run(&["convert", s(&fixtures().join("pytorch/tied.pth")), s(&tied), "-q"]).status.success());
    let o = run(&["diff", s(&tied), s(&one), "-q"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    // Singular where there is one.
    let o =
        run(&["convert", s(&fixtures().join("pytorch/tied.pth")), s(&dir.path().join("t2.safetensors")), "--no-fsync"]);
    assert!(text(&o).contains("1 alias,") || text(&o).contains("1 alias in"), "{}", text(&o));
    assert!(!text(&o).contains("1 aliases"), "{}", text(&o));
    // EXIT STATUS under every --help.
    for cmd in ["inspect", "verify", "shard", "merge", "convert", "diff", "demo"] {
        let o = run(&[cmd, "--help"]);
        assert!(text(&o).contains("EXIT STATUS:") && text(&o).contains("2  bad or refused input"), "{cmd}");
    }
    // An output that exists: the flag to pass, never the library's option; a failed write names
    // the target, never its temporary file.
    let o = run(&["convert", s(&src), s(&one)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("pass --force") && !text(&o).contains("overwrite(true)"), "{}", text(&o));
    let under_a_file = one.join("x.safetensors");
    let o = run(&["convert", s(&src), s(&under_a_file)]);
    assert_ne!(o.status.code(), Some(0));
    assert!(!text(&o).contains("safeckpt-tmp") && text(&o).contains("x.safetensors"), "{}", text(&o));
}

/// The dtype of every tensor of a safetensors file or set, by name.
fn dtypes(path: &Path) -> std::collections::BTreeMap<String, String> {
    let doc: serde_json::Value = serde_json::from_slice(&run(&["inspect", s(path), "--json"]).stdout).unwrap();
    doc["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t["dtype"].as_str().unwrap().to_string()))
        .collect()
}

/// `convert --dtype` casts weights and leaves training state alone: optimizer moments and step
/// counters keep their type (bf16 cannot count past 256), integers are never cast; globs say
/// otherwise; safetensors files, sharded sets and folders are accepted as input.
#[test]
fn convert_dtype_casts_weights_not_training_state() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    assert!(run(&["demo", "--dir", s(&run_dir), "--epochs", "1", "-q"]).status.success());
    let ckpt = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("ckpt-"))
        .unwrap();
    let before = dtypes(&ckpt);
    assert!(before.keys().any(|k| k.starts_with("optimizer.") && k.ends_with(".step")), "{before:?}");
    let bf16 = dir.path().join("bf16.safetensors");
    let o = run(&["convert", s(&ckpt), s(&bf16), "--dtype", "bf16", "--no-fsync"]);
    assert!(o.status.success(), "{}", text(&o));
    for (name, dtype) in dtypes(&bf16) {
        let want = if name.starts_with("model.") { "BF16" } else { before[&name].as_str() };
        assert_eq!(dtype, want, "{name}");
    }
    // The values are the source's to bf16's precision, and the rest is bit for bit.
    let o = run(&["diff", s(&ckpt), s(&bf16), "--rtol", "4e-3"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(run(&["verify", s(&bf16), "-q"]).status.code(), Some(0));
    // Globs: only the moments; everything but fc1.
    let only = dir.path().join("only.safetensors");
    let o = run(&["convert", s(&ckpt), s(&only), "--dtype", "f16", "--cast-only", "optimizer.*.exp_avg*", "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    for (name, dtype) in dtypes(&only) {
        let moment = name.starts_with("optimizer.") && name.contains(".exp_avg");
        assert_eq!(dtype, if moment { "F16" } else { before[&name].as_str() }, "{name}");
    }
    let keep = dir.path().join("keep.safetensors");
    assert!(
        run(&["convert", s(&ckpt), s(&keep), "--dtype", "bf16", "--keep-dtype", "model.fc1.*", "-q"]).status.success()
    );
    let kept = dtypes(&keep);
    assert_eq!(kept["model.fc1.weight"], "F32");
    assert_eq!(kept["model.fc2.weight"], "BF16");
    // A sharded set (through its folder) in, a sharded set out.
    let sharded = dir.path().join("sharded");
    assert!(run(&["shard", s(&ckpt), s(&sharded), "--max-shard-size", "16KB", "-q"]).status.success());
    let out = dir.path().join("out");
    let o = run(&["convert", s(&sharded), s(&out), "--dtype", "bf16", "--max-shard-size", "16KB", "-q"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("model.safetensors.index.json").exists());
    assert_eq!(dtypes(&out), dtypes(&bf16));
    assert_eq!(run(&["diff", s(&out), s(&bf16)]).status.code(), Some(0));
    // Without --dtype there is nothing to convert; a bad glob is refused.
    let o = run(&["convert", s(&ckpt), s(&dir.path().join("x.safetensors"))]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(&["convert", s(&ckpt), s(&dir.path().join("x.safetensors")), "--dtype", "bf16", "--cast-only", "["]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--cast-only `[`"), "{}", text(&o));
}
