//! A small, strict JSON scanner for safetensors headers and index files.
//!
//! It accepts exactly what `serde_json` accepts for the shapes of document used here (RFC 8259
//! strings with escapes and surrogate pairs, no raw control characters, integers without sign,
//! fraction or leading zeros), and reports the byte position of the first problem. It never
//! recurses deeper than [`MAX_DEPTH`] and never allocates more than the input it has seen.

use std::borrow::Cow;

use crate::error::{FormatError, Result};

/// Deepest nesting accepted when skipping unknown values (serde_json's default limit).
pub const MAX_DEPTH: usize = 128;

pub(crate) struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Cursor { text, bytes: text.as_bytes(), pos: 0 }
    }

    pub(crate) fn err<T>(&self, msg: impl Into<String>) -> Result<T> {
        Err(FormatError::HeaderJson { at: self.pos, msg: msg.into() })
    }

    fn peek_byte(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    pub(crate) fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek_byte() {
            self.pos += 1;
        }
    }

    /// Skips whitespace and returns the next byte without consuming it.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.peek_byte()
    }

    pub(crate) fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    pub(crate) fn expect(&mut self, want: u8) -> Result<()> {
        match self.peek() {
            Some(b) if b == want => {
                self.pos += 1;
                Ok(())
            }
            Some(b) => self.err(format!("expected `{}`, found `{}`", want as char, printable(b))),
            None => self.err(format!("expected `{}`, found the end of the header", want as char)),
        }
    }

    /// After an element of an object or array: `true` if another follows (a comma was consumed),
    /// `false` if the container closed with `close`.
    pub(crate) fn next_or_close(&mut self, close: u8) -> Result<bool> {
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(b) if b == close => {
                self.pos += 1;
                Ok(false)
            }
            Some(b) => self.err(format!("expected `,` or `{}`, found `{}`", close as char, printable(b))),
            None => self.err(format!("expected `,` or `{}`, found the end of the header", close as char)),
        }
    }

    /// Consumes `open` and reports whether the container is empty (its `close` came at once).
    pub(crate) fn open(&mut self, open: u8, close: u8) -> Result<bool> {
        self.expect(open)?;
        if self.peek() == Some(close) {
            self.pos += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// Parses a string; borrows from the input when it has no escapes.
    pub(crate) fn string(&mut self) -> Result<Cow<'a, str>> {
        self.expect(b'"')?;
        let start = self.pos;
        // Fast path: find the closing quote or the first escape with memchr, then check the run
        // for raw control characters (a loop the compiler vectorises).
        let rest = self.bytes.get(start..).unwrap_or_default();
        let Some(k) = memchr::memchr2(b'"', b'\\', rest) else {
            return self.err("unterminated string");
        };
        let run = rest.get(..k).unwrap_or_default();
        if let Some(bad) = run.iter().position(|&b| b < 0x20) {
            self.pos = start + bad;
            return self.err("control character in string");
        }
        self.pos = start + k;
        if rest.get(k) == Some(&b'"') {
            let s = self.slice_str(start, self.pos)?;
            self.pos += 1;
            return Ok(Cow::Borrowed(s));
        }
        let mut out = String::from(self.slice_str(start, self.pos)?);
        loop {
            match self.peek_byte() {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let esc = match self.peek_byte() {
                        Some(e) => e,
                        None => return self.err("unterminated escape"),
                    };
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let c = self.unicode_escape()?;
                            out.push(c);
                        }
                        other => {
                            return self.err(format!("invalid escape `\\{}`", printable(other)));
                        }
                    }
                }
                Some(b) if b < 0x20 => return self.err("control character in string"),
                Some(_) => {
                    let run = self.pos;
                    let rest = self.bytes.get(run..).unwrap_or_default();
                    let k = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
                    let span = rest.get(..k).unwrap_or_default();
                    let k = span.iter().position(|&b| b < 0x20).unwrap_or(k);
                    self.pos = run + k;
                    out.push_str(self.slice_str(run, self.pos)?);
                }
            }
        }
    }

    fn slice_str(&self, start: usize, end: usize) -> Result<&'a str> {
        // The cursor only stops on ASCII bytes, so these are char boundaries.
        match self.text.get(start..end) {
            Some(s) => Ok(s),
            None => self.err("invalid UTF-8 in string"),
        }
    }

    fn hex4(&mut self) -> Result<u32> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek_byte().and_then(|b| (b as char).to_digit(16)) {
                Some(d) => d,
                None => return self.err("invalid \\u escape"),
            };
            v = (v << 4) | d;
            self.pos += 1;
        }
        Ok(v)
    }

    fn unicode_escape(&mut self) -> Result<char> {
        let hi = self.hex4()?;
        if (0xDC00..0xE000).contains(&hi) {
            return self.err("lone trailing surrogate in \\u escape");
        }
        if (0xD800..0xDC00).contains(&hi) {
            if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                return self.err("lone leading surrogate in \\u escape");
            }
            self.pos += 2;
            let lo = self.hex4()?;
            if !(0xDC00..0xE000).contains(&lo) {
                return self.err("invalid low surrogate in \\u escape");
            }
            let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
            return match char::from_u32(c) {
                Some(c) => Ok(c),
                None => self.err("invalid \\u escape"),
            };
        }
        match char::from_u32(hi) {
            Some(c) => Ok(c),
            None => self.err("invalid \\u escape"),
        }
    }

    /// Parses a non-negative integer (no sign, fraction, exponent or leading zero).
    pub(crate) fn uint(&mut self) -> Result<u64> {
        self.skip_ws();
        let start = self.pos;
        let mut v: u64 = 0;
        match self.peek_byte() {
            Some(b'0') => {
                self.pos += 1;
            }
            Some(b @ b'1'..=b'9') => {
                v = u64::from(b - b'0');
                self.pos += 1;
                while let Some(b @ b'0'..=b'9') = self.peek_byte() {
                    v = match v.checked_mul(10).and_then(|v| v.checked_add(u64::from(b - b'0'))) {
                        Some(v) => v,
                        None => return self.err("integer out of range"),
                    };
                    self.pos += 1;
                }
            }
            Some(b'-') => {
                return self.err("expected a non-negative integer, found a negative number");
            }
            Some(b) => {
                return self.err(format!("expected a non-negative integer, found `{}`", printable(b)));
            }
            None => {
                return self.err("expected a non-negative integer, found the end of the header");
            }
        }
        match self.peek_byte() {
            Some(b'.' | b'e' | b'E') => {
                self.pos = start;
                self.err("expected an integer, found a floating-point number")
            }
            Some(b'0'..=b'9') => self.err("integer with a leading zero"),
            _ => Ok(v),
        }
    }

    /// Consumes `lit` if the input continues with exactly it (no whitespace skipped).
    pub(crate) fn eat(&mut self, lit: &[u8]) -> bool {
        if self.bytes.get(self.pos..self.pos + lit.len()) == Some(lit) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    /// Current byte offset.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Moves back to a position returned by [`Cursor::pos`].
    pub(crate) fn rewind(&mut self, pos: usize) {
        self.pos = pos;
    }

    /// The text up to the next `"` if it comes within `max` bytes and holds no escape or control
    /// character; the cursor then moves past the quote.
    pub(crate) fn until_quote(&mut self, max: usize) -> Option<&'a str> {
        let rest = self.bytes.get(self.pos..)?;
        let k = rest.iter().take(max).position(|&b| b == b'"')?;
        let run = rest.get(..k)?;
        if run.iter().any(|&b| b == b'\\' || b < 0x20) {
            return None;
        }
        let s = self.text.get(self.pos..self.pos + k)?;
        self.pos += k + 1;
        Some(s)
    }

    /// Whether the next token is `null` (consumed if so).
    pub(crate) fn null(&mut self) -> Result<bool> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Ok(true);
        }
        Ok(false)
    }

    fn literal(&mut self, lit: &[u8]) -> Result<()> {
        if self.bytes.get(self.pos..self.pos + lit.len()) == Some(lit) {
            self.pos += lit.len();
            Ok(())
        } else {
            self.err("invalid literal")
        }
    }

    /// Skips any JSON value, iteratively, with a depth limit.
    pub(crate) fn skip_value(&mut self, depth: usize) -> Result<()> {
        // A stack of the closers we are inside of.
        let mut stack: Vec<u8> = Vec::new();
        loop {
            // Parse one value.
            match self.peek() {
                Some(b'"') => {
                    self.string()?;
                }
                Some(b'{') => {
                    if depth + stack.len() >= MAX_DEPTH {
                        return Err(FormatError::TooDeep { at: self.pos, max: MAX_DEPTH });
                    }
                    if !self.open(b'{', b'}')? {
                        stack.push(b'}');
                        self.string()?;
                        self.expect(b':')?;
                        continue;
                    }
                }
                Some(b'[') => {
                    if depth + stack.len() >= MAX_DEPTH {
                        return Err(FormatError::TooDeep { at: self.pos, max: MAX_DEPTH });
                    }
                    if !self.open(b'[', b']')? {
                        stack.push(b']');
                        continue;
                    }
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b) => return self.err(format!("expected a value, found `{}`", printable(b))),
                None => return self.err("expected a value, found the end of the header"),
            }
            // Close finished containers, or move to the next element.
            loop {
                let Some(&close) = stack.last() else {
                    return Ok(());
                };
                if self.next_or_close(close)? {
                    if close == b'}' {
                        self.string()?;
                        self.expect(b':')?;
                    }
                    break;
                }
                stack.pop();
            }
        }
    }

    fn number(&mut self) -> Result<()> {
        if self.peek_byte() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek_byte() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return self.err("invalid number"),
        }
        if self.peek_byte() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek_byte(), Some(b'0'..=b'9')) {
                return self.err("invalid number");
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek_byte() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek_byte() {
                self.pos += 1;
            }
            if !matches!(self.peek_byte(), Some(b'0'..=b'9')) {
                return self.err("invalid number");
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek_byte() {
            self.pos += 1;
        }
    }
}

fn printable(b: u8) -> String {
    if b.is_ascii_graphic() { (b as char).to_string() } else { format!("\\x{b:02x}") }
}

/// Appends `s` as a JSON string literal, escaping exactly as `serde_json` does (so headers we
/// write are byte-identical to the reference writer's).
pub fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    escape_into(out, s);
    out.push('"');
}

/// Appends the escaped body of a JSON string literal (without the quotes).
pub fn escape_into(out: &mut String, s: &str) {
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(s.get(run..i).unwrap_or_default());
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0')));
            out.push(char::from(HEX.get(usize::from(b & 15)).copied().unwrap_or(b'0')));
        } else {
            out.push_str(esc);
        }
        run = i + 1;
    }
    out.push_str(s.get(run..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(input: &str) -> Result<String> {
        Cursor::new(input).string().map(|c| c.into_owned())
    }

    #[test]
    fn strings() {
        assert_eq!(s(r#""abc""#).unwrap(), "abc");
        assert_eq!(s(r#""a\"b\\c\/\n\u00e9\ud83d\ude00""#).unwrap(), "a\"b\\c/\né😀");
        assert!(s("\"a\u{1}\"").is_err());
        assert!(s(r#""\ud800""#).is_err());
        assert!(s(r#""\udc00""#).is_err());
        assert!(s(r#""\x""#).is_err());
        assert!(s(r#""abc"#).is_err());
    }

    #[test]
    fn integers() {
        let u = |t: &str| Cursor::new(t).uint();
        assert_eq!(u("0").unwrap(), 0);
        assert_eq!(u(" 123").unwrap(), 123);
        assert_eq!(u("18446744073709551615").unwrap(), u64::MAX);
        assert!(u("18446744073709551616").is_err());
        assert!(u("-1").is_err());
        assert!(u("01").is_err());
        assert!(u("1.0").is_err());
        assert!(u("1e3").is_err());
    }

    #[test]
    fn skip_values() {
        let mut c = Cursor::new(r#"{"a":[1,-2.5e3,{"b":null}],"c":true} x"#);
        c.skip_value(0).unwrap();
        assert_eq!(c.peek(), Some(b'x'));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(matches!(Cursor::new(&deep).skip_value(0), Err(FormatError::TooDeep { .. })));
        assert!(Cursor::new("[1,]").skip_value(0).is_err());
        assert!(Cursor::new("{\"a\" 1}").skip_value(0).is_err());
    }

    #[test]
    fn escaping_matches_serde_json() {
        for text in ["plain", "q\"b\\s", "\u{1}\u{8}\u{c}\n\r\t\u{1f}\u{7f}", "é/😀", ""] {
            let mut out = String::new();
            write_json_string(&mut out, text);
            assert_eq!(out, serde_json::to_string(text).unwrap());
        }
    }
}
