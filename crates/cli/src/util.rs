//! Small helpers shared by the commands: sizes, numbers, progress bars, exit codes.

use std::cmp::Ordering;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use safeckpt_reader::ReadError;
use safeckpt_writer::WriteError;

/// Exit status for success.
pub const EXIT_OK: i32 = 0;
/// Exit status for a failure (a checksum mismatch, an I/O error while writing).
pub const EXIT_FAILURE: i32 = 1;
/// Exit status for bad or refused input (a malformed or unsafe file, a bad argument).
pub const EXIT_BAD_INPUT: i32 = 2;

/// An error that carries its own exit status.
#[derive(Debug)]
pub struct Exit(pub i32, pub String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

/// Refuses a local input that is neither a regular file nor a directory (symbolic links
/// followed), before anything opens it: a device such as `/dev/zero` would be read until memory
/// runs out, and opening a FIFO blocks. Exit status 2. A path that does not exist passes, for the
/// command to report as it always has.
pub fn require_file_or_dir(path: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !(m.is_file() || m.is_dir()) => {
            Err(Exit(EXIT_BAD_INPUT, format!("{}: not a regular file (a device, FIFO or directory)", path.display()))
                .into())
        }
        _ => Ok(()),
    }
}

/// The exit status for an error: 2 for bad input, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(Exit(code, _)) = cause.downcast_ref::<Exit>() {
            return *code;
        }
        if cause.downcast_ref::<ReadError>().is_some() {
            return EXIT_BAD_INPUT;
        }
        if let Some(e) = cause.downcast_ref::<WriteError>() {
            return match e {
                WriteError::Io { .. } => EXIT_FAILURE,
                _ => EXIT_BAD_INPUT,
            };
        }
        if let Some(e) = cause.downcast_ref::<safeckpt_store::StoreError>() {
            return match e {
                safeckpt_store::StoreError::Write(WriteError::Io { .. }) => EXIT_FAILURE,
                safeckpt_store::StoreError::Write(_) => EXIT_BAD_INPUT,
                e if e.is_bad_input() => EXIT_BAD_INPUT,
                _ => EXIT_FAILURE,
            };
        }
    }
    EXIT_FAILURE
}

/// `1.5 KiB`, `902.8 KiB`, `1.04 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v >= 100.0 { format!("{v:.0} {}", UNITS[unit]) } else { format!("{v:.1} {}", UNITS[unit]) }
}

/// `n` things, with the word in the right number: `1 tensor`, `2 tensors`, `1,024 tensors`.
/// `one` is the singular; the plural adds `s`, or is given after a `|` (`alias|aliases`).
pub fn count(n: impl TryInto<u64>, one: &str) -> String {
    let n: u64 = n.try_into().unwrap_or(u64::MAX);
    let (singular, plural) = match one.split_once('|') {
        Some((s, p)) => (s.to_string(), p.to_string()),
        None => (one.to_string(), format!("{one}s")),
    };
    format!("{} {}", thousands(n), if n == 1 { singular } else { plural })
}

/// `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1.23 s`, `45.6 ms`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 { format!("{s:.2} s") } else { format!("{:.1} ms", s * 1000.0) }
}

/// A byte progress bar on stderr when it is a terminal; hidden otherwise.
pub fn progress_bar(total: u64, message: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    // `wide_bar` takes the width the rest leaves, so the line fits the terminal (80 columns
    // included); sizes are printed as everywhere else in the CLI (`human_bytes`).
    let size = |f: fn(&indicatif::ProgressState) -> u64| {
        move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&human_bytes(f(s)));
        }
    };
    pb.set_style(
        ProgressStyle::with_template("{msg:>9} [{wide_bar}] {done}/{size} {rate}/s {eta}")
            .map(|st| {
                st.with_key("done", size(|s| s.pos()))
                    .with_key("size", size(|s| s.len().unwrap_or(0)))
                    .with_key("rate", size(|s| s.per_sec() as u64))
            })
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(message.to_string());
    pb
}

/// Orders names so that `layers.2` comes before `layers.10`.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let nx = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let ny = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (dx, dy) = (&x[..nx], &y[..ny]);
                let tx = dx.iter().skip_while(|&&c| c == b'0').count();
                let ty = dy.iter().skip_while(|&&c| c == b'0').count();
                let ord = tx.cmp(&ty).then_with(|| dx[nx - tx..].cmp(&dy[ny - ty..]));
                if ord != Ordering::Equal {
                    return ord;
                }
                x = &x[nx..];
                y = &y[ny..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

/// Text from a file (names, metadata, messages quoting them) made safe to print on a terminal:
/// control characters (which could carry terminal escape sequences) and bidirectional-text
/// overrides (which could reorder what is shown) are written as `\u{..}` escapes. With
/// `keep_lines`, newlines and tabs stay (for whole reports); without, they are escaped too (for a
/// single field, so that a name cannot forge lines of a report).
pub fn printable(s: &str, keep_lines: bool) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        (c.is_control() && !(keep_lines && (c == '\n' || c == '\t')))
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
    };
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A short name for what kind of error this is, for `--json` output: `not_found`, `bad_input`
/// (a malformed, refused or unsafe file, a bad argument), `exists` (an output that needs
/// `--force`), `checksum` or `io`.
pub fn error_kind(err: &anyhow::Error) -> &'static str {
    for cause in err.chain() {
        if let Some(Exit(_, msg)) = cause.downcast_ref::<Exit>()
            && msg.ends_with("no such file or directory")
        {
            return "not_found";
        }
        if let Some(WriteError::Exists { .. }) = cause.downcast_ref::<WriteError>() {
            return "exists";
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>()
            && e.kind() == std::io::ErrorKind::NotFound
        {
            return "not_found";
        }
    }
    if error_text(err).contains("already exists") {
        return "exists";
    }
    if exit_code(err) == EXIT_BAD_INPUT { "bad_input" } else { "io" }
}

/// The JSON document a `--json` command prints when it fails (with the same exit status as
/// without `--json`).
pub fn error_json(err: &anyhow::Error) -> String {
    let doc = serde_json::json!({"ok": false, "error": {"kind": error_kind(err), "message": error_text(err)}});
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// An error and its causes on one line, each cause once: the library errors already include
/// their cause in their own message, so a cause whose text is already there is not repeated.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    // The libraries name their own option; on the command line it is a flag.
    out.replace("(`WriteOptions::overwrite(true)` replaces it)", "(pass --force to replace it)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1_115_684_864), "1.0 GiB");
        assert_eq!(human_bytes(300 << 20), "300 MiB");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
        let mut v = vec!["h.10.w", "h.2.w", "h.2.b", "a"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["a", "h.2.b", "h.2.w", "h.10.w"]);
    }

    #[test]
    fn terminal_escapes_from_files_are_neutralised() {
        let hostile = "w\x1b]0;pwned\x07\u{202e}gnp.exe\nfake line\tx";
        assert_eq!(printable(hostile, false), "w\\u{1b}]0;pwned\\u{7}\\u{202e}gnp.exe\\u{a}fake line\\u{9}x");
        assert_eq!(printable(hostile, true), "w\\u{1b}]0;pwned\\u{7}\\u{202e}gnp.exe\nfake line\tx");
        assert!(matches!(printable("model.layers.0.weight", false), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn each_cause_appears_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = anyhow::Error::new(safeckpt_reader::ReadError::Io { path: "/m.safetensors".into(), source: io })
            .context("opening the model");
        assert_eq!(error_text(&e), "opening the model: /m.safetensors: No such file or directory (os error 2)");
    }
}
