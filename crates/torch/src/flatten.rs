//! Turning an unpickled object tree into a flat `name -> tensor` map plus JSON metadata.
//!
//! Dict keys are joined with `.`; list and tuple items by index when they contain a tensor; every
//! other leaf (numbers, strings, booleans, `None`, and lists or tuples holding no tensor, such as
//! `param_groups`) becomes a JSON value under its flattened key. The walk is bounded in depth, in
//! the nodes and dict entries it visits, and in the bytes of the names and JSON it builds, so a
//! tiny pickle that references one container from many places (a "memo bomb") cannot make it run
//! or allocate without end. Dict keys are merged by Python's equality (`1`, `1.0` and `True` are
//! one key; `1` and `"1"` are two, and two names that print alike are an error, never a silent
//! loss).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use crate::globals::Global;
use crate::value::{Arena, Obj, TensorDef, Value, bigint_to_decimal};

/// Deepest nesting walked.
pub const MAX_DEPTH: usize = 256;
/// Most nodes visited in one walk (shared subtrees count each time they are reached).
pub const MAX_VISITS: usize = 5_000_000;
/// Most bytes of metadata JSON one walk produces (a safetensors header, which holds it, is read by
/// the reference implementation only up to 100 MB).
pub const MAX_METADATA_BYTES: usize = 64 << 20;
/// Longest integer printed, in decimal digits: the limit Python itself puts on `str(int)`.
pub const MAX_INT_DIGITS: usize = 4300;
/// Most bytes of flattened names built in one walk (prefixes included): a safetensors header,
/// which holds them, is read by the reference implementation only up to 100 MB.
pub const MAX_NAME_BYTES: usize = 64 << 20;

/// The flat view of a file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flattened {
    /// Tensors by flattened name, in the order the tree holds them.
    pub tensors: Vec<(String, TensorDef)>,
    /// Non-tensor leaves: flattened name and JSON text.
    pub metadata: Vec<(String, String)>,
}

struct Walker<'a> {
    arena: &'a Arena,
    visits: usize,
    max_visits: usize,
    on_path: HashSet<u32>,
    has_tensor: HashMap<u32, bool>,
    out: Flattened,
    names: HashSet<String>,
    /// Metadata JSON bytes produced so far.
    meta_bytes: usize,
    /// Decimal text of big integers already printed, by address: a shared integer reached many
    /// times is converted once.
    int_text: HashMap<usize, std::rc::Rc<str>>,
    /// Each dict's entries, with repeated keys resolved, computed once per dict: a dict shared
    /// through the memo and reached many times costs its entries once.
    dict_entries: HashMap<u32, Entries>,
    /// Bytes of names built so far.
    name_bytes: usize,
}

type R<T> = std::result::Result<T, String>;

/// A dict's entries after repeated keys are resolved: key text and value.
type Entries = std::rc::Rc<[(Arc<str>, Value)]>;

/// Flattens `root` (or the sub-tree at `key`, whose prefix is then dropped).
pub fn flatten(arena: &Arena, root: &Value, key: Option<&str>) -> R<Flattened> {
    flatten_with_limit(arena, root, key, MAX_VISITS)
}

/// [`flatten`] with a different bound on the nodes visited.
pub fn flatten_with_limit(arena: &Arena, root: &Value, key: Option<&str>, max_visits: usize) -> R<Flattened> {
    let mut w = Walker {
        arena,
        visits: 0,
        max_visits,
        on_path: HashSet::new(),
        has_tensor: HashMap::new(),
        out: Flattened::default(),
        names: HashSet::new(),
        meta_bytes: 0,
        int_text: HashMap::new(),
        dict_entries: HashMap::new(),
        name_bytes: 0,
    };
    let start = match key {
        None => root.clone(),
        Some(k) => w.select(root, k)?,
    };
    match arena.get(&start) {
        Some(Obj::Dict(..)) => w.dict(&start, "", 0)?,
        Some(Obj::List(_)) | Some(Obj::Tuple(_)) if w.contains_tensor(&start, 0)? => w.sequence(&start, "", 0)?,
        Some(Obj::Tensor(t)) => w.out.tensors.push(("tensor".into(), t.clone())),
        _ => {
            let json = w.json(&start, 0)?;
            w.out.metadata.push(("value".into(), json));
        }
    }
    Ok(w.out)
}

/// A dict key as Python's `str()` would print it (big integers are handled by the walker).
fn key_text(k: &Value) -> Option<Arc<str>> {
    Some(match k {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string().into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::None => "None".into(),
        Value::Float(f) => format_float(*f).into(),
        _ => return None,
    })
}

/// A dict key's identity under Python's `==` (and `hash`): `True == 1 == 1.0`, `-0.0 == 0`,
/// integers equal whatever their encoding; strings equal only strings; NaN equals nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyId {
    None,
    /// An integer that fits 128 bits (bools and integral floats included).
    Int(i128),
    /// A larger integer, as minimal little-endian two's-complement bytes (more than 16 of them,
    /// so never equal to an `Int`).
    BigInt(Vec<u8>),
    /// A float that is not an integer, by its bits.
    Float(u64),
    /// NaN: never equal to another key.
    Nan(usize),
    Str(Arc<str>),
}

/// The key of an integer given as little-endian two's-complement bytes of any width.
fn int_key(le: &[u8]) -> KeyId {
    let mut v = le;
    // Drop sign-extension bytes: the value is unchanged.
    while let [rest @ .., next, top] = v
        && ((*top == 0 && next & 0x80 == 0) || (*top == 0xff && next & 0x80 != 0))
    {
        v = &v[..rest.len() + 1];
    }
    if v.len() > 16 {
        return KeyId::BigInt(v.to_vec());
    }
    let fill = if v.last().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0 };
    let mut a = [fill; 16];
    a[..v.len()].copy_from_slice(v);
    KeyId::Int(i128::from_le_bytes(a))
}

fn key_id(k: &Value, position: usize) -> Option<KeyId> {
    Some(match k {
        Value::None => KeyId::None,
        Value::Bool(b) => KeyId::Int(i128::from(*b)),
        Value::Int(i) => KeyId::Int(i128::from(*i)),
        Value::BigInt(b) => int_key(b),
        Value::Float(f) if f.is_nan() => KeyId::Nan(position),
        // Integral floats equal the integer of the same value (2^127 and beyond keep their bits:
        // no pickle torch writes has such keys).
        Value::Float(f) if f.fract() == 0.0 && f.abs() < 2f64.powi(127) => KeyId::Int(*f as i128),
        Value::Float(f) => KeyId::Float(f.to_bits()),
        Value::Str(s) => KeyId::Str(s.clone()),
        _ => return None,
    })
}

fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity".into() } else { "-Infinity".into() }
    } else {
        serde_json::to_string(&f).unwrap_or_else(|_| f.to_string())
    }
}

impl Walker<'_> {
    fn too_many_visits(&self) -> String {
        format!(
            "the object graph is larger than {} nodes when walked (shared sub-objects repeated many times: a \"memo bomb\"?)",
            self.max_visits
        )
    }

    fn visit(&mut self, depth: usize) -> R<()> {
        self.visits += 1;
        if self.visits > self.max_visits {
            return Err(self.too_many_visits());
        }
        if depth > MAX_DEPTH {
            return Err(format!("the object tree nests deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    /// Decimal text of a big integer, converted once per distinct integer; the conversion's
    /// quadratic cost is charged to the visit budget.
    fn big_int(&mut self, le: &std::sync::Arc<[u8]>) -> R<std::rc::Rc<str>> {
        let addr = le.as_ptr() as usize;
        if let Some(t) = self.int_text.get(&addr) {
            return Ok(t.clone());
        }
        // 8 * log10(2) = 2.408 digits per byte: a longer integer cannot fit the limit.
        let too_long = || format!("an integer with more than {MAX_INT_DIGITS} digits (Python refuses to print one)");
        if le.len() > MAX_INT_DIGITS * 10 / 24 + 1 {
            return Err(too_long());
        }
        self.visits += le.len() * le.len() / 32;
        let text: std::rc::Rc<str> = bigint_to_decimal(le).into();
        if text.trim_start_matches('-').len() > MAX_INT_DIGITS {
            return Err(too_long());
        }
        self.int_text.insert(addr, text.clone());
        Ok(text)
    }

    fn enter(&mut self, v: &Value) -> R<Option<u32>> {
        if let Value::Ref(i) = v {
            if !self.on_path.insert(*i) {
                return Err("the object graph contains a cycle".into());
            }
            return Ok(Some(*i));
        }
        Ok(None)
    }

    fn leave(&mut self, id: Option<u32>) {
        if let Some(i) = id {
            self.on_path.remove(&i);
        }
    }

    /// `prefix.key`, charged to the name budget before it is built.
    fn join(&mut self, prefix: &str, key: &str) -> R<String> {
        let len = if prefix.is_empty() { key.len() } else { prefix.len() + 1 + key.len() };
        self.name_bytes = self.name_bytes.saturating_add(len);
        if self.name_bytes > MAX_NAME_BYTES {
            return Err(format!(
                "the names built from the object tree come to more than {MAX_NAME_BYTES} bytes (long keys nested deeply or shared many times?)"
            ));
        }
        let mut name = String::with_capacity(len);
        if !prefix.is_empty() {
            name.push_str(prefix);
            name.push('.');
        }
        name.push_str(key);
        Ok(name)
    }

    /// Dict entries with repeated keys resolved as Python does (first key, last value, first
    /// position), computed once per dict; each entry visited is charged to the visit budget.
    fn entries(&mut self, v: &Value, prefix: &str) -> R<Entries> {
        let arena = self.arena;
        let Value::Ref(id) = v else { return Ok(std::rc::Rc::from(Vec::new())) };
        if let Some(e) = self.dict_entries.get(id) {
            return Ok(e.clone());
        }
        let Some(Obj::Dict(_, entries)) = arena.get(v) else { return Ok(std::rc::Rc::from(Vec::new())) };
        self.visits = self.visits.saturating_add(entries.len());
        if self.visits > self.max_visits {
            return Err(self.too_many_visits());
        }
        let mut out: Vec<(Arc<str>, Value)> = Vec::new();
        let mut pos: HashMap<KeyId, usize> = HashMap::new();
        for (n, (k, val)) in entries.iter().enumerate() {
            let not_a_key = || {
                let at = if prefix.is_empty() { "the top level".to_string() } else { format!("`{prefix}`") };
                format!("a dict key at {at} is not a string or number; it cannot become a tensor name")
            };
            let id_of = key_id(k, n).ok_or_else(not_a_key)?;
            match pos.get(&id_of) {
                Some(&i) => out[i].1 = val.clone(),
                None => {
                    let text = match k {
                        Value::BigInt(b) => Arc::from(&*self.big_int(b)?),
                        _ => key_text(k).ok_or_else(not_a_key)?,
                    };
                    pos.insert(id_of, out.len());
                    out.push((text, val.clone()));
                }
            }
        }
        let out: Entries = out.into();
        self.dict_entries.insert(*id, out.clone());
        Ok(out)
    }

    fn select(&mut self, root: &Value, key: &str) -> R<Value> {
        let mut cur = root.clone();
        let mut rest = key;
        'outer: while !rest.is_empty() {
            let entries = self.entries(&cur, "")?;
            // Longest matching key first, so keys that themselves contain dots work.
            let mut candidates: Vec<&(Arc<str>, Value)> = entries
                .iter()
                .filter(|(k, _)| rest == &**k || rest.strip_prefix(&**k).is_some_and(|r| r.starts_with('.')))
                .collect();
            candidates.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
            if let Some((k, v)) = candidates.first() {
                rest = rest[k.len()..].trim_start_matches('.');
                cur = v.clone();
                continue 'outer;
            }
            let mut keys: Vec<&str> = entries.iter().map(|(k, _)| &**k).collect();
            keys.truncate(20);
            return Err(format!("no key `{key}` in the file; top-level keys here: {}", keys.join(", ")));
        }
        Ok(cur)
    }

    fn add_tensor(&mut self, name: String, t: &TensorDef) -> R<()> {
        if !self.names.insert(name.clone()) {
            return Err(format!("two values flatten to the same name `{name}`"));
        }
        self.out.tensors.push((name, t.clone()));
        Ok(())
    }

    fn add_meta(&mut self, name: String, json: String) -> R<()> {
        if !self.names.insert(name.clone()) {
            return Err(format!("two values flatten to the same name `{name}`"));
        }
        self.meta_bytes += name.len() + json.len();
        if self.meta_bytes > MAX_METADATA_BYTES {
            return Err(self.metadata_too_large());
        }
        self.out.metadata.push((name, json));
        Ok(())
    }

    fn dict(&mut self, v: &Value, prefix: &str, depth: usize) -> R<()> {
        self.visit(depth)?;
        let id = self.enter(v)?;
        for (k, val) in self.entries(v, prefix)?.iter() {
            let name = self.join(prefix, k)?;
            self.value(val, name, depth + 1)?;
        }
        self.leave(id);
        Ok(())
    }

    fn sequence(&mut self, v: &Value, prefix: &str, depth: usize) -> R<()> {
        self.visit(depth)?;
        let id = self.enter(v)?;
        let arena = self.arena;
        let items: &[Value] = match arena.get(v) {
            Some(Obj::List(items)) | Some(Obj::Tuple(items)) => items,
            _ => &[],
        };
        for (i, item) in items.iter().enumerate() {
            let name = self.join(prefix, &i.to_string())?;
            self.value(item, name, depth + 1)?;
        }
        self.leave(id);
        Ok(())
    }

    fn value(&mut self, v: &Value, name: String, depth: usize) -> R<()> {
        match self.arena.get(v) {
            Some(Obj::Tensor(t)) => {
                let t = t.clone();
                self.add_tensor(name, &t)
            }
            Some(Obj::Dict(_, entries)) if !entries.is_empty() => self.dict(v, &name, depth),
            Some(Obj::List(_)) | Some(Obj::Tuple(_)) if self.contains_tensor(v, depth)? => {
                self.sequence(v, &name, depth)
            }
            _ => {
                if let Value::Storage(_) = v {
                    return Err(format!("`{name}` is a bare storage, not a tensor; save tensors instead"));
                }
                let json = self.json(v, depth)?;
                self.add_meta(name, json)
            }
        }
    }

    fn contains_tensor(&mut self, v: &Value, depth: usize) -> R<bool> {
        self.visit(depth)?;
        let Value::Ref(i) = v else { return Ok(false) };
        if let Some(&b) = self.has_tensor.get(i) {
            return Ok(b);
        }
        let id = self.enter(v)?;
        let arena = self.arena;
        let mut found = false;
        match arena.get(v) {
            Some(Obj::Tensor(_)) => found = true,
            Some(Obj::List(x)) | Some(Obj::Tuple(x)) | Some(Obj::Set(x)) => {
                for c in x {
                    if self.contains_tensor(c, depth + 1)? {
                        found = true;
                        break;
                    }
                }
            }
            Some(Obj::Dict(_, e)) => {
                for (_, c) in e {
                    if self.contains_tensor(c, depth + 1)? {
                        found = true;
                        break;
                    }
                }
            }
            None => {}
        }
        self.leave(id);
        self.has_tensor.insert(*i, found);
        Ok(found)
    }

    /// JSON text of a tensor-free value.
    fn json(&mut self, v: &Value, depth: usize) -> R<String> {
        let mut out = String::new();
        self.json_into(&mut out, v, depth)?;
        Ok(out)
    }

    fn metadata_too_large(&self) -> String {
        format!("the values besides tensors come to more than {MAX_METADATA_BYTES} bytes of JSON metadata")
    }

    fn json_into(&mut self, out: &mut String, v: &Value, depth: usize) -> R<()> {
        self.visit(depth)?;
        if self.meta_bytes + out.len() > MAX_METADATA_BYTES {
            return Err(self.metadata_too_large());
        }
        match v {
            Value::None => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::BigInt(b) => out.push_str(&self.big_int(b)?),
            Value::Float(f) => out.push_str(&format_float(*f)),
            Value::Complex(re, im) => {
                let _ = write!(out, "{{\"real\":{},\"imag\":{}}}", format_float(*re), format_float(*im));
            }
            Value::Str(s) => safeckpt_format::write_json_string(out, s),
            Value::Bytes(b) => {
                out.push_str("{\"bytes_hex\":\"");
                for x in b.iter() {
                    let _ = write!(out, "{x:02x}");
                }
                out.push_str("\"}");
            }
            Value::Global(g) => safeckpt_format::write_json_string(out, &global_text(*g)),
            Value::Storage(_) => return Err("a bare storage inside a value".into()),
            Value::Ref(_) => {
                let id = self.enter(v)?;
                let arena = self.arena;
                match arena.get(v) {
                    Some(Obj::List(items)) | Some(Obj::Tuple(items)) | Some(Obj::Set(items)) => {
                        out.push('[');
                        for (i, item) in items.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            self.json_into(out, item, depth + 1)?;
                        }
                        out.push(']');
                    }
                    Some(Obj::Dict(..)) => {
                        out.push('{');
                        for (i, (k, val)) in self.entries(v, "")?.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            safeckpt_format::write_json_string(out, k);
                            out.push(':');
                            self.json_into(out, val, depth + 1)?;
                        }
                        out.push('}');
                    }
                    Some(Obj::Tensor(_)) => return Err("a tensor inside a metadata value".into()),
                    None => out.push_str("null"),
                }
                self.leave(id);
            }
        }
        Ok(())
    }
}

fn global_text(g: Global) -> String {
    match g {
        Global::Dtype(d) => format!("torch.{}", d.name()),
        Global::StorageType(d) => format!("torch.storage<{}>", d.name()),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc as Rc;

    use super::*;
    use crate::value::DictKind;

    fn s(x: &str) -> Value {
        Value::Str(Rc::from(x))
    }

    #[test]
    fn memo_bomb_is_bounded() {
        // t0 = (1, 1); t_{k+1} = (t_k, t_k): 2^60 leaves, 60 objects.
        let mut a = Arena::default();
        let mut t = a.push(Obj::Tuple(vec![Value::Int(1), Value::Int(1)]));
        for _ in 0..60 {
            t = a.push(Obj::Tuple(vec![t.clone(), t.clone()]));
        }
        let root = a.push(Obj::Dict(DictKind::Dict, vec![(s("bomb"), t)]));
        let err = flatten(&a, &root, None).unwrap_err();
        assert!(err.contains("memo bomb"), "{err}");
    }

    /// `(x, x)` doubled `k` times under the key `v`.
    fn doubled(a: &mut Arena, x: Value, k: usize) -> Value {
        let mut t = x;
        for _ in 0..k {
            t = a.push(Obj::Tuple(vec![t.clone(), t]));
        }
        a.push(Obj::Dict(DictKind::Dict, vec![(s("v"), t)]))
    }

    #[test]
    fn a_shared_big_integer_prints_once_and_right() {
        // 2^8000 - 1 as 1001 bytes (the last one the sign byte): 2409 digits.
        let mut le = vec![0xffu8; 1000];
        le.push(0);
        let big = Value::BigInt(Rc::from(le.as_slice()));
        let mut a = Arena::default();
        let root = doubled(&mut a, big, 12);
        let f = flatten(&a, &root, None).unwrap();
        let text = bigint_to_decimal(&le);
        assert_eq!(text.len(), 2409);
        assert!(text.ends_with('5'), "2^8000 - 1 ends in 5");
        let mut expected = text;
        for _ in 0..12 {
            expected = format!("[{expected},{expected}]");
        }
        assert_eq!(f.metadata, vec![("v".to_string(), expected)]);
    }

    #[test]
    fn integers_beyond_pythons_print_limit_are_refused() {
        let mut a = Arena::default();
        let mut le = vec![0x11u8; 1799];
        le.push(0);
        let root = a.push(Obj::Dict(DictKind::Dict, vec![(s("n"), Value::BigInt(Rc::from(le.as_slice())))]));
        let err = flatten(&a, &root, None).unwrap_err();
        assert!(err.contains("4300 digits"), "{err}");
        // The same limit on a dict key.
        let root = a.push(Obj::Dict(DictKind::Dict, vec![(Value::BigInt(Rc::from(le.as_slice())), Value::Int(1))]));
        let err = flatten(&a, &root, None).unwrap_err();
        assert!(err.contains("4300 digits"), "{err}");
    }

    #[test]
    fn metadata_is_bounded_in_bytes() {
        // A 64 KiB string reached 2^11 times: 128 MiB of JSON from a few objects.
        let mut a = Arena::default();
        let root = doubled(&mut a, s(&"x".repeat(64 << 10)), 11);
        let err = flatten(&a, &root, None).unwrap_err();
        assert!(err.contains("bytes of JSON metadata"), "{err}");
    }

    #[test]
    fn keys_merge_by_python_equality_whatever_their_encoding() {
        let mut a = Arena::default();
        let mut nine = vec![0u8; 9];
        nine[0] = 1; // 1 in a non-minimal 9-byte encoding
        let mut big = vec![0u8; 20];
        big[18] = 1; // 2^144: beyond 128 bits
        let root = a.push(Obj::Dict(
            DictKind::Dict,
            vec![
                (Value::Int(1), Value::Int(10)),
                (Value::BigInt(Rc::from(nine.as_slice())), Value::Int(11)),
                (Value::Bool(true), Value::Int(12)),
                (Value::Float(1.0), Value::Int(13)),
                (Value::BigInt(Rc::from(vec![0xffu8; 12].as_slice())), Value::Int(20)),
                (Value::Int(-1), Value::Int(21)),
                (Value::BigInt(Rc::from(big.as_slice())), Value::Int(30)),
            ],
        ));
        let f = flatten(&a, &root, None).unwrap();
        assert_eq!(f.metadata.len(), 3, "{:?}", f.metadata);
        assert_eq!(f.metadata[0], ("1".to_string(), "13".to_string()));
        assert_eq!(f.metadata[1], ("-1".to_string(), "21".to_string()));
        assert_eq!(f.metadata[2].1, "30");
    }

    #[test]
    fn cycles_are_errors() {
        let mut a = Arena::default();
        let list = a.push(Obj::List(vec![]));
        if let Some(Obj::List(v)) = a.get_mut(&list) {
            v.push(list.clone());
        }
        let root = a.push(Obj::Dict(DictKind::Dict, vec![(s("l"), list)]));
        assert!(flatten(&a, &root, None).unwrap_err().contains("cycle"));
    }

    #[test]
    fn keys_select_subtrees_and_duplicates_resolve_like_python() {
        let mut a = Arena::default();
        let inner = a.push(Obj::Dict(
            DictKind::Dict,
            vec![(s("x"), Value::Int(1)), (s("x"), Value::Int(2)), (Value::Int(3), Value::Float(0.5))],
        ));
        let root = a.push(Obj::Dict(DictKind::Dict, vec![(s("model.sd"), inner)]));
        let f = flatten(&a, &root, Some("model.sd")).unwrap();
        assert_eq!(f.metadata, vec![("x".to_string(), "2".to_string()), ("3".to_string(), "0.5".to_string())]);
        assert!(flatten(&a, &root, Some("nope")).unwrap_err().contains("model.sd"));
    }
}
