//! A pickle virtual machine that can only build data.
//!
//! It implements every opcode of protocols 0 to 5. Globals are resolved against the allow-list in
//! [`crate::globals`]; everything else is refused by name before anything else happens. No opcode
//! ever imports, looks up or calls anything: REDUCE, NEWOBJ, INST, OBJ and BUILD are interpreted
//! here for the few allow-listed callables (tensor rebuilds, `OrderedDict`, `set`, `torch.Size`,
//! `_codecs.encode`, …) and refused for everything else. Extension codes (EXT1/2/4), text
//! persistent ids and out-of-band buffers are refused.
//!
//! Resources are bounded: every length is checked against the bytes present before anything is
//! allocated; the number of values built (every container slot, including the ones an
//! allow-listed call copies), the bytes of text and binary data built (including copies made by
//! `_codecs.encode` and `bytearray`), the memo and the stack are capped; containers are shared
//! through the memo by reference, so a "memo bomb" stays linear in memory; nested rebuild calls
//! are unwound in a loop with a depth cap, never by recursion.

use std::collections::HashMap;
use std::sync::Arc as Rc;

use crate::globals::{Global, TorchDtype, Unsupported, refusal_hint, resolve};
use crate::value::{Arena, DictKind, Obj, TensorDef, Value};

/// Resource limits for one unpickling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most values (container elements included) built in total.
    pub max_values: usize,
    /// Most memo entries.
    pub max_memo: usize,
    /// Deepest nesting of MARKs.
    pub max_marks: usize,
    /// Most dimensions of a tensor.
    pub max_rank: usize,
    /// Most bytes of strings and bytes that allow-listed calls build by copying (`_codecs.encode`,
    /// `bytearray`); what the pickle spells out itself is bounded by its length. Importers use
    /// [`Limits::for_pickle`], which scales this with the pickle's size.
    pub max_bytes: usize,
}

/// Deepest nesting of `_rebuild_from_type_v2` around a tensor rebuild (torch writes one level).
pub const MAX_REBUILD_NESTING: usize = 8;
/// Longest decimal integer accepted in a protocol 0 `INT`/`LONG` (Python's own limit on
/// converting text to `int`).
pub const MAX_DECIMAL_DIGITS: usize = 4300;

impl Default for Limits {
    fn default() -> Self {
        Limits { max_values: 20_000_000, max_memo: 10_000_000, max_marks: 100_000, max_rank: 64, max_bytes: 16 << 20 }
    }
}

impl Limits {
    /// The limits for a pickle of `len` bytes. Every value a real pickle builds costs at least one
    /// opcode byte and is charged at most about twice (on the stack, then in its container), so
    /// values are capped at four per byte, at least 1 M and at most the default 20 M; copies made
    /// by calls may come to twice the pickle plus 16 MiB (a real file encodes each byte string
    /// once). A 1.5 KB pickle copying a shared list over and over is then refused after about
    /// 1 M slots (tens of MiB), not 20 M.
    pub fn for_pickle(len: usize) -> Limits {
        let d = Limits::default();
        Limits {
            max_values: len.saturating_mul(4).clamp(1_000_000, d.max_values),
            max_bytes: len.saturating_mul(2).saturating_add(16 << 20),
            ..d
        }
    }
}

/// What went wrong while unpickling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PickleError {
    /// A global outside the allow-list.
    #[error("refused to load `{module}.{name}`: {hint}")]
    RefusedGlobal {
        /// Module.
        module: String,
        /// Attribute.
        name: String,
        /// Why, and what to do instead.
        hint: &'static str,
    },
    /// A tensor kind safetensors cannot hold.
    #[error("the file contains {0}")]
    UnsupportedTensor(String),
    /// An opcode or construct this reader refuses (extension registry, out-of-band buffers, …).
    #[error("pickle byte {at}: {what}")]
    Refused {
        /// Byte offset in the pickle.
        at: usize,
        /// What was refused and why.
        what: String,
    },
    /// The pickle is malformed.
    #[error("pickle byte {at}: {what}")]
    Malformed {
        /// Byte offset in the pickle.
        at: usize,
        /// What is wrong.
        what: String,
    },
    /// A resource limit was hit.
    #[error("pickle byte {at}: limit exceeded: {what}")]
    Limit {
        /// Byte offset in the pickle.
        at: usize,
        /// Which limit.
        what: String,
    },
    /// The persistent-id resolver refused an id.
    #[error("pickle byte {at}: {what}")]
    Storage {
        /// Byte offset in the pickle.
        at: usize,
        /// What is wrong with the storage reference.
        what: String,
    },
}

type Result<T> = std::result::Result<T, PickleError>;

/// What the VM needs from the container format.
pub trait StorageResolver {
    /// Resolves a persistent id (`('storage', type, key, location, numel)`) to a storage index.
    fn persistent_load(&mut self, pid: &Value, arena: &Arena) -> std::result::Result<u32, String>;
    /// The size of a storage in bytes.
    fn storage_bytes(&self, storage: u32) -> u64;
    /// The element type the storage was saved with (`UInt8` for untyped storages).
    fn storage_dtype(&self, storage: u32) -> TorchDtype;
}

struct Vm<'a, 'r> {
    data: &'a [u8],
    pos: usize,
    op_at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    arena: &'r mut Arena,
    resolver: &'r mut dyn StorageResolver,
    limits: Limits,
    values: usize,
    bytes: usize,
}

/// Unpickles one pickle from the start of `data`; returns the value and the bytes consumed.
pub fn unpickle(
    data: &[u8],
    arena: &mut Arena,
    resolver: &mut dyn StorageResolver,
    limits: Limits,
) -> Result<(Value, usize)> {
    let mut vm = Vm {
        data,
        pos: 0,
        op_at: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        arena,
        resolver,
        limits,
        values: 0,
        bytes: 0,
    };
    let v = vm.run()?;
    Ok((v, vm.pos))
}

impl Vm<'_, '_> {
    fn malformed<T>(&self, what: impl Into<String>) -> Result<T> {
        Err(PickleError::Malformed { at: self.op_at, what: what.into() })
    }

    fn refused<T>(&self, what: impl Into<String>) -> Result<T> {
        Err(PickleError::Refused { at: self.op_at, what: what.into() })
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(e) => {
                let s = &self.data[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => self.malformed(format!("needs {n} more bytes but the pickle ends (truncated file?)")),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len64(&mut self) -> Result<usize> {
        let n = self.u64()?;
        usize::try_from(n).or_else(|_| self.malformed(format!("length {n} is too large")))
    }

    /// A `\n`-terminated line (protocol 0 arguments), without the newline.
    fn line(&mut self) -> Result<&[u8]> {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(k) => {
                self.pos += k + 1;
                Ok(&rest[..k])
            }
            None => self.malformed("unterminated text argument"),
        }
    }

    fn line_str(&mut self) -> Result<String> {
        let l = self.line()?.to_vec();
        String::from_utf8(l).or_else(|_| self.malformed("text argument is not UTF-8"))
    }

    fn count(&mut self, n: usize) -> Result<()> {
        self.values = self.values.saturating_add(n);
        if self.values > self.limits.max_values {
            return Err(PickleError::Limit {
                at: self.op_at,
                what: format!("more than {} values", self.limits.max_values),
            });
        }
        Ok(())
    }

    /// Charges `n` bytes of built text or binary data to the budget, before they are allocated.
    fn charge_bytes(&mut self, n: usize) -> Result<()> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.limits.max_bytes {
            return Err(PickleError::Limit {
                at: self.op_at,
                what: format!("more than {} bytes of strings and bytes built", self.limits.max_bytes),
            });
        }
        Ok(())
    }

    fn push(&mut self, v: Value) -> Result<()> {
        self.count(1)?;
        self.stack.push(v);
        Ok(())
    }

    fn new_obj(&mut self, o: Obj) -> Result<Value> {
        self.count(1)?;
        Ok(self.arena.push(o))
    }

    fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.malformed("stack underflow");
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    fn top(&self) -> Result<&Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.malformed("stack underflow");
        }
        Ok(self.stack.last().expect("checked above"))
    }

    /// Pops everything down to the last MARK (and the mark).
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let Some(m) = self.marks.pop() else { return self.malformed("no MARK on the stack") };
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let v = self.top()?.clone();
        if self.memo.len() >= self.limits.max_memo && !self.memo.contains_key(&idx) {
            return Err(PickleError::Limit {
                at: self.op_at,
                what: format!("more than {} memo entries", self.limits.max_memo),
            });
        }
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<()> {
        match self.memo.get(&idx) {
            // Containers are references: a GET shares, it never copies.
            Some(v) => {
                let v = v.clone();
                self.push(v)
            }
            None => self.malformed(format!("memo entry {idx} was never stored")),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<Value> {
        match resolve(module, name) {
            Some(g) => Ok(Value::Global(g)),
            None => Err(PickleError::RefusedGlobal {
                module: module.to_string(),
                name: name.to_string(),
                hint: refusal_hint(module, name),
            }),
        }
    }

    fn append(&mut self, target: &Value, items: Vec<Value>) -> Result<()> {
        self.count(items.len())?;
        match self.arena.get_mut(target) {
            Some(Obj::List(v)) | Some(Obj::Set(v)) => {
                v.extend(items);
                Ok(())
            }
            _ => self.refused("APPEND to something that is not a list (that would call its `append` method)"),
        }
    }

    fn set_items(&mut self, target: &Value, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return self.malformed("SETITEMS with an odd number of items");
        }
        self.count(items.len())?;
        match self.arena.get_mut(target) {
            Some(Obj::Dict(_, entries)) => {
                // Pairs are kept in order; a repeated key is resolved (last wins) when the tree
                // is flattened, which keeps this linear on hostile input.
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    entries.push((k, v));
                }
                Ok(())
            }
            _ => self.refused("SETITEM on something that is not a dict (that would call its `__setitem__`)"),
        }
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_at = self.pos;
            let op = self.u8()?;
            match op {
                // --- protocol framing
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return self.malformed(format!("unsupported pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    // FRAME: the frame length only helps streaming readers; check and go on.
                    let n = self.len64()?;
                    if n > self.data.len() - self.pos {
                        return self.malformed("FRAME longer than the pickle");
                    }
                }
                b'.' => {
                    let v = self.pop()?;
                    if !self.marks.is_empty() {
                        return self.malformed("STOP with an unclosed MARK");
                    }
                    return Ok(v);
                }
                // --- stack manipulation
                b'(' => {
                    if self.marks.len() >= self.limits.max_marks {
                        return Err(PickleError::Limit { at: self.op_at, what: "MARKs nested too deeply".into() });
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    // POP: a lone MARK can be popped too.
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                // --- memo
                b'p' => {
                    let l = self.line_str()?;
                    let idx = l.trim().parse::<u32>().or_else(|_| self.malformed("bad PUT index"))?;
                    self.memo_put(idx)?;
                }
                b'q' => {
                    let idx = u32::from(self.u8()?);
                    self.memo_put(idx)?;
                }
                b'r' => {
                    let idx = self.u32()?;
                    self.memo_put(idx)?;
                }
                0x94 => {
                    let idx = u32::try_from(self.memo.len()).or_else(|_| self.malformed("memo too large"))?;
                    self.memo_put(idx)?;
                }
                b'g' => {
                    let l = self.line_str()?;
                    let idx = l.trim().parse::<u32>().or_else(|_| self.malformed("bad GET index"))?;
                    self.memo_get(idx)?;
                }
                b'h' => {
                    let idx = u32::from(self.u8()?);
                    self.memo_get(idx)?;
                }
                b'j' => {
                    let idx = self.u32()?;
                    self.memo_get(idx)?;
                }
                // --- constants
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                // --- integers
                b'I' => {
                    let l = self.line_str()?;
                    let v = match l.as_str() {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        s => parse_decimal_int(s)
                            .ok_or_else(|| PickleError::Malformed { at: self.op_at, what: bad_decimal("INT", s) })?,
                    };
                    self.push(v)?;
                }
                b'J' => {
                    let b = self.take(4)?;
                    let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'L' => {
                    let l = self.line_str()?;
                    let digits = l.trim_end_matches('L');
                    let v = parse_decimal_int(digits)
                        .ok_or_else(|| PickleError::Malformed { at: self.op_at, what: bad_decimal("LONG", digits) })?;
                    self.push(v)?;
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let b = self.take(n)?.to_vec();
                    self.push(long_value(&b))?;
                }
                0x8b => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(long_value(&b))?;
                }
                // --- floats
                b'F' => {
                    let l = self.line_str()?;
                    let v = l.trim().parse::<f64>().or_else(|_| self.malformed("bad FLOAT"))?;
                    self.push(Value::Float(v))?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)))?;
                }
                // --- strings and bytes
                b'S' => {
                    let l = self.line()?.to_vec();
                    let s = unquote_python_str(&l)
                        .ok_or_else(|| PickleError::Malformed { at: self.op_at, what: "bad STRING".into() })?;
                    self.push(Value::Str(Rc::from(String::from_utf8_lossy(&s).as_ref())))?;
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Str(Rc::from(String::from_utf8_lossy(&b).as_ref())))?;
                }
                b'U' => {
                    let n = usize::from(self.u8()?);
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Str(Rc::from(String::from_utf8_lossy(&b).as_ref())))?;
                }
                b'V' => {
                    let l = self.line()?.to_vec();
                    let s = raw_unicode_escape(&l)
                        .ok_or_else(|| PickleError::Malformed { at: self.op_at, what: "bad UNICODE".into() })?;
                    self.push(Value::Str(Rc::from(s.as_str())))?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.utf8(n)?;
                    self.push(s)?;
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let s = self.utf8(n)?;
                    self.push(s)?;
                }
                0x8d => {
                    let n = self.len64()?;
                    let s = self.utf8(n)?;
                    self.push(s)?;
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    let v = Value::Bytes(Rc::from(b));
                    self.push(v)?;
                }
                b'C' => {
                    let n = usize::from(self.u8()?);
                    let b = self.take(n)?;
                    let v = Value::Bytes(Rc::from(b));
                    self.push(v)?;
                }
                0x8e | 0x96 => {
                    let n = self.len64()?;
                    let b = self.take(n)?;
                    let v = Value::Bytes(Rc::from(b));
                    self.push(v)?;
                }
                0x97 | 0x98 => return self.refused("out-of-band buffers (protocol 5) are not supported"),
                // --- containers
                b']' => {
                    let v = self.new_obj(Obj::List(Vec::new()))?;
                    self.push(v)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::List(items))?;
                    self.push(v)?;
                }
                b')' => {
                    let v = self.new_obj(Obj::Tuple(Vec::new()))?;
                    self.push(v)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::Tuple(items))?;
                    self.push(v)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return self.malformed("stack underflow");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    let v = self.new_obj(Obj::Tuple(items))?;
                    self.push(v)?;
                }
                b'}' => {
                    let v = self.new_obj(Obj::Dict(DictKind::Dict, Vec::new()))?;
                    self.push(v)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = self.new_obj(Obj::Dict(DictKind::Dict, Vec::new()))?;
                    self.set_items(&d, items)?;
                    self.push(d)?;
                }
                0x8f => {
                    let v = self.new_obj(Obj::Set(Vec::new()))?;
                    self.push(v)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::Set(items))?;
                    self.push(v)?;
                }
                b'a' => {
                    let item = self.pop()?;
                    let target = self.top()?.clone();
                    self.append(&target, vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.append(&target, items)?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.count(items.len())?;
                    match self.arena.get_mut(&target) {
                        Some(Obj::Set(v)) => v.extend(items),
                        _ => return self.refused("ADDITEMS to something that is not a set"),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, items)?;
                }
                // --- globals and calls
                b'c' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    let g = self.global(&module, &name)?;
                    self.push(g)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(m), Value::Str(n)) = (&module, &name) else {
                        return self.malformed("STACK_GLOBAL needs two strings");
                    };
                    let g = self.global(m, n)?;
                    self.push(g)?;
                }
                b'i' => {
                    let module = self.line_str()?;
                    let name = self.line_str()?;
                    let g = self.global(&module, &name)?;
                    let args = self.pop_mark()?;
                    let v = self.call(&g, args)?;
                    self.push(v)?;
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return self.malformed("OBJ without a class");
                    }
                    let class = items.remove(0);
                    let v = self.call(&class, items)?;
                    self.push(v)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = self.tuple_items(&args, "REDUCE arguments")?;
                    let v = self.call(&callable, args)?;
                    self.push(v)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let args = self.tuple_items(&args, "NEWOBJ arguments")?;
                    let v = self.new_instance(&class, args)?;
                    self.push(v)?;
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    if !matches!(self.arena.get(&kwargs), Some(Obj::Dict(_, e)) if e.is_empty()) {
                        return self.refused("NEWOBJ_EX with keyword arguments");
                    }
                    let args = self.tuple_items(&args, "NEWOBJ_EX arguments")?;
                    let v = self.new_instance(&class, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?.clone();
                    self.build(&target, &state)?;
                }
                0x82..=0x84 => {
                    let code = match op {
                        0x82 => u32::from(self.u8()?),
                        0x83 => u32::from(self.u16()?),
                        _ => self.u32()?,
                    };
                    return self.refused(format!(
                        "extension registry code {code} (EXT opcodes name arbitrary callables through copyreg; refused)"
                    ));
                }
                // --- persistent ids
                b'P' => {
                    let l = String::from_utf8_lossy(self.line()?).into_owned();
                    return self.refused(format!("text persistent id `{l}` (torch uses binary ids only)"));
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let at = self.op_at;
                    let idx = self
                        .resolver
                        .persistent_load(&pid, self.arena)
                        .map_err(|what| PickleError::Storage { at, what })?;
                    self.push(Value::Storage(idx))?;
                }
                other => return self.malformed(format!("unknown opcode 0x{other:02x}")),
            }
        }
    }

    fn utf8(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Value::Str(Rc::from(s))),
            // Python writes lone surrogates with `surrogatepass`; keep the text readable.
            Err(_) => Ok(Value::Str(Rc::from(String::from_utf8_lossy(b).as_ref()))),
        }
    }

    /// A copy of a tuple's items (call arguments), charged to the value budget before it is made.
    fn tuple_items(&mut self, v: &Value, what: &str) -> Result<Vec<Value>> {
        let n = match self.arena.get(v) {
            Some(Obj::Tuple(items)) => items.len(),
            _ => return self.malformed(format!("{what} are not a tuple")),
        };
        self.count(n)?;
        match self.arena.get(v) {
            Some(Obj::Tuple(items)) => Ok(items.clone()),
            _ => self.malformed(format!("{what} are not a tuple")),
        }
    }

    fn int_arg(&self, v: &Value, what: &str) -> Result<i64> {
        match v {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(i64::from(*b)),
            _ => self.malformed(format!("{what} is not an integer")),
        }
    }

    fn usize_list(&self, v: &Value, what: &str) -> Result<Vec<usize>> {
        let items = match self.arena.get(v) {
            Some(Obj::Tuple(items)) | Some(Obj::List(items)) => items,
            _ => return self.malformed(format!("{what} is not a tuple")),
        };
        if items.len() > self.limits.max_rank {
            return Err(PickleError::Limit { at: self.op_at, what: format!("{what} has {} dimensions", items.len()) });
        }
        items
            .iter()
            .map(|x| {
                let i = self.int_arg(x, what)?;
                usize::try_from(i).or_else(|_| self.malformed(format!("{what} has a negative entry {i}")))
            })
            .collect()
    }

    /// Interprets a call of an allow-listed global.
    fn call(&mut self, callable: &Value, args: Vec<Value>) -> Result<Value> {
        let Value::Global(g) = callable else {
            return self.refused("call of something that is not an allow-listed global");
        };
        match *g {
            Global::OrderedDict | Global::Dict => {
                let kind = if *g == Global::OrderedDict { DictKind::Ordered } else { DictKind::Dict };
                let d = self.new_obj(Obj::Dict(kind, Vec::new()))?;
                match args.as_slice() {
                    [] => {}
                    [items] => {
                        // Every pair is copied: charge them before anything is allocated, so a
                        // memo-shared list passed to `OrderedDict` over and over stays bounded.
                        let n = match self.arena.get(items) {
                            Some(Obj::List(v)) | Some(Obj::Tuple(v)) => v.len(),
                            Some(Obj::Dict(_, e)) => e.len(),
                            _ => return self.malformed("dict() argument is not a sequence of pairs"),
                        };
                        self.count(n.saturating_mul(2))?;
                        let mut flat = Vec::with_capacity(n.saturating_mul(2));
                        match self.arena.get(items) {
                            Some(Obj::List(v)) | Some(Obj::Tuple(v)) => {
                                for p in v {
                                    match self.arena.get(p) {
                                        Some(Obj::Tuple(kv)) | Some(Obj::List(kv)) if kv.len() == 2 => {
                                            flat.extend(kv.iter().cloned())
                                        }
                                        _ => return self.malformed("dict() item is not a pair"),
                                    }
                                }
                            }
                            Some(Obj::Dict(_, e)) => flat.extend(e.iter().flat_map(|(k, v)| [k.clone(), v.clone()])),
                            _ => {}
                        }
                        self.set_items(&d, flat)?;
                    }
                    _ => return self.malformed("dict() with more than one argument"),
                }
                Ok(d)
            }
            Global::List | Global::Set | Global::FrozenSet => {
                let n = match args.as_slice() {
                    [] => 0,
                    [x] => match self.arena.get(x) {
                        Some(Obj::List(v)) | Some(Obj::Tuple(v)) | Some(Obj::Set(v)) => v.len(),
                        _ => return self.malformed("set()/list() argument is not a sequence"),
                    },
                    _ => return self.malformed("set()/list() with more than one argument"),
                };
                // The items are copied: charged before the copy is made.
                self.count(n)?;
                let items = match args.first().and_then(|x| self.arena.get(x)) {
                    Some(Obj::List(v)) | Some(Obj::Tuple(v)) | Some(Obj::Set(v)) => v.clone(),
                    _ => Vec::new(),
                };
                let o = if *g == Global::List { Obj::List(items) } else { Obj::Set(items) };
                self.new_obj(o)
            }
            Global::Complex => {
                let f = |v: Option<&Value>| match v {
                    None => Some(0.0),
                    Some(Value::Float(x)) => Some(*x),
                    Some(Value::Int(i)) => Some(*i as f64),
                    _ => None,
                };
                match (f(args.first()), f(args.get(1))) {
                    (Some(re), Some(im)) if args.len() <= 2 => Ok(Value::Complex(re, im)),
                    _ => self.malformed("complex() arguments are not numbers"),
                }
            }
            Global::ByteArray => match args.as_slice() {
                [] => Ok(Value::Bytes(Rc::from(&[][..]))),
                [Value::Bytes(b)] => Ok(Value::Bytes(b.clone())),
                [Value::Str(s), Value::Str(enc)] => self.encode(s, enc),
                _ => self.malformed("bytearray() arguments"),
            },
            Global::CodecsEncode => match args.as_slice() {
                [Value::Str(s), Value::Str(enc)] => self.encode(s, enc),
                [Value::Str(s)] => {
                    self.charge_bytes(s.len())?;
                    Ok(Value::Bytes(Rc::from(s.as_bytes())))
                }
                _ => self.malformed("_codecs.encode arguments"),
            },
            Global::TorchSize => match args.as_slice() {
                [] => self.new_obj(Obj::Tuple(Vec::new())),
                [x] => {
                    let dims = self.usize_list(x, "torch.Size")?;
                    let items = dims.into_iter().map(|d| Value::Int(d as i64)).collect();
                    self.new_obj(Obj::Tuple(items))
                }
                _ => self.malformed("torch.Size arguments"),
            },
            Global::TorchDevice => match args.as_slice() {
                [Value::Str(s)] => Ok(Value::Str(s.clone())),
                [Value::Str(s), Value::Int(i)] => Ok(Value::Str(Rc::from(format!("{s}:{i}").as_str()))),
                _ => self.malformed("torch.device arguments"),
            },
            Global::RebuildTensor | Global::RebuildTensorV2 | Global::RebuildTensorV3 => self.rebuild_tensor(*g, &args),
            Global::RebuildParameter | Global::RebuildParameterWithState => match args.first() {
                Some(t) if matches!(self.arena.get(t), Some(Obj::Tensor(_))) => Ok(t.clone()),
                _ => self.malformed("_rebuild_parameter without a tensor"),
            },
            Global::RebuildDeviceFromCpu => match args.first() {
                Some(t) if matches!(self.arena.get(t), Some(Obj::Tensor(_))) => Ok(t.clone()),
                _ => self.malformed("_rebuild_device_tensor_from_cpu_tensor without a tensor"),
            },
            Global::RebuildFromTypeV2 => {
                // (func, new_type, args, state): func(*args), tagged with a tensor class. Nested
                // wrappers are unwound here, in a loop, so no input can recurse without end.
                let mut args = args;
                let mut nesting = 0usize;
                loop {
                    let [func, new_type, inner, _state] = args.as_slice() else {
                        return self.malformed("_rebuild_from_type_v2 takes 4 arguments");
                    };
                    if !matches!(new_type, Value::Global(Global::TensorClass)) {
                        return self.refused("_rebuild_from_type_v2 with a type that is not a tensor class");
                    }
                    let func = func.clone();
                    let inner = self.tuple_items(inner, "_rebuild_from_type_v2 arguments")?;
                    if func != Value::Global(Global::RebuildFromTypeV2) {
                        return self.call(&func, inner);
                    }
                    nesting += 1;
                    if nesting >= MAX_REBUILD_NESTING {
                        return Err(PickleError::Limit {
                            at: self.op_at,
                            what: format!("_rebuild_from_type_v2 nested more than {MAX_REBUILD_NESTING} deep"),
                        });
                    }
                    args = inner;
                }
            }
            Global::Unsupported(u) => Err(PickleError::UnsupportedTensor(u.message())),
            Global::TensorClass | Global::StorageType(_) | Global::UntypedStorage | Global::Dtype(_) => {
                self.refused("calling a torch class or dtype (not something torch.save writes)")
            }
        }
    }

    fn encode(&mut self, s: &str, encoding: &str) -> Result<Value> {
        // A copy of a (possibly memo-shared) string: charged before it is made.
        self.charge_bytes(s.len())?;
        match encoding.to_ascii_lowercase().as_str() {
            "latin1" | "latin-1" | "iso-8859-1" if s.is_ascii() => Ok(Value::Bytes(Rc::from(s.as_bytes()))),
            "latin1" | "latin-1" | "iso-8859-1" => {
                let mut out = Vec::with_capacity(s.len());
                for c in s.chars() {
                    let Ok(b) = u8::try_from(u32::from(c)) else {
                        return self.malformed("latin1-encoded bytes contain a character above U+00FF");
                    };
                    out.push(b);
                }
                Ok(Value::Bytes(Rc::from(out)))
            }
            "utf-8" | "utf8" | "ascii" => Ok(Value::Bytes(Rc::from(s.as_bytes()))),
            other => self.refused(format!("unsupported encoding `{other}` in _codecs.encode")),
        }
    }

    fn new_instance(&mut self, class: &Value, args: Vec<Value>) -> Result<Value> {
        match class {
            Value::Global(Global::OrderedDict | Global::Dict | Global::Set | Global::FrozenSet | Global::List) => {
                let g = class.clone();
                // `cls.__new__(cls)` builds an empty container; items follow via SETITEMS etc.
                self.call(&g, if args.is_empty() { args } else { Vec::new() })
            }
            _ => self.refused("NEWOBJ of a class other than a builtin container"),
        }
    }

    fn build(&mut self, target: &Value, state: &Value) -> Result<()> {
        match self.arena.get(target) {
            // `OrderedDict` state (e.g. `_metadata` of a state dict) and tensor attributes carry no
            // tensor data; they are accepted and dropped.
            Some(Obj::Dict(..)) | Some(Obj::Tensor(_)) => {
                if matches!(self.arena.get(state), Some(Obj::Dict(..)) | Some(Obj::Tuple(_))) || *state == Value::None {
                    Ok(())
                } else {
                    self.malformed("BUILD state is not a dict")
                }
            }
            _ => self.refused("BUILD on an object other than a dict or tensor (that would run `__setstate__`)"),
        }
    }

    fn rebuild_tensor(&mut self, which: Global, args: &[Value]) -> Result<Value> {
        let name = match which {
            Global::RebuildTensor => "_rebuild_tensor",
            Global::RebuildTensorV2 => "_rebuild_tensor_v2",
            _ => "_rebuild_tensor_v3",
        };
        let (min, max) = match which {
            Global::RebuildTensor => (4, 4),
            Global::RebuildTensorV2 => (6, 7),
            _ => (7, 8),
        };
        if args.len() < min || args.len() > max {
            return self.malformed(format!("{name} takes {min} to {max} arguments, got {}", args.len()));
        }
        let Value::Storage(storage) = args[0] else {
            return self.malformed(format!("{name}: first argument is not a storage"));
        };
        let offset = self.int_arg(&args[1], "storage offset")?;
        let offset =
            usize::try_from(offset).or_else(|_| self.malformed(format!("negative storage offset {offset}")))?;
        let shape = self.usize_list(&args[2], "tensor size")?;
        let stride = self.usize_list(&args[3], "tensor stride")?;
        if shape.len() != stride.len() {
            return self.malformed(format!("size {shape:?} and stride {stride:?} differ in length"));
        }
        let dtype = if which == Global::RebuildTensorV3 {
            match &args[6] {
                Value::Global(Global::Dtype(d)) => *d,
                _ => return self.malformed("_rebuild_tensor_v3: dtype argument is not a torch dtype"),
            }
        } else {
            self.resolver.storage_dtype(storage)
        };
        if let TorchDtype::Quantized(_) = dtype {
            return Err(PickleError::UnsupportedTensor(Unsupported::Quantized.message()));
        }
        // The view must lie inside its storage: checked now, before anything reads or allocates.
        let esize = dtype.element_size() as u64;
        let numel: Option<u64> = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        // Its byte length must be a number this machine can hold, whatever the strides say (a
        // stride-0 view of a 4-byte storage may claim 2^62 elements).
        let Some(numel) = numel.filter(|n| n.checked_mul(esize).is_some_and(|b| usize::try_from(b).is_ok())) else {
            return self.malformed(format!("tensor size {shape:?} overflows"));
        };
        let storage_bytes = self.resolver.storage_bytes(storage);
        if numel > 0 {
            let last = shape.iter().zip(&stride).try_fold(offset as u64, |acc, (&d, &s)| {
                (d as u64 - 1).checked_mul(s as u64).and_then(|x| acc.checked_add(x))
            });
            let end_bytes = last.and_then(|l| l.checked_add(1)).and_then(|n| n.checked_mul(esize));
            match end_bytes {
                Some(end) if end <= storage_bytes => {}
                _ => {
                    return self.malformed(format!(
                        "tensor of size {shape:?}, stride {stride:?}, offset {offset} reaches past its storage of {storage_bytes} bytes"
                    ));
                }
            }
        }
        self.new_obj(Obj::Tensor(TensorDef { storage, dtype, offset, shape, stride }))
    }
}

fn long_value(le: &[u8]) -> Value {
    if le.len() <= 8 {
        let negative = le.last().is_some_and(|b| b & 0x80 != 0);
        let mut a = if negative { [0xffu8; 8] } else { [0u8; 8] };
        a[..le.len()].copy_from_slice(le);
        Value::Int(i64::from_le_bytes(a))
    } else {
        Value::BigInt(Rc::from(le))
    }
}

/// Why a protocol 0 integer was refused.
fn bad_decimal(op: &str, text: &str) -> String {
    let digits = text.trim().trim_start_matches(['-', '+']).len();
    if digits > MAX_DECIMAL_DIGITS {
        format!("{op} with {digits} digits, over Python's limit of {MAX_DECIMAL_DIGITS}")
    } else {
        format!("bad {op}")
    }
}

/// A decimal integer (at most [`MAX_DECIMAL_DIGITS`] digits) as an `Int` or a `BigInt`. Nine
/// digits at a time into 32-bit limbs: linear in the limbs per step, so a 4300-digit integer
/// costs about 200,000 limb operations.
fn parse_decimal_int(s: &str) -> Option<Value> {
    let s = s.trim();
    if let Ok(v) = s.parse::<i64>() {
        return Some(Value::Int(v));
    }
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if digits.is_empty() || digits.len() > MAX_DECIMAL_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Little-endian base-2^32 magnitude.
    let mut limbs: Vec<u32> = vec![0];
    for group in digits.as_bytes().chunks(9) {
        let mut mul = 1u64;
        let mut add = 0u64;
        for &d in group {
            mul *= 10;
            add = add * 10 + u64::from(d - b'0');
        }
        let mut carry = add;
        for l in &mut limbs {
            let v = u64::from(*l) * mul + carry;
            *l = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
    }
    let mut mag: Vec<u8> = limbs.iter().flat_map(|l| l.to_le_bytes()).collect();
    while mag.len() > 1 && mag.last() == Some(&0) {
        mag.pop();
    }
    mag.push(0); // room for the sign bit
    if neg {
        let mut carry = true;
        for b in &mut mag {
            *b = !*b;
            if carry {
                let (v, c) = b.overflowing_add(1);
                *b = v;
                carry = c;
            }
        }
    }
    Some(Value::BigInt(Rc::from(mag)))
}

/// Decodes a Python `repr` of a (byte) string as protocol 0 writes it: `'abc'` or `"abc"` with
/// backslash escapes.
fn unquote_python_str(l: &[u8]) -> Option<Vec<u8>> {
    let (&q, rest) = l.split_first()?;
    if q != b'\'' && q != b'"' || rest.last() != Some(&q) {
        return None;
    }
    let body = &rest[..rest.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *body.get(i + 1)?;
        i += 2;
        match e {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match body.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(u8::try_from(v).ok()?);
            }
            b'x' => {
                let h = std::str::from_utf8(body.get(i..i + 2)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            _ => {
                out.push(b'\\');
                out.push(e);
            }
        }
    }
    Some(out)
}

/// Decodes Python's `raw-unicode-escape` (protocol 0 UNICODE): latin-1 bytes with `\uXXXX` and
/// `\UXXXXXXXX` escapes.
fn raw_unicode_escape(l: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(l.len());
    let mut i = 0;
    while i < l.len() {
        if l[i] == b'\\' && matches!(l.get(i + 1), Some(b'u' | b'U')) {
            let n = if l[i + 1] == b'u' { 4 } else { 8 };
            let h = std::str::from_utf8(l.get(i + 2..i + 2 + n)?).ok()?;
            out.push(char::from_u32(u32::from_str_radix(h, 16).ok()?)?);
            i += 2 + n;
        } else {
            out.push(char::from(l[i]));
            i += 1;
        }
    }
    Some(out)
}
