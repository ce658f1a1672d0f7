//! The values a restricted pickle can build: plain data, plus references to torch storages and
//! tensors. Nothing here can hold or call code.

use std::sync::Arc as Rc;

use crate::globals::{Global, TorchDtype};

/// A value on the pickle stack. Containers live in an [`Arena`] and are referred to by index, so
/// that the pickle memo shares them instead of copying (a memo bomb stays linear in memory).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A larger integer, as little-endian two's-complement bytes.
    BigInt(Rc<[u8]>),
    /// A float.
    Float(f64),
    /// A complex number.
    Complex(f64, f64),
    /// A string.
    Str(Rc<str>),
    /// Bytes.
    Bytes(Rc<[u8]>),
    /// An allow-listed global (a marker; never called).
    Global(Global),
    /// A storage from the archive (index into the storage table).
    Storage(u32),
    /// A container or tensor in the arena.
    Ref(u32),
}

/// A tensor described by the pickle: a view into a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDef {
    /// Index into the storage table.
    pub storage: u32,
    /// Element type.
    pub dtype: TorchDtype,
    /// Offset into the storage, in elements.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

/// Kinds of dictionary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DictKind {
    /// `dict`.
    Dict,
    /// `collections.OrderedDict`.
    Ordered,
}

/// A container built by the pickle.
#[derive(Debug, Clone, PartialEq)]
pub enum Obj {
    /// A list.
    List(Vec<Value>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A dict, in insertion order.
    Dict(DictKind, Vec<(Value, Value)>),
    /// A set or frozenset.
    Set(Vec<Value>),
    /// A tensor.
    Tensor(TensorDef),
}

/// Where containers live.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Arena {
    objs: Vec<Obj>,
}

impl Arena {
    /// Stores an object and returns its reference.
    pub fn push(&mut self, o: Obj) -> Value {
        self.objs.push(o);
        Value::Ref((self.objs.len() - 1) as u32)
    }

    /// The object a reference points at.
    pub fn get(&self, v: &Value) -> Option<&Obj> {
        match v {
            Value::Ref(i) => self.objs.get(*i as usize),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, v: &Value) -> Option<&mut Obj> {
        match v {
            Value::Ref(i) => self.objs.get_mut(*i as usize),
            _ => None,
        }
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objs.len()
    }

    /// Whether the arena is empty.
    pub fn is_empty(&self) -> bool {
        self.objs.is_empty()
    }
}

/// Decimal text of a little-endian two's-complement integer.
pub fn bigint_to_decimal(le: &[u8]) -> String {
    if le.is_empty() {
        return "0".into();
    }
    let negative = le.last().is_some_and(|b| b & 0x80 != 0);
    // Magnitude, little-endian.
    let mut mag: Vec<u8> = le.to_vec();
    if negative {
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
    // Repeated division by 10^9 over base-256 digits (most significant first).
    let mut digits: Vec<u8> = mag.into_iter().rev().skip_while(|&b| b == 0).collect();
    let mut chunks: Vec<u32> = Vec::new();
    while !digits.is_empty() {
        let mut rem: u64 = 0;
        let mut next = Vec::with_capacity(digits.len());
        for &d in &digits {
            let cur = (rem << 8) | u64::from(d);
            let q = cur / 1_000_000_000;
            rem = cur % 1_000_000_000;
            if !(next.is_empty() && q == 0) {
                next.push(q as u8);
            }
        }
        chunks.push(rem as u32);
        digits = next;
    }
    let mut s = String::new();
    if negative {
        s.push('-');
    }
    match chunks.split_last() {
        Some((first, rest)) => {
            s.push_str(&first.to_string());
            for c in rest.iter().rev() {
                s.push_str(&format!("{c:09}"));
            }
        }
        None => s.push('0'),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_integers_print_in_decimal() {
        assert_eq!(bigint_to_decimal(&[]), "0");
        assert_eq!(bigint_to_decimal(&[0xff]), "-1");
        assert_eq!(bigint_to_decimal(&[0x00, 0x01]), "256");
        // 2^64 = 00..00 01 (9 bytes).
        assert_eq!(bigint_to_decimal(&[0, 0, 0, 0, 0, 0, 0, 0, 1]), "18446744073709551616");
        // -(2^64).
        assert_eq!(bigint_to_decimal(&[0, 0, 0, 0, 0, 0, 0, 0, 0xff]), "-18446744073709551616");
        let ten_pow_20: u128 = 100_000_000_000_000_000_000;
        assert_eq!(bigint_to_decimal(&ten_pow_20.to_le_bytes()), "100000000000000000000");
    }
}
