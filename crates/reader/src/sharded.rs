//! Sharded sets: a HuggingFace `*.safetensors.index.json` and its shard files, seen as one
//! namespace.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use safeckpt_format::ShardIndex;
use safeckpt_format::index::MAX_INDEX_LEN;

use crate::error::{ReadError, Result};
use crate::file::{ReadOptions, Reader};
use crate::verify::VerifyReport;
use crate::view::TensorView;

/// One namespace over a sharded set (or over a single file).
///
/// Opening checks the set for consistency: every shard is a plain file name in the index's
/// directory (no `..`, no absolute paths or separators; a symbolic link is followed, as the
/// HuggingFace hub cache needs), every shard exists and is a valid file,
/// every index entry names a tensor its shard holds, and no tensor appears in two shards or in a
/// shard the index does not list it for. Each error names the tensor and the shards involved.
#[derive(Debug)]
pub struct ShardedReader {
    path: PathBuf,
    index: Option<ShardIndex>,
    shards: Vec<Reader>,
    routing: HashMap<String, usize>,
    /// Stored tensors that are pieces of split tensors.
    pieces: HashSet<String>,
}

/// The checkpoint a directory holds, as model repositories lay it out: its one shard index
/// (`*.safetensors.index.json`), otherwise its one `*.safetensors` file. Anything else is an error
/// that says what the directory holds.
pub fn resolve_dir(dir: &Path) -> Result<PathBuf> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| ReadError::io(dir, e))? {
        names.push(entry.map_err(|e| ReadError::io(dir, e))?.file_name().to_string_lossy().into_owned());
    }
    match pick_checkpoint(&names) {
        Ok(name) => Ok(dir.join(name)),
        Err(what) => Err(ReadError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::IsADirectory, format!("is a directory {what}")),
        )),
    }
}

/// Of the names in a directory (or below a store prefix), the checkpoint they hold: the one shard
/// index, else the one safetensors file (hidden names ignored). Otherwise what is there, to
/// complete "is a directory …" (e.g. "with no safetensors file or index in it").
pub fn pick_checkpoint(names: &[String]) -> std::result::Result<&str, String> {
    let visible = || names.iter().filter(|n| !n.starts_with('.'));
    let mut indexes: Vec<&String> = visible().filter(|n| n.ends_with(".safetensors.index.json")).collect();
    let mut files: Vec<&String> = visible().filter(|n| n.ends_with(".safetensors")).collect();
    indexes.sort();
    files.sort();
    Err(match (indexes.as_slice(), files.as_slice()) {
        ([one], _) | ([], [one]) => return Ok(one.as_str()),
        ([], []) => "with no safetensors file or index in it".to_string(),
        ([], many) => format!("of {} safetensors files and no index; name one ({})", many.len(), list(many)),
        (many, _) => format!("with {} shard indexes; name one ({})", many.len(), list(many)),
    })
}

fn list(names: &[&String]) -> String {
    let shown: Vec<&str> = names.iter().take(4).map(|s| s.as_str()).collect();
    if names.len() > 4 { format!("{}, ...", shown.join(", ")) } else { shown.join(", ") }
}

impl ShardedReader {
    /// Opens an index (a path ending in `.json`), a single safetensors file, or a directory
    /// holding one of them (see [`resolve_dir`]), as a model repository is laid out.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, &ReadOptions::default())
    }

    /// [`ShardedReader::open`] with options for each shard.
    pub fn open_with(path: impl AsRef<Path>, opts: &ReadOptions) -> Result<Self> {
        let resolved;
        let mut path = path.as_ref();
        if path.is_dir() {
            resolved = resolve_dir(path)?;
            path = &resolved;
        }
        if path.extension().is_some_and(|e| e == "json") {
            Self::open_index(path, opts)
        } else {
            let reader = Reader::open_with(path, opts)?;
            let routing = reader.tensors().map(|t| (t.name().to_string(), 0)).collect();
            Ok(ShardedReader {
                path: path.to_path_buf(),
                index: None,
                shards: vec![reader],
                routing,
                pieces: HashSet::new(),
            })
        }
    }

    /// One namespace over safetensors files given as a list, as `hf-hub` download helpers
    /// return a sharded model's files (and as candle's `VarBuilder::from_mmaped_safetensors`
    /// takes them). A tensor in two of the files is an error naming both; the set's path is the
    /// first file's.
    pub fn open_files<P: AsRef<Path>>(paths: &[P]) -> Result<Self> {
        let Some(first) = paths.first() else {
            return Err(ReadError::Index { index: PathBuf::new(), reason: "no files were given".into() });
        };
        let mut shards = Vec::with_capacity(paths.len());
        let mut routing: HashMap<String, usize> = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let reader = Reader::open(p.as_ref())?;
            for name in reader.tensors().map(|t| t.name()) {
                if let Some(&j) = routing.get(name) {
                    return Err(ReadError::Index {
                        index: p.as_ref().to_path_buf(),
                        reason: format!(
                            "tensor `{name}` is in both {} and {}",
                            paths[j].as_ref().display(),
                            p.as_ref().display()
                        ),
                    });
                }
                routing.insert(name.to_string(), i);
            }
            shards.push(reader);
        }
        Ok(ShardedReader { path: first.as_ref().to_path_buf(), index: None, shards, routing, pieces: HashSet::new() })
    }

    fn open_index(path: &Path, opts: &ReadOptions) -> Result<Self> {
        let err = |reason: String| ReadError::Index { index: path.to_path_buf(), reason };
        // A device or FIFO named as an index would be read without end: refused first, and the
        // read itself bounded, so a file that grows after the check cannot exceed the limit.
        let meta = crate::Reader::require_regular_file(path)?;
        if meta.len() > MAX_INDEX_LEN {
            return Err(err(format!("index is {} bytes, over the limit of {MAX_INDEX_LEN}", meta.len())));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::fs::File::open(path).map_err(|e| ReadError::io(path, e))?, MAX_INDEX_LEN + 1),
            &mut bytes,
        )
        .map_err(|e| ReadError::io(path, e))?;
        if bytes.len() as u64 > MAX_INDEX_LEN {
            return Err(err(format!("index grew past the limit of {MAX_INDEX_LEN} bytes while being read")));
        }
        let index = ShardIndex::parse(&bytes).map_err(|e| err(e.to_string()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        // An example tensor per shard, for messages.
        let mut example: HashMap<&str, &str> = HashMap::new();
        for (name, shard) in &index.weight_map {
            example.entry(shard.as_str()).or_insert(name.as_str());
        }
        let shard_names = index.shards();
        let mut shards = Vec::with_capacity(shard_names.len());
        for shard in &shard_names {
            // A plain file name (the index parser refuses anything else), opened in the index's
            // directory and followed wherever a symbolic link takes it: the HuggingFace hub cache
            // links each snapshot file to `../../blobs/<hash>`.
            let file = dir.join(shard);
            let holder = example.get(shard).copied().unwrap_or_default();
            if let Err(e) = std::fs::metadata(&file) {
                return Err(err(format!("shard `{shard}` (which holds tensor `{holder}`) cannot be opened: {e}")));
            }
            shards.push(Reader::open_with(&file, opts)?);
        }
        let position: HashMap<&str, usize> = shard_names.iter().enumerate().map(|(i, s)| (*s, i)).collect();
        let mut routing: HashMap<String, usize> = HashMap::with_capacity(index.weight_map.len());
        for (i, reader) in shards.iter().enumerate() {
            let shard = shard_names[i];
            for name in reader.tensors().map(|t| t.name()) {
                match index.weight_map.get(name) {
                    None => {
                        return Err(err(format!(
                            "tensor `{name}` is in shard `{shard}` but the index does not list it"
                        )));
                    }
                    Some(listed) if listed != shard => {
                        return Err(err(format!(
                            "tensor `{name}` is in both `{shard}` and `{listed}` (the index lists `{listed}`)"
                        )));
                    }
                    Some(_) => {
                        routing.insert(name.to_string(), i);
                    }
                }
            }
        }
        for (name, shard) in &index.weight_map {
            let i = position[shard.as_str()];
            if shards[i].get(name).is_none() {
                return Err(err(format!(
                    "the index maps tensor `{name}` to `{shard}`, but `{shard}` has no such tensor"
                )));
            }
        }
        crate::region::check_split_pieces(&index, |name| {
            let view = routing.get(name).and_then(|&i| shards[i].get(name))?;
            Some((view.dtype(), view.shape().to_vec()))
        })
        .map_err(err)?;
        let pieces = index.split_tensors.values().flat_map(|s| s.pieces.iter().map(|p| p.tensor.clone())).collect();
        Ok(ShardedReader { path: path.to_path_buf(), index: Some(index), shards, routing, pieces })
    }

    /// The index or file path this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The index, when opened from one.
    pub fn index(&self) -> Option<&ShardIndex> {
        self.index.as_ref()
    }

    pub(crate) fn pieces(&self) -> &HashSet<String> {
        &self.pieces
    }

    /// The shard readers (a single one for a plain file).
    pub fn shards(&self) -> &[Reader] {
        &self.shards
    }

    /// Number of tensors across all shards.
    pub fn len(&self) -> usize {
        self.routing.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.routing.is_empty()
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        self.routing.get(name).and_then(|&i| self.shards[i].get(name))
    }

    /// The tensor called `name`, or an error naming the set and the tensor.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        self.get(name).ok_or_else(|| ReadError::TensorNotFound { path: self.path.clone(), name: name.to_string() })
    }

    /// The shard holding `name`.
    pub fn shard_of(&self, name: &str) -> Option<&Reader> {
        self.routing.get(name).map(|&i| &self.shards[i])
    }

    /// All names, sorted bytewise.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.routing.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Every tensor, shard by shard in file order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'_>> + '_ {
        self.shards.iter().flat_map(|s| s.tensors())
    }

    /// Total bytes of tensor data.
    pub fn data_len(&self) -> u64 {
        self.shards.iter().map(|s| s.header().data_len() as u64).sum()
    }

    /// Verifies every shard.
    pub fn verify(&self) -> Result<Vec<VerifyReport>> {
        self.verify_with_progress(&|_| {})
    }

    /// [`ShardedReader::verify`] with a progress callback (bytes hashed since the last call).
    pub fn verify_with_progress(&self, progress: &(dyn Fn(u64) + Sync)) -> Result<Vec<VerifyReport>> {
        self.shards.iter().map(|s| s.verify_with_progress(progress)).collect()
    }
}
