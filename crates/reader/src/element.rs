//! Element types that tensors can be viewed as.

use half::{bf16, f16};
use safeckpt_format::Dtype;

/// A plain-old-data element type a tensor's bytes can be viewed as.
///
/// Every bit pattern is a valid value (the `bytemuck::Pod` bound), so reinterpreting file bytes
/// is sound once length and alignment are checked.
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    /// The dtypes whose bytes this type can view.
    const DTYPES: &'static [Dtype];
    /// Size of the byte-order unit (the element size; 4 for complex pairs of `f32`).
    const SWAP_UNIT: usize = std::mem::size_of::<Self>();

    /// Whether `dtype` can be viewed as this type.
    fn accepts(dtype: Dtype) -> bool {
        Self::DTYPES.contains(&dtype)
    }

    /// Names of the accepted dtypes, for error messages.
    fn dtype_names() -> String {
        Self::DTYPES.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(" or ")
    }
}

macro_rules! element {
    ($t:ty => $($d:ident),+) => {
        impl Element for $t {
            const DTYPES: &'static [Dtype] = &[$(Dtype::$d),+];
        }
    };
}

element!(u8 => U8, BOOL, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ);
element!(i8 => I8);
element!(u16 => U16);
element!(i16 => I16);
element!(f16 => F16);
element!(bf16 => BF16);
element!(u32 => U32);
element!(i32 => I32);
element!(f32 => F32);
element!(u64 => U64);
element!(i64 => I64);
element!(f64 => F64);

impl Element for [f32; 2] {
    const DTYPES: &'static [Dtype] = &[Dtype::C64];
    const SWAP_UNIT: usize = 4;
}

/// Reverses the byte order of every `unit`-byte group of `bytes` in place (a no-op for 1).
pub fn swap_bytes_in_place(bytes: &mut [u8], unit: usize) {
    if unit > 1 {
        for chunk in bytes.chunks_exact_mut(unit) {
            chunk.reverse();
        }
    }
}
