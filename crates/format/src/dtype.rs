//! Element types of safetensors 0.8.

use std::fmt;
use std::str::FromStr;

/// The element type of a tensor, exactly as safetensors 0.8 names them.
///
/// The declaration order is significant and equals the reference crate's: the writer sorts tensors
/// by dtype in *descending* order of this enum (8-byte types first), which is what keeps every
/// tensor naturally aligned inside an 8-aligned data section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
#[allow(non_camel_case_types, reason = "variant names are the format's own dtype names")]
pub enum Dtype {
    /// Boolean, one byte per element (0 or 1).
    BOOL,
    /// OCP MX FP4 (E2M1), two elements per byte.
    F4,
    /// OCP MX FP6 (E2M3), 6 bits per element.
    F6_E2M3,
    /// OCP MX FP6 (E3M2), 6 bits per element.
    F6_E3M2,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float, 5 exponent and 2 mantissa bits.
    F8_E5M2,
    /// 8-bit float, 4 exponent and 3 mantissa bits (torch `float8_e4m3fn`).
    F8_E4M3,
    /// 8-bit exponent-only scale (torch `float8_e8m0fnu`).
    F8_E8M0,
    /// 8-bit float E4M3, finite, no negative zero (torch `float8_e4m3fnuz`).
    F8_E4M3FNUZ,
    /// 8-bit float E5M2, finite, no negative zero (torch `float8_e5m2fnuz`).
    F8_E5M2FNUZ,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// Complex number made of two `F32` (real, imaginary).
    C64,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl Dtype {
    /// Every dtype, in declaration order.
    pub const ALL: [Dtype; 22] = [
        Dtype::BOOL,
        Dtype::F4,
        Dtype::F6_E2M3,
        Dtype::F6_E3M2,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8_E5M2,
        Dtype::F8_E4M3,
        Dtype::F8_E8M0,
        Dtype::F8_E4M3FNUZ,
        Dtype::F8_E5M2FNUZ,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::C64,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// Size of one element in bits.
    pub const fn bits(self) -> usize {
        match self {
            Dtype::F4 => 4,
            Dtype::F6_E2M3 | Dtype::F6_E3M2 => 6,
            Dtype::BOOL
            | Dtype::U8
            | Dtype::I8
            | Dtype::F8_E5M2
            | Dtype::F8_E4M3
            | Dtype::F8_E8M0
            | Dtype::F8_E4M3FNUZ
            | Dtype::F8_E5M2FNUZ => 8,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 16,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 32,
            Dtype::C64 | Dtype::F64 | Dtype::I64 | Dtype::U64 => 64,
        }
    }

    /// The natural alignment of an element in bytes (1 for sub-byte types). For `C64` this is
    /// the alignment of its `f32` parts' pair as stored by the writer, i.e. 8.
    pub const fn alignment(self) -> usize {
        let bytes = self.bits() / 8;
        if bytes == 0 { 1 } else { bytes }
    }

    /// Size of one element in whole bytes, or `None` for the sub-byte types (`F4`, `F6_*`).
    pub const fn size_bytes(self) -> Option<usize> {
        if self.bits().is_multiple_of(8) { Some(self.bits() / 8) } else { None }
    }

    /// The name used in the JSON header, e.g. `"BF16"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Dtype::BOOL => "BOOL",
            Dtype::F4 => "F4",
            Dtype::F6_E2M3 => "F6_E2M3",
            Dtype::F6_E3M2 => "F6_E3M2",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8_E5M2 => "F8_E5M2",
            Dtype::F8_E4M3 => "F8_E4M3",
            Dtype::F8_E8M0 => "F8_E8M0",
            Dtype::F8_E4M3FNUZ => "F8_E4M3FNUZ",
            Dtype::F8_E5M2FNUZ => "F8_E5M2FNUZ",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::C64 => "C64",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Parses a header dtype name (exact, upper case).
    pub fn from_name(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Whether this is a floating-point type (including float8/6/4 and complex).
    pub const fn is_float(self) -> bool {
        matches!(
            self,
            Dtype::F4
                | Dtype::F6_E2M3
                | Dtype::F6_E3M2
                | Dtype::F8_E5M2
                | Dtype::F8_E4M3
                | Dtype::F8_E8M0
                | Dtype::F8_E4M3FNUZ
                | Dtype::F8_E5M2FNUZ
                | Dtype::F16
                | Dtype::BF16
                | Dtype::F32
                | Dtype::C64
                | Dtype::F64
        )
    }

    /// Byte length of a tensor of this dtype with `numel` elements, or `None` when it overflows
    /// or is not a whole number of bytes (sub-byte dtypes).
    pub fn byte_len(self, numel: usize) -> Option<usize> {
        let bits = numel.checked_mul(self.bits())?;
        if bits % 8 == 0 { Some(bits / 8) } else { None }
    }

    /// The size in bytes of the unit a byte swap works on (element size; `C64` swaps its two
    /// `f32` halves separately, so 4). `1` for types with no byte order.
    pub const fn swap_unit(self) -> usize {
        match self {
            Dtype::C64 => 4,
            _ => {
                let b = self.bits() / 8;
                if b == 0 { 1 } else { b }
            }
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for [`Dtype::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dtype `{0}`")]
pub struct UnknownDtype(pub String);

impl FromStr for Dtype {
    type Err = UnknownDtype;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dtype::from_name(s).ok_or_else(|| UnknownDtype(s.to_string()))
    }
}

/// Number of elements for a shape, with overflow checking (a scalar `[]` has one element).
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order_matches_declaration() {
        for (i, d) in Dtype::ALL.iter().enumerate() {
            assert_eq!(Dtype::from_name(d.as_str()), Some(*d));
            assert_eq!(d.to_string(), d.as_str());
            if i > 0 {
                assert!(Dtype::ALL[i - 1] < *d);
            }
        }
        assert_eq!(Dtype::from_name("f32"), None);
        assert!("X9".parse::<Dtype>().is_err());
    }

    #[test]
    fn sub_byte_lengths() {
        assert_eq!(Dtype::F4.byte_len(3), None);
        assert_eq!(Dtype::F4.byte_len(4), Some(2));
        assert_eq!(Dtype::F6_E2M3.byte_len(4), Some(3));
        assert_eq!(Dtype::F6_E3M2.byte_len(2), None);
        assert_eq!(Dtype::F32.byte_len(usize::MAX), None);
        assert_eq!(numel(&[]), Some(1));
        assert_eq!(numel(&[3, 0, 7]), Some(0));
        assert_eq!(numel(&[usize::MAX, 2]), None);
    }
}
