//! Power loss, modelled from a system-call trace (in the manner of ALICE and CrashMonkey): one
//! real save is traced with strace; from its file-system operations, the states a disk could hold
//! after losing power after any operation are built and each is checked like a directory after a
//! crash.
//!
//! The model is deliberately more adversarial than ext4 or XFS: after a power cut, an operation is
//! certainly on disk only if a later flush made it durable (file data and size by `fsync` or
//! `fdatasync` of that file; a name created, renamed or removed by `fsync` of its directory).
//! Every other operation may or may not have reached the disk, independently of the others, and a
//! write that did may have done so only in part (any subset of its 4 KiB blocks). For every crash
//! point the campaign checks the state with nothing optional persisted, with everything, with all
//! names but only durable data (the classic "renamed but empty" case), with all data but only
//! durable names, and a number of random mixes.
//!
//! What must hold in every state: the newest checkpoint opens, verifies and equals what its step
//! saved, and it is never older than the newest checkpoint from before the save (the previous
//! checkpoint is never harmed); and once the save has returned, the state with only durable
//! operations holds the new checkpoint (a save that returned survives power loss).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::Rng;
use crate::crash::{self, CrashReport, Mode};

/// Inode number in the model.
type Ino = usize;

/// The root directory's inode.
const ROOT: Ino = 0;

/// A file-system operation of the traced save.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// A new name for a new file or directory.
    Link { parent: Ino, name: String, ino: Ino },
    /// A name moved (possibly replacing another).
    Rename { from: Ino, from_name: String, to: Ino, to_name: String, ino: Ino },
    /// A name removed.
    Unlink { parent: Ino, name: String },
    /// A file's size set.
    SetLen { ino: Ino, len: u64 },
    /// Bytes written.
    Write { ino: Ino, off: u64, len: u64 },
    /// A flush of a file or directory.
    Sync { ino: Ino },
}

impl Op {
    /// The directories whose flush makes a name operation durable.
    fn dirs(&self) -> Vec<Ino> {
        match self {
            Op::Link { parent, .. } | Op::Unlink { parent, .. } => vec![*parent],
            Op::Rename { from, to, .. } => vec![*from, *to],
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
enum Node {
    File,
    Dir(BTreeMap<String, Ino>),
}

/// The traced save, ready to replay.
struct Trace {
    ops: Vec<Op>,
    /// Inodes that are directories.
    dirs: std::collections::HashSet<Ino>,
    /// The tree before the save.
    base: HashMap<Ino, Node>,
    /// File contents before the save.
    base_bytes: HashMap<Ino, Vec<u8>>,
    /// File contents after the save, for inodes still linked at the end.
    final_bytes: HashMap<Ino, Vec<u8>>,
    /// Names and contents after the save, to check the replay against.
    final_files: BTreeMap<String, Vec<u8>>,
}

/// What a power-loss campaign found.
#[derive(Debug, Clone, Default)]
pub struct PowerReport {
    /// File-system operations in the traced save.
    pub ops: usize,
    /// Crash points (after each operation, and before the first).
    pub crash_points: usize,
    /// States built and checked.
    pub states: usize,
    /// States whose newest checkpoint was the new one.
    pub new_checkpoint: usize,
    /// States whose newest checkpoint was the previous one.
    pub previous_checkpoint: usize,
    /// States that lost the previous checkpoint, or whose newest checkpoint was damaged or wrong.
    pub lost: usize,
    /// Whether the state after the save returned, with only durable operations, held the new
    /// checkpoint.
    pub returned_save_durable: bool,
    /// Whether replaying every operation rebuilt the directory the real save left (the model's
    /// check of itself).
    pub replay_exact: bool,
    /// Older retained checkpoints found damaged.
    pub older_damaged: usize,
    /// Problems, one line each.
    pub problems: Vec<String>,
}

impl PowerReport {
    /// Whether nothing was lost or damaged and the model replayed the save exactly.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.older_damaged == 0
            && self.returned_save_durable
            && self.replay_exact
            && self.problems.is_empty()
    }
}

/// Whether strace can be run here.
pub fn available() -> bool {
    Command::new("strace").arg("-V").output().map(|o| o.status.success()).unwrap_or(false)
}

/// Flushes removed from a real trace, to show that the model notices what they protect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mutation {
    /// The trace as it is.
    None,
    /// Without any `fsync` of a file.
    NoFileSyncs,
    /// Without any `fsync` of a directory.
    NoDirectorySyncs,
}

/// Runs the campaign for one save path: three saves, then a fourth traced, then `random` random
/// states per crash point besides the four fixed ones.
pub fn campaign(exe: &Path, mode: Mode, random: usize, seed: u64) -> Result<PowerReport> {
    campaign_with(exe, mode, random, seed, Mutation::None)
}

/// [`campaign`] on a trace with some flushes removed.
pub fn campaign_with(exe: &Path, mode: Mode, random: usize, seed: u64, mutation: Mutation) -> Result<PowerReport> {
    ensure!(available(), "strace is not installed");
    let work = tempfile::tempdir()?;
    let root = work.path().join("run");
    std::fs::create_dir_all(&root)?;
    // strace prints resolved paths.
    let root = root.canonicalize()?;
    let mode_arg = mode.name();
    let save = |steps: &str, traced: Option<&Path>| -> Result<()> {
        let mut cmd = match traced {
            Some(log) => {
                let mut c = Command::new("strace");
                c.args(["-f", "-qq", "-y", "-s", "0", "-e"])
                    .arg("trace=open,openat,creat,write,pwrite64,writev,pwritev,pwritev2,ftruncate,fallocate,fsync,fdatasync,sync_file_range,rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat,rmdir,link,linkat,close,dup,dup2,dup3")
                    .arg("-o")
                    .arg(log)
                    .arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let out = cmd.args(["save-loop", "--mode", &mode_arg, "--steps", steps, "--dir"]).arg(&root).output()?;
        ensure!(out.status.success(), "the save failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    save("3", None)?;
    let before = snapshot(&root)?;
    let log = work.path().join("strace.log");
    save("1", Some(&log))?;
    let text = std::fs::read_to_string(&log)?;
    let mut trace = parse(&text, &root, &before, &snapshot(&root)?)?;
    let dirs = trace.dirs.clone();
    trace.ops.retain(|o| match (o, mutation) {
        (Op::Sync { ino }, Mutation::NoFileSyncs) => dirs.contains(ino),
        (Op::Sync { ino }, Mutation::NoDirectorySyncs) => !dirs.contains(ino),
        _ => true,
    });
    if std::env::var_os("SAFECKPT_POWERLOSS_OPS").is_some() {
        for (i, op) in trace.ops.iter().enumerate() {
            eprintln!("{i:>4} {op:?}");
        }
    }
    run(mode, &trace, random, seed, work.path())
}

/// Every file and directory below `root` (relative names; directories end in `/`).
fn snapshot(root: &Path) -> Result<BTreeMap<String, Option<Vec<u8>>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) -> Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            let rel = p.strip_prefix(root)?.to_string_lossy().into_owned();
            if p.is_dir() {
                out.insert(format!("{rel}/"), None);
                walk(root, &p, out)?;
            } else {
                out.insert(rel, Some(std::fs::read(&p)?));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// The tree as the trace is replayed: directory inode → names, and files' parents.
struct Live {
    nodes: HashMap<Ino, Node>,
    next: Ino,
}

impl Live {
    fn lookup(&self, rel: &str) -> Option<Ino> {
        let mut at = ROOT;
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            match self.nodes.get(&at) {
                Some(Node::Dir(m)) => at = *m.get(part)?,
                _ => return None,
            }
        }
        Some(at)
    }

    fn parent_and_name(&self, rel: &str) -> Result<(Ino, String)> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let parent = self.lookup(dir).with_context(|| format!("no directory `{dir}` in the model"))?;
        Ok((parent, name.to_string()))
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut BTreeMap<String, Ino>> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(m)) => Ok(m),
            _ => bail!("inode {ino} is not a directory"),
        }
    }

    fn fresh(&mut self, node: Node) -> Ino {
        let ino = self.next;
        self.next += 1;
        self.nodes.insert(ino, node);
        ino
    }

    /// Path of every linked file, from the root.
    fn files(&self) -> BTreeMap<String, Ino> {
        fn walk(live: &HashMap<Ino, Node>, ino: Ino, prefix: &str, out: &mut BTreeMap<String, Ino>) {
            if let Some(Node::Dir(m)) = live.get(&ino) {
                for (name, child) in m {
                    let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
                    match live.get(child) {
                        Some(Node::Dir(_)) => walk(live, *child, &path, out),
                        _ => {
                            out.insert(path, *child);
                        }
                    }
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.nodes, ROOT, "", &mut out);
        out
    }
}

/// A quoted path argument, and the rest of the text after it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let start = s.find('"')?;
    let rest = &s[start + 1..];
    let end = rest.find('"')?;
    Some((rest[..end].to_string(), &rest[end + 1..]))
}

/// The path in an `-y` fd annotation such as `7</tmp/run/file>`.
fn fd_path(arg: &str) -> Option<(i64, String)> {
    let (fd, rest) = arg.trim().split_once('<')?;
    let path = rest.strip_suffix('>').unwrap_or(rest);
    Some((fd.trim().parse().ok()?, path.trim_end_matches(" (deleted)").to_string()))
}

/// Parses the trace of one save into model operations.
fn parse(
    text: &str,
    root: &Path,
    before: &BTreeMap<String, Option<Vec<u8>>>,
    after: &BTreeMap<String, Option<Vec<u8>>>,
) -> Result<Trace> {
    let root_s = root.to_string_lossy().into_owned();
    let rel = |abs: &str| -> Option<String> {
        if abs == root_s { Some(String::new()) } else { abs.strip_prefix(&format!("{root_s}/")).map(str::to_string) }
    };
    // The tree before the save.
    let mut live = Live { nodes: HashMap::from([(ROOT, Node::Dir(BTreeMap::new()))]), next: 1 };
    let mut base_bytes = HashMap::new();
    for (path, bytes) in before {
        let is_dir = path.ends_with('/');
        let (parent, name) = live.parent_and_name(path.trim_end_matches('/'))?;
        let ino = live.fresh(if is_dir { Node::Dir(BTreeMap::new()) } else { Node::File });
        live.dir_mut(parent)?.insert(name, ino);
        if let Some(b) = bytes {
            base_bytes.insert(ino, b.clone());
        }
    }
    let base = live.nodes.clone();
    // Join calls that another thread interrupted.
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut calls = Vec::new();
    for line in text.lines() {
        let Some((pid, call)) = line.split_once(' ') else { continue };
        let call = call.trim();
        if let Some(head) = call.strip_suffix("<unfinished ...>") {
            pending.insert(pid.to_string(), head.trim_end().to_string());
        } else if call.starts_with("<...") {
            let tail = call.split_once("resumed>").map_or("", |(_, t)| t);
            let head = pending.remove(pid).unwrap_or_default();
            calls.push(format!("{head}{tail}"));
        } else {
            calls.push(call.to_string());
        }
    }
    let mut ops = Vec::new();
    let mut fds: HashMap<i64, (Ino, u64)> = HashMap::new();
    for call in &calls {
        let Some((name, args)) = call.split_once('(') else { continue };
        // strace pads short calls before the result: `fsync(3</d>)        = 0`.
        let Some((args, result)) = args.rsplit_once(" = ") else { continue };
        let Some(args) = args.trim_end().strip_suffix(')') else { continue };
        let result = result.trim();
        if result.starts_with('-') || result.starts_with('?') {
            continue;
        }
        let first = args.split(", ").next().unwrap_or("");
        match name {
            "open" | "openat" | "creat" => {
                let Some((path, flags)) = quoted(args) else { continue };
                let Some((fd, _)) = fd_path(result) else { continue };
                let abs = if path.starts_with('/') {
                    path
                } else {
                    let cwd = fd_path(first).map(|(_, p)| p).unwrap_or_default();
                    format!("{cwd}/{path}")
                };
                let Some(r) = rel(&abs) else {
                    fds.remove(&fd);
                    continue;
                };
                let ino = match live.lookup(&r) {
                    Some(ino) => ino,
                    None if flags.contains("O_CREAT") || name == "creat" => {
                        let (parent, fname) = live.parent_and_name(&r)?;
                        let ino = live.fresh(Node::File);
                        live.dir_mut(parent)?.insert(fname.clone(), ino);
                        ops.push(Op::Link { parent, name: fname, ino });
                        ino
                    }
                    None => bail!("opened `{r}`, which the model does not have: {call}"),
                };
                if (flags.contains("O_TRUNC") || name == "creat") && matches!(live.nodes.get(&ino), Some(Node::File)) {
                    ops.push(Op::SetLen { ino, len: 0 });
                }
                fds.insert(fd, (ino, 0));
            }
            "close" => {
                if let Some((fd, _)) = fd_path(first) {
                    fds.remove(&fd);
                }
            }
            "dup" | "dup2" | "dup3" => {
                if let (Some((old, _)), Some((new, _))) = (fd_path(first), fd_path(result))
                    && let Some(v) = fds.get(&old).copied()
                {
                    fds.insert(new, v);
                }
            }
            "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" | "ftruncate" | "fallocate" | "fsync"
            | "fdatasync" | "sync_file_range" => {
                let Some((fd, _)) = fd_path(first) else { continue };
                let Some(&(ino, pos)) = fds.get(&fd) else { continue };
                let parts: Vec<&str> = args.rsplit(", ").collect();
                let n: u64 = result.split_whitespace().next().unwrap_or("0").parse().unwrap_or(0);
                match name {
                    "pwrite64" => {
                        let off: u64 = parts[0].trim().parse().context("pwrite64 offset")?;
                        ops.push(Op::Write { ino, off, len: n });
                    }
                    "write" => {
                        ops.push(Op::Write { ino, off: pos, len: n });
                        fds.insert(fd, (ino, pos + n));
                    }
                    "ftruncate" => {
                        let len: u64 = parts[0].trim().parse().context("ftruncate length")?;
                        ops.push(Op::SetLen { ino, len });
                    }
                    "fsync" | "fdatasync" => ops.push(Op::Sync { ino }),
                    other => bail!("`{other}` on a file of the run is not modelled: {call}"),
                }
            }
            "rename" | "renameat" | "renameat2" => {
                let (a, rest) = quoted(args).context("rename source")?;
                let (b, _) = quoted(rest).context("rename target")?;
                let absolute = |p: String, nth: usize| -> String {
                    if p.starts_with('/') {
                        p
                    } else {
                        let dirfd = args.split(", ").nth(nth).and_then(fd_path).map(|(_, d)| d).unwrap_or_default();
                        format!("{dirfd}/{p}")
                    }
                };
                let (a, b) = if name == "rename" { (a, b) } else { (absolute(a, 0), absolute(b, 2)) };
                let (Some(ra), Some(rb)) = (rel(&a), rel(&b)) else { continue };
                let (from, from_name) = live.parent_and_name(&ra)?;
                let (to, to_name) = live.parent_and_name(&rb)?;
                let ino = live.dir_mut(from)?.remove(&from_name).with_context(|| format!("renamed `{ra}`, unknown"))?;
                live.dir_mut(to)?.insert(to_name.clone(), ino);
                ops.push(Op::Rename { from, from_name, to, to_name, ino });
            }
            "unlink" | "unlinkat" | "rmdir" => {
                let (p, _) = quoted(args).context("unlink path")?;
                let abs = if p.starts_with('/') || name != "unlinkat" {
                    p
                } else {
                    format!("{}/{p}", fd_path(first).map(|(_, d)| d).unwrap_or_default())
                };
                let Some(r) = rel(&abs) else { continue };
                let (parent, fname) = live.parent_and_name(&r)?;
                live.dir_mut(parent)?.remove(&fname);
                ops.push(Op::Unlink { parent, name: fname });
            }
            "mkdir" | "mkdirat" => {
                let (p, _) = quoted(args).context("mkdir path")?;
                let abs = if p.starts_with('/') {
                    p
                } else {
                    format!("{}/{p}", fd_path(first).map(|(_, d)| d).unwrap_or_default())
                };
                let Some(r) = rel(&abs) else { continue };
                let (parent, fname) = live.parent_and_name(&r)?;
                let ino = live.fresh(Node::Dir(BTreeMap::new()));
                live.dir_mut(parent)?.insert(fname.clone(), ino);
                ops.push(Op::Link { parent, name: fname, ino });
            }
            "link" | "linkat" => bail!("hard links are not modelled: {call}"),
            _ => {}
        }
    }
    let mut final_bytes = HashMap::new();
    let mut final_files = BTreeMap::new();
    for (path, ino) in live.files() {
        let bytes = after
            .get(&path)
            .cloned()
            .flatten()
            .with_context(|| format!("`{path}` is in the replayed tree but not in the directory"))?;
        final_bytes.insert(ino, bytes.clone());
        final_files.insert(path, bytes);
    }
    let dirs = live.nodes.iter().filter(|(_, n)| matches!(n, Node::Dir(_))).map(|(i, _)| *i).collect();
    Ok(Trace { ops, dirs, base, base_bytes, final_bytes, final_files })
}

/// Which optional operations a state keeps.
#[derive(Clone, Copy, Debug)]
enum Choice {
    Nothing,
    Everything,
    NamesNotData,
    DataNotNames,
    Random,
}

/// Builds the state after `k` operations under `choice`, in `dir`.
fn build(trace: &Trace, k: usize, choice: Choice, rng: &mut Rng, dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let ops = &trace.ops[..k];
    let durable = |j: usize| -> bool {
        match &ops[j] {
            Op::SetLen { ino, .. } | Op::Write { ino, .. } => ops[j + 1..].contains(&Op::Sync { ino: *ino }),
            Op::Sync { .. } => true,
            name_op => name_op.dirs().iter().all(|d| ops[j + 1..].contains(&Op::Sync { ino: *d })),
        }
    };
    // Every inode the save created exists from the start (empty); whether it is reachable depends
    // on which names reached the disk.
    let mut nodes = trace.base.clone();
    for o in ops {
        if let Op::Link { ino, .. } | Op::Rename { ino, .. } = o {
            nodes
                .entry(*ino)
                .or_insert_with(|| if trace.dirs.contains(ino) { Node::Dir(BTreeMap::new()) } else { Node::File });
        }
    }
    let mut bytes: HashMap<Ino, Vec<u8>> = trace.base_bytes.clone();
    for (j, op) in ops.iter().enumerate() {
        let is_name = !op.dirs().is_empty();
        let keep = durable(j)
            || match choice {
                Choice::Nothing => false,
                Choice::Everything => true,
                Choice::NamesNotData => is_name,
                Choice::DataNotNames => !is_name,
                Choice::Random => rng.below(2) == 0,
            };
        let torn = !durable(j) && matches!(choice, Choice::Random);
        if !keep {
            continue;
        }
        match op {
            Op::Link { parent, name, ino } => {
                if let Some(Node::Dir(m)) = nodes.get_mut(parent) {
                    m.insert(name.clone(), *ino);
                }
            }
            Op::Rename { from, from_name, to, to_name, ino } => {
                if let Some(Node::Dir(m)) = nodes.get_mut(from)
                    && m.get(from_name) == Some(ino)
                {
                    m.remove(from_name);
                }
                if let Some(Node::Dir(m)) = nodes.get_mut(to) {
                    m.insert(to_name.clone(), *ino);
                }
            }
            Op::Unlink { parent, name } => {
                if let Some(Node::Dir(m)) = nodes.get_mut(parent) {
                    m.remove(name);
                }
            }
            Op::SetLen { ino, len } => bytes.entry(*ino).or_default().resize(*len as usize, 0),
            Op::Write { ino, off, len } => {
                let source = trace.final_bytes.get(ino);
                let data = bytes.entry(*ino).or_default();
                let (off, end) = (*off as usize, (*off + *len) as usize);
                let mut block = off;
                while block < end {
                    let stop = ((block / 4096 + 1) * 4096).min(end);
                    if !torn || rng.below(2) == 0 {
                        if data.len() < stop {
                            data.resize(stop, 0);
                        }
                        for (i, b) in data[block..stop].iter_mut().enumerate() {
                            *b = source.and_then(|s| s.get(block + i)).copied().unwrap_or(0xEE);
                        }
                    }
                    block = stop;
                }
            }
            Op::Sync { .. } => {}
        }
    }
    let live = Live { nodes, next: 0 };
    let files = live.files();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut out = BTreeMap::new();
    // Directories, including empty ones.
    fn dirs(nodes: &HashMap<Ino, Node>, ino: Ino, at: &Path) -> Result<()> {
        if let Some(Node::Dir(m)) = nodes.get(&ino) {
            for (name, child) in m {
                if let Some(Node::Dir(_)) = nodes.get(child) {
                    std::fs::create_dir_all(at.join(name))?;
                    dirs(nodes, *child, &at.join(name))?;
                }
            }
        }
        Ok(())
    }
    dirs(&live.nodes, ROOT, dir)?;
    for (path, ino) in files {
        let b = bytes.get(&ino).cloned().unwrap_or_default();
        std::fs::write(dir.join(&path), &b)?;
        out.insert(path, b);
    }
    Ok(out)
}

fn run(mode: Mode, trace: &Trace, random: usize, seed: u64, work: &Path) -> Result<PowerReport> {
    let mut rng = Rng::new(seed);
    let mut report = PowerReport { ops: trace.ops.len(), crash_points: trace.ops.len() + 1, ..Default::default() };
    let dir: PathBuf = work.join("state");
    // The model checks itself: replaying everything rebuilds what the save left.
    let all = build(trace, trace.ops.len(), Choice::Everything, &mut rng, &dir)?;
    report.replay_exact = all == trace.final_files;
    if !report.replay_exact {
        let a: Vec<&String> = all.keys().collect();
        let b: Vec<&String> = trace.final_files.keys().collect();
        report.problems.push(format!("the replay differs from the real directory: {a:?} vs {b:?}"));
    }
    let base_latest = {
        let d = work.join("base-check");
        build(trace, 0, Choice::Nothing, &mut rng, &d)?;
        let mut scratch = CrashReport::default();
        crash::check_after_kill(mode, &d, &mut scratch)?.context("no checkpoint before the traced save")?
    };
    for k in 0..=trace.ops.len() {
        let mut choices = vec![Choice::Nothing, Choice::Everything, Choice::NamesNotData, Choice::DataNotNames];
        choices.extend(std::iter::repeat_n(Choice::Random, random));
        for choice in choices {
            build(trace, k, choice, &mut rng, &dir)?;
            report.states += 1;
            let mut scratch = CrashReport::default();
            let found = crash::check_after_kill(mode, &dir, &mut scratch);
            report.older_damaged += scratch.older_damaged;
            let returned = k == trace.ops.len() && matches!(choice, Choice::Nothing);
            if returned {
                report.returned_save_durable = matches!(found, Ok(Some(s)) if s > base_latest);
            }
            match found {
                Ok(Some(step)) if step > base_latest => report.new_checkpoint += 1,
                Ok(Some(step)) if step == base_latest => {
                    report.previous_checkpoint += 1;
                    if returned {
                        report.problems.push(format!("after the save returned, power loss undid it (step {step})"));
                    }
                }
                Ok(other) => {
                    report.lost += 1;
                    report
                        .problems
                        .push(format!("after op {k} ({choice:?}): newest checkpoint {other:?}, was {base_latest}"));
                }
                Err(e) => {
                    report.lost += 1;
                    report.problems.push(format!("after op {k} ({choice:?}): {e:#}"));
                }
            }
        }
    }
    report.problems.truncate(20);
    Ok(report)
}
