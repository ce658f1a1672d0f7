//! URLs in commands: inputs in an object store are read by ranged requests (`inspect`, `verify`)
//! or copied to a temporary directory first (commands that read everything); outputs are written
//! to a temporary directory and uploaded when complete, shards first and the index last, so
//! nothing partial ever appears at the destination.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use safeckpt_store::{Location, ObjectLocation, RemoteSet, StoreOptions, download_object, exists, upload_file};

use crate::util::{human_bytes, progress_bar};

/// Options for every store a command touches.
pub fn store_options(endpoint: Option<&str>) -> StoreOptions {
    StoreOptions { endpoint: endpoint.map(str::to_string), ..Default::default() }
}

/// Parses a command-line path or URL.
pub fn location(p: &Path, opts: &StoreOptions) -> Result<Location> {
    Ok(Location::parse(&p.to_string_lossy(), opts)?)
}

/// Parses an input: as [`location`], except that a store prefix without an extension stands for
/// the checkpoint under it, as a local directory does: a run (its ledger, handled by the caller),
/// else its one shard index, else its one safetensors file.
pub fn input_location(p: &Path, opts: &StoreOptions) -> Result<Location> {
    let loc = location(p, opts)?;
    let obj = match &loc {
        Location::Object(obj) => obj,
        Location::Local(path) => {
            // A missing input is bad input (exit 2) from every command.
            if let Err(e) = std::fs::metadata(path)
                && e.kind() == std::io::ErrorKind::NotFound
            {
                return Err(crate::util::Exit(
                    crate::util::EXIT_BAD_INPUT,
                    format!("{}: no such file or directory", path.display()),
                )
                .into());
            }
            return Ok(loc);
        }
    };
    if obj.path.extension().is_some() {
        return Ok(loc);
    }
    let names: Vec<String> = safeckpt_store::list(obj)?.into_iter().map(|(n, _)| n).collect();
    if names.is_empty() || names.iter().any(|n| n == safeckpt_candle::manager::LEDGER) {
        return Ok(loc);
    }
    match safeckpt_reader::pick_checkpoint(&names) {
        Ok(pick) => Ok(Location::Object(obj.join(pick))),
        Err(what) => bail!("{}: is a prefix {what}", obj.url()),
    }
}

/// Whether an object's name says it is a safetensors file or a shard index (read remotely by
/// ranges); other objects are copied whole.
pub fn is_safetensors_name(name: &str) -> bool {
    name.ends_with(".safetensors") || name.ends_with(".json")
}

/// An input made local: the original path, or a downloaded copy that lives as long as this.
pub struct LocalInput {
    /// The local file or index to open.
    pub path: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// Makes `p` local: a local path as is; an object (a single file, a PyTorch file, or a set by its
/// index) copied into a temporary directory by parallel ranged reads.
pub fn local_input(p: &Path, opts: &StoreOptions, quiet: bool) -> Result<LocalInput> {
    let obj = match input_location(p, opts)? {
        Location::Local(path) => return Ok(LocalInput { path, _tmp: None }),
        Location::Object(o) => o,
    };
    let tmp =
        tempfile::Builder::new().prefix("safeckpt-download-").tempdir().context("creating a temporary directory")?;
    let path = if is_safetensors_name(&obj.file_name()) {
        let set = RemoteSet::open(&obj)?;
        let total: u64 = set.shards().iter().map(|f| f.size()).sum();
        let pb = if quiet { indicatif::ProgressBar::hidden() } else { progress_bar(total, "download") };
        let local = set.download(tmp.path())?;
        pb.finish_and_clear();
        local
    } else {
        let size = safeckpt_store::size(&obj)?;
        let local = tmp.path().join(obj.file_name());
        download_object(&obj, size, &local)?;
        local
    };
    if !quiet {
        let bytes = obj.store.stats().bytes_in;
        eprintln!("downloaded {} ({})", obj.url(), human_bytes(bytes));
    }
    Ok(LocalInput { path, _tmp: Some(tmp) })
}

/// An output being written: locally in place, or in a temporary directory to upload.
pub struct Output {
    /// Where the command writes (a file, or a directory for a sharded set).
    pub path: PathBuf,
    target: Option<ObjectLocation>,
    _tmp: Option<tempfile::TempDir>,
}

/// Prepares an output. For an object, refuses an existing one unless `force`, before any work.
pub fn output(p: &Path, opts: &StoreOptions, force: bool) -> Result<Output> {
    let obj = match location(p, opts)? {
        Location::Local(path) => return Ok(Output { path, target: None, _tmp: None }),
        Location::Object(o) => o,
    };
    if !force && exists(&obj)? {
        bail!("{}: already exists (pass --force to replace it)", obj.url());
    }
    let tmp =
        tempfile::Builder::new().prefix("safeckpt-upload-").tempdir().context("creating a temporary directory")?;
    let name = if obj.file_name().is_empty() { "out".to_string() } else { obj.file_name() };
    Ok(Output { path: tmp.path().join(name), target: Some(obj), _tmp: Some(tmp) })
}

impl Output {
    /// Uploads what was written, when the destination is an object store: a file as one object;
    /// a directory's files below the prefix, every shard before the index. Returns the URL.
    pub fn publish(self, quiet: bool) -> Result<Option<String>> {
        let Some(target) = &self.target else { return Ok(None) };
        let mut files: Vec<PathBuf> = if self.path.is_dir() {
            std::fs::read_dir(&self.path)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>()?
        } else {
            vec![self.path.clone()]
        };
        // Indexes last: a reader sees the set only once every shard is there.
        files.sort_by_key(|f| (f.extension().is_some_and(|e| e == "json"), f.clone()));
        let total: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
        let pb = if quiet { indicatif::ProgressBar::hidden() } else { progress_bar(total, "upload") };
        for f in &files {
            let dest = if self.path.is_dir() {
                target.join(&f.file_name().unwrap_or_default().to_string_lossy())
            } else {
                target.clone()
            };
            upload_file(f, &dest, &|n| pb.inc(n))?;
        }
        pb.finish_and_clear();
        if !quiet {
            println!("uploaded {} ({}, {})", target.url(), crate::util::count(files.len(), "file"), human_bytes(total));
        }
        Ok(Some(target.url()))
    }
}
