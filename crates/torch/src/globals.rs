//! The allow-list: the only module attributes a pickle may name. Each resolves to a marker that
//! the VM interprets itself; nothing is imported, looked up or called.

use safeckpt_format::Dtype;

/// A torch element type as it appears in pickles (`torch.float16`, `torch.HalfStorage`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs, reason = "variant names are torch's dtype names")]
pub enum TorchDtype {
    Float32,
    Float64,
    Float16,
    BFloat16,
    Int8,
    UInt8,
    Int16,
    Int32,
    Int64,
    UInt16,
    UInt32,
    UInt64,
    Bool,
    Complex64,
    Complex128,
    Complex32,
    Float8E4M3Fn,
    Float8E5M2,
    Float8E4M3Fnuz,
    Float8E5M2Fnuz,
    Float8E8M0Fnu,
    Float4E2M1FnX2,
    /// Quantized types (`qint8`, `quint8`, `qint32`, `quint4x2`, `quint2x4`).
    Quantized(&'static str),
    /// Raw bit types (`bits8`, …) and others with no numeric meaning.
    Other(&'static str),
}

impl TorchDtype {
    /// The torch name (`float16`).
    pub fn name(self) -> &'static str {
        use TorchDtype::*;
        match self {
            Float32 => "float32",
            Float64 => "float64",
            Float16 => "float16",
            BFloat16 => "bfloat16",
            Int8 => "int8",
            UInt8 => "uint8",
            Int16 => "int16",
            Int32 => "int32",
            Int64 => "int64",
            UInt16 => "uint16",
            UInt32 => "uint32",
            UInt64 => "uint64",
            Bool => "bool",
            Complex64 => "complex64",
            Complex128 => "complex128",
            Complex32 => "complex32",
            Float8E4M3Fn => "float8_e4m3fn",
            Float8E5M2 => "float8_e5m2",
            Float8E4M3Fnuz => "float8_e4m3fnuz",
            Float8E5M2Fnuz => "float8_e5m2fnuz",
            Float8E8M0Fnu => "float8_e8m0fnu",
            Float4E2M1FnX2 => "float4_e2m1fn_x2",
            Quantized(n) | Other(n) => n,
        }
    }

    /// Bytes per element of the storage.
    pub fn element_size(self) -> usize {
        use TorchDtype::*;
        match self {
            Float64 | Int64 | UInt64 | Complex64 => 8,
            Complex128 => 16,
            Float32 | Int32 | UInt32 | Complex32 => 4,
            Float16 | BFloat16 | Int16 | UInt16 => 2,
            Quantized("qint32") => 4,
            _ => 1,
        }
    }

    /// The safetensors dtype holding the same bytes, if there is one.
    pub fn safetensors(self) -> Option<Dtype> {
        use TorchDtype::*;
        Some(match self {
            Float32 => Dtype::F32,
            Float64 => Dtype::F64,
            Float16 => Dtype::F16,
            BFloat16 => Dtype::BF16,
            Int8 => Dtype::I8,
            UInt8 => Dtype::U8,
            Int16 => Dtype::I16,
            Int32 => Dtype::I32,
            Int64 => Dtype::I64,
            UInt16 => Dtype::U16,
            UInt32 => Dtype::U32,
            UInt64 => Dtype::U64,
            Bool => Dtype::BOOL,
            Complex64 => Dtype::C64,
            Float8E4M3Fn => Dtype::F8_E4M3,
            Float8E5M2 => Dtype::F8_E5M2,
            Float8E4M3Fnuz => Dtype::F8_E4M3FNUZ,
            Float8E5M2Fnuz => Dtype::F8_E5M2FNUZ,
            Float8E8M0Fnu => Dtype::F8_E8M0,
            Float4E2M1FnX2 => Dtype::F4,
            Complex128 | Complex32 | Quantized(_) | Other(_) => return None,
        })
    }

    fn from_torch_name(name: &str) -> Option<TorchDtype> {
        use TorchDtype::*;
        Some(match name {
            "float32" | "float" => Float32,
            "float64" | "double" => Float64,
            "float16" | "half" => Float16,
            "bfloat16" => BFloat16,
            "int8" => Int8,
            "uint8" => UInt8,
            "int16" | "short" => Int16,
            "int32" | "int" => Int32,
            "int64" | "long" => Int64,
            "uint16" => UInt16,
            "uint32" => UInt32,
            "uint64" => UInt64,
            "bool" => Bool,
            "complex64" | "cfloat" => Complex64,
            "complex128" | "cdouble" => Complex128,
            "complex32" | "chalf" => Complex32,
            "float8_e4m3fn" => Float8E4M3Fn,
            "float8_e5m2" => Float8E5M2,
            "float8_e4m3fnuz" => Float8E4M3Fnuz,
            "float8_e5m2fnuz" => Float8E5M2Fnuz,
            "float8_e8m0fnu" => Float8E8M0Fnu,
            "float4_e2m1fn_x2" => Float4E2M1FnX2,
            "qint8" => Quantized("qint8"),
            "quint8" => Quantized("quint8"),
            "qint32" => Quantized("qint32"),
            "quint4x2" => Quantized("quint4x2"),
            "quint2x4" => Quantized("quint2x4"),
            "bits8" => Other("bits8"),
            "bits16" => Other("bits16"),
            "bits1x8" => Other("bits1x8"),
            "bits2x4" => Other("bits2x4"),
            "bits4x2" => Other("bits4x2"),
            _ => return None,
        })
    }

    fn from_storage_class(name: &str) -> Option<TorchDtype> {
        use TorchDtype::*;
        Some(match name {
            "FloatStorage" => Float32,
            "DoubleStorage" => Float64,
            "HalfStorage" => Float16,
            "BFloat16Storage" => BFloat16,
            "LongStorage" => Int64,
            "IntStorage" => Int32,
            "ShortStorage" => Int16,
            "CharStorage" => Int8,
            "ByteStorage" => UInt8,
            "BoolStorage" => Bool,
            "ComplexFloatStorage" => Complex64,
            "ComplexDoubleStorage" => Complex128,
            "QInt8Storage" => Quantized("qint8"),
            "QUInt8Storage" => Quantized("quint8"),
            "QInt32Storage" => Quantized("qint32"),
            "QUInt4x2Storage" => Quantized("quint4x2"),
            "QUInt2x4Storage" => Quantized("quint2x4"),
            _ => return None,
        })
    }
}

/// Tensor kinds torch can pickle that have no place in a safetensors file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsupported {
    /// `_rebuild_qtensor`.
    Quantized,
    /// `_rebuild_sparse_tensor` and sparse layouts.
    Sparse,
    /// `_rebuild_meta_tensor_no_storage`.
    Meta,
    /// `_rebuild_nested_tensor`.
    Nested,
    /// `_rebuild_wrapper_subclass`.
    WrapperSubclass,
    /// `_rebuild_device_tensor_from_numpy` (needs numpy objects).
    NumpyDeviceTensor,
    /// A quantization scheme or sparse layout constant.
    Constant(&'static str),
}

impl Unsupported {
    /// What to tell the user.
    pub fn message(self) -> String {
        match self {
            Unsupported::Quantized => {
                "a quantized tensor: safetensors has no quantized dtypes; save `t.dequantize()` (or the int representation and scales as separate tensors)".into()
            }
            Unsupported::Sparse => "a sparse tensor: save `t.to_dense()` (or its indices and values as separate tensors)".into(),
            Unsupported::Meta => "a meta tensor, which has no data".into(),
            Unsupported::Nested => "a nested tensor: save its components as separate tensors".into(),
            Unsupported::WrapperSubclass => "a tensor wrapper subclass (e.g. a fake or functional tensor), which has no data of its own".into(),
            Unsupported::NumpyDeviceTensor => "a device tensor stored as a numpy array".into(),
            Unsupported::Constant(n) => format!("`{n}`, which only quantized or sparse tensors use"),
        }
    }
}

/// An allow-listed global.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `builtins.dict`.
    Dict,
    /// `builtins.list`.
    List,
    /// `builtins.set`.
    Set,
    /// `builtins.frozenset`.
    FrozenSet,
    /// `builtins.complex`.
    Complex,
    /// `builtins.bytearray`.
    ByteArray,
    /// `_codecs.encode` (how protocol 2 pickles bytes).
    CodecsEncode,
    /// `torch.Size`.
    TorchSize,
    /// `torch.device`.
    TorchDevice,
    /// `torch._utils._rebuild_tensor`.
    RebuildTensor,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor_v3`.
    RebuildTensorV3,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state`.
    RebuildParameterWithState,
    /// `torch._tensor._rebuild_from_type_v2`.
    RebuildFromTypeV2,
    /// `torch._utils._rebuild_device_tensor_from_cpu_tensor`.
    RebuildDeviceFromCpu,
    /// A tensor class (`torch.Tensor`, `torch.nn.parameter.Parameter`, …) used as a type tag.
    TensorClass,
    /// A typed storage class (`torch.FloatStorage`, …).
    StorageType(TorchDtype),
    /// `torch.storage.UntypedStorage`.
    UntypedStorage,
    /// A dtype (`torch.float16`, …).
    Dtype(TorchDtype),
    /// Allowed to appear so the refusal can name the tensor kind.
    Unsupported(Unsupported),
}

/// Resolves `module.name` against the allow-list.
pub fn resolve(module: &str, name: &str) -> Option<Global> {
    use Global::*;
    Some(match (module, name) {
        ("collections", "OrderedDict") => OrderedDict,
        ("builtins" | "__builtin__", "dict") => Dict,
        ("builtins" | "__builtin__", "list") => List,
        ("builtins" | "__builtin__", "set") => Set,
        ("builtins" | "__builtin__", "frozenset") => FrozenSet,
        ("builtins" | "__builtin__", "complex") => Complex,
        ("builtins" | "__builtin__", "bytearray") => ByteArray,
        ("_codecs", "encode") => CodecsEncode,
        ("torch", "Size") => TorchSize,
        ("torch", "device") => TorchDevice,
        ("torch._utils", "_rebuild_tensor") => RebuildTensor,
        ("torch._utils", "_rebuild_tensor_v2") => RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor_v3") => RebuildTensorV3,
        ("torch._utils", "_rebuild_parameter") => RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => RebuildParameterWithState,
        ("torch._tensor", "_rebuild_from_type_v2") => RebuildFromTypeV2,
        ("torch._utils", "_rebuild_device_tensor_from_cpu_tensor") => RebuildDeviceFromCpu,
        ("torch", "Tensor") | ("torch._tensor", "Tensor") | ("torch.nn.parameter", "Parameter" | "Buffer") => {
            TensorClass
        }
        ("torch.storage" | "torch", "UntypedStorage") => UntypedStorage,
        ("torch._utils", "_rebuild_qtensor") => Unsupported(self::Unsupported::Quantized),
        ("torch._utils", "_rebuild_sparse_tensor" | "_rebuild_sparse_csr") => Unsupported(self::Unsupported::Sparse),
        ("torch.serialization", "_get_layout") => Unsupported(self::Unsupported::Sparse),
        ("torch._utils", "_rebuild_meta_tensor_no_storage") => Unsupported(self::Unsupported::Meta),
        ("torch._utils", "_rebuild_nested_tensor") => Unsupported(self::Unsupported::Nested),
        ("torch._utils", "_rebuild_wrapper_subclass") => Unsupported(self::Unsupported::WrapperSubclass),
        ("torch._utils", "_rebuild_device_tensor_from_numpy") => Unsupported(self::Unsupported::NumpyDeviceTensor),
        ("torch", "per_tensor_affine") => Unsupported(self::Unsupported::Constant("torch.per_tensor_affine")),
        ("torch", "per_channel_affine") => Unsupported(self::Unsupported::Constant("torch.per_channel_affine")),
        ("torch", "per_channel_affine_float_qparams") => {
            Unsupported(self::Unsupported::Constant("torch.per_channel_affine_float_qparams"))
        }
        ("torch", n) if n.ends_with("Storage") => StorageType(TorchDtype::from_storage_class(n)?),
        ("torch", n) => Dtype(TorchDtype::from_torch_name(n)?),
        _ => return None,
    })
}

/// Why a name is refused, with advice where there is some.
pub fn refusal_hint(module: &str, name: &str) -> &'static str {
    let dangerous_modules = [
        "os",
        "posix",
        "nt",
        "subprocess",
        "sys",
        "shutil",
        "socket",
        "importlib",
        "runpy",
        "pty",
        "ctypes",
        "webbrowser",
        "code",
        "pickle",
        "marshal",
    ];
    let dangerous_builtins = [
        "eval",
        "exec",
        "compile",
        "getattr",
        "setattr",
        "delattr",
        "__import__",
        "open",
        "input",
        "globals",
        "locals",
        "vars",
        "breakpoint",
    ];
    let top = module.split('.').next().unwrap_or(module);
    if dangerous_modules.contains(&top)
        || (matches!(module, "builtins" | "__builtin__") && dangerous_builtins.contains(&name))
    {
        return "this is how malicious pickles run code on the machine that loads them; the file was not loaded";
    }
    if module == "__main__" || name.chars().next().is_some_and(char::is_uppercase) && !module.starts_with("torch") {
        return "the file pickles a Python class (often a whole model saved with `torch.save(model)`); save `torch.save(model.state_dict(), path)` instead";
    }
    if module.starts_with("torch") {
        return "this torch object is not plain tensor data; save tensors and plain Python values only";
    }
    if module.starts_with("numpy") {
        return "numpy objects are not supported; convert arrays to tensors (`torch.from_numpy`) or lists before saving";
    }
    "only tensors, containers and plain Python values can be read"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list() {
        assert_eq!(resolve("torch._utils", "_rebuild_tensor_v2"), Some(Global::RebuildTensorV2));
        assert_eq!(resolve("torch", "FloatStorage"), Some(Global::StorageType(TorchDtype::Float32)));
        assert_eq!(resolve("torch", "float8_e4m3fn"), Some(Global::Dtype(TorchDtype::Float8E4M3Fn)));
        assert_eq!(resolve("__builtin__", "set"), Some(Global::Set));
        for (m, n) in [
            ("os", "system"),
            ("posix", "system"),
            ("builtins", "eval"),
            ("builtins", "getattr"),
            ("subprocess", "Popen"),
            ("__main__", "SimpleNet"),
            ("torch", "load"),
            ("torch", "NotAStorage"),
            ("torch.nn.modules.linear", "Linear"),
        ] {
            assert_eq!(resolve(m, n), None, "{m}.{n}");
        }
        assert!(refusal_hint("posix", "system").contains("malicious"));
        assert!(refusal_hint("__main__", "SimpleNet").contains("state_dict"));
        assert!(refusal_hint("torch.nn.modules.linear", "Linear").contains("not plain tensor data"));
    }

    #[test]
    fn dtypes_map_to_safetensors() {
        assert_eq!(TorchDtype::BFloat16.safetensors(), Some(Dtype::BF16));
        assert_eq!(TorchDtype::Complex128.safetensors(), None);
        assert_eq!(TorchDtype::Float4E2M1FnX2.safetensors(), Some(Dtype::F4));
        assert_eq!(TorchDtype::Complex64.element_size(), 8);
    }
}
