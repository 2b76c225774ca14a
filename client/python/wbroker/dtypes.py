"""dtypes.py -- the safetensors dtypes of libwbroker and their torch twins.

torch is imported on first use (torch()), so that the parts of the package
that move no tensors work without it.
"""
from . import _lib

_torch_mod = None
_TO_TORCH = {}                  # dtype name -> torch.dtype
_FROM_TORCH = {}                # torch.dtype -> dtype name
_ITEMSIZE = {}                  # torch.dtype -> bytes per element

# safetensors name (of the library's dtypes) -> attribute of the torch
# module; a torch that lacks one (float8 and the wider unsigned types are
# recent) just cannot move it.
_TORCH_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16",
                "BF16": "bfloat16", "I64": "int64", "I32": "int32",
                "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
                "U16": "uint16", "U32": "uint32", "U64": "uint64"}


def torch():
    """Imports torch and fills the dtype tables on first use: each dtype
    of the library (_lib.DTYPE_NAMES) that this torch has, with the
    library's element size."""
    global _torch_mod
    if _torch_mod is None:
        import torch as t
        for name in _lib.DTYPE_NAMES:
            dt = getattr(t, _TORCH_NAMES.get(name, ""), None)
            if isinstance(dt, t.dtype) and t.empty(
                    (), dtype=dt).element_size() == _lib.DTYPE_SIZES[name]:
                _TO_TORCH[name] = dt
                _FROM_TORCH[dt] = name
        _torch_mod = t
    return _torch_mod


def dtype_code(dt, key):
    """The wb_dtype of torch dtype dt (TypeError naming tensor key when
    safetensors has no such dtype)."""
    name = _FROM_TORCH.get(dt)
    if name is None:
        raise TypeError("tensor %r: dtype %s has no safetensors equivalent"
                        % (key, dt))
    return _lib.DTYPE_CODES[name]


def torch_dtype(code):
    """The torch dtype of wb_dtype code (TypeError when this torch has
    none)."""
    name = _lib.DTYPE_NAMES[code] if 0 <= code < len(_lib.DTYPE_NAMES) \
        else None
    dt = _TO_TORCH.get(name)
    if dt is None:
        raise TypeError("dtype %s has no torch equivalent in torch %s"
                        % (name or code, torch().__version__))
    return dt


def itemsize(dt):
    """Bytes per element of torch dtype dt."""
    n = _ITEMSIZE.get(dt)
    if n is None:
        n = _ITEMSIZE[dt] = torch().empty((), dtype=dt).element_size()
    return n

