//! Test helpers.

use std::borrow::Cow;
use std::path::Path;

use proptest::prelude::*;
use safeckpt_format::{Dtype, RawTensor, TensorSource};

#[derive(Debug, Clone)]
pub(crate) struct T {
    pub(crate) name: String,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<u8>,
}

impl T {
    pub(crate) fn raw(&self) -> RawTensor<'_> {
        RawTensor::borrowed(self.dtype, self.shape.clone(), &self.data)
    }
}

pub(crate) fn any_tensor() -> impl Strategy<Value = T> {
    (
        "[a-z]{1,4}(\\.[a-z0-9]{1,3}){0,2}",
        proptest::sample::select(Dtype::ALL.to_vec()),
        proptest::collection::vec(0usize..6, 0..3),
    )
        .prop_flat_map(|(name, dtype, mut shape)| {
            if dtype.bits() % 8 != 0 {
                shape.push(8);
            }
            let len = dtype.byte_len(shape.iter().product()).unwrap();
            proptest::collection::vec(any::<u8>(), len).prop_map(move |data| T {
                name: name.clone(),
                dtype,
                shape: shape.clone(),
                data,
            })
        })
}

pub(crate) fn unique(v: Vec<T>) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    v.into_iter().filter(|t| seen.insert(t.name.clone())).collect()
}

pub(crate) fn sources(v: &[T]) -> Vec<(&str, RawTensor<'_>)> {
    v.iter().map(|t| (t.name.as_str(), t.raw())).collect()
}

/// Names in a directory, sorted.
pub(crate) fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A source whose data disagrees with the length it announces (a buggy producer).
pub(crate) struct Liar {
    pub(crate) shape: Vec<usize>,
}

impl TensorSource for Liar {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(vec![0; 3])
    }
}
