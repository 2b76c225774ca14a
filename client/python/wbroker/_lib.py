"""_lib.py -- ctypes declarations of libwbroker (include/wbroker.h).

The library is found through $WBROKER_LIB when set, else next to this file
(where a wheel puts it), else through ctypes.util.find_library("wbroker"),
else as "libwbroker.so.0" (the soname that ``make install`` puts on the
loader path).  ``import wbroker`` loads it (load()) and refuses, with an
ImportError, a library of another version than the package.

The error codes (WB_EINVAL, ...; ERROR_CODES) and the dtypes (DTYPE_NAMES,
DTYPE_CODES, DTYPE_SIZES) are read from the library when it is loaded, so
that they cannot drift from it.  The flags and enums below have no such
function; tests/python/test_python_package.py checks them against the
header.
"""
import ctypes
import ctypes.util
import os
import threading

# Mirrors of the header's constants (checked against it by the tests).
WB_MAX_DIMS = 16
WB_MAX_NAME = 1024

WB_MAP_PRIVATE = 0
WB_MAP_SHARED = 1 << 0
WB_MAP_NONSTRICT = 1 << 1
WB_MAP_IGNORE_MISMATCH = 1 << 2
WB_MAP_PLAN = 1 << 3
WB_MAP_POPULATE = 1 << 4

WB_KEYS_MISSING = 0
WB_KEYS_UNEXPECTED = 1
WB_KEYS_MISMATCHED = 2
WB_KEYS_CAST = 3
WB_KEYS_ALIASED = 4
WB_KEYS_UNUSED_RULES = 5

# Filled by load() from wb_err_name(), wb_dtype_name() and wb_dtype_size():
ERROR_CODES = {}                # "ENOMODEL" -> -4, and WB_ENOMODEL = -4
DTYPE_NAMES = ()                # wb_dtype -> "F32"
DTYPE_CODES = {}                # "F32" -> wb_dtype
DTYPE_SIZES = {}                # "F32" -> bytes per element

# The codes the package names; a library without one of them is refused.
_USED_CODES = ("EINVAL", "EPROTO", "ENOMODEL", "ENOVERSION", "EDTYPE",
               "ELIMIT", "EPERM", "ECONNECT", "ECLOSED", "ECORRUPT",
               "ESTATE", "ERULE", "ELOAD", "EFORMAT", "EIO", "ECANCELED",
               "ESYS")
_CODES_SCANNED = 256            # Codes -1 .. -255 are asked for a name.

c_int64_p = ctypes.POINTER(ctypes.c_int64)


def enc(s, what="name"):
    """UTF-8 bytes of a str argument (TypeError for anything else)."""
    if isinstance(s, bytes):
        return s
    if not isinstance(s, str):
        raise TypeError("%s must be a str, not %s" % (what, type(s).__name__))
    return s.encode("utf-8", "surrogatepass")


def dec(b):
    """The str of a C string the library returned (None stays None)."""
    return b.decode("utf-8", "surrogateescape") if b is not None else None


class wb_tensor_spec(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p),
                ("dtype", ctypes.c_int),
                ("ndim", ctypes.c_int),
                ("shape", c_int64_p),
                ("tied_to", ctypes.c_char_p)]

# Metadata key recording tied tensors in an image or file (wbroker.h).
TIED_KEY = "wbroker.tied"
# Metadata key under which the Python package records the module versions of
# a published state_dict (its torch _metadata), a JSON object prefix -> int.
VERSIONS_KEY = "wbroker.module_versions"


class wb_kv(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p),
                ("value", ctypes.c_char_p)]


class wb_tensor(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p),
                ("source", ctypes.c_char_p),
                ("dtype", ctypes.c_int),
                ("ndim", ctypes.c_int),
                ("shape", ctypes.c_int64 * WB_MAX_DIMS),
                ("data", ctypes.c_void_p),
                ("nbytes", ctypes.c_size_t),
                ("cast", ctypes.c_int)]


class wb_model_info(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p),
                ("latest", ctypes.c_uint64),
                ("nversions", ctypes.c_uint64),
                ("tensors", ctypes.c_uint64),
                ("bytes", ctypes.c_uint64),
                ("readers", ctypes.c_uint64),
                ("pinned", ctypes.c_uint64),
                ("owner", ctypes.c_uint32),
                ("digest", ctypes.c_char * 33)]


class wb_status(ctypes.Structure):
    _fields_ = [("version", ctypes.c_char * 32),
                ("uptime", ctypes.c_double),
                ("memory_used", ctypes.c_uint64),
                ("memory_limit", ctypes.c_uint64),
                ("memory_shmem", ctypes.c_uint64),
                ("models", ctypes.c_uint64),
                ("versions", ctypes.c_uint64),
                ("clients", ctypes.c_uint64),
                ("pid", ctypes.c_uint32)]


class wb_holder(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint32),
                ("uid", ctypes.c_uint32),
                ("comm", ctypes.c_char_p),
                ("model", ctypes.c_char_p),
                ("version", ctypes.c_uint64),
                ("bytes", ctypes.c_uint64),
                ("since", ctypes.c_uint64)]


_P = ctypes.c_void_p
_PP = ctypes.POINTER(ctypes.c_void_p)
_S = ctypes.c_char_p
_I = ctypes.c_int
_Z = ctypes.c_size_t
_U64 = ctypes.c_uint64

# name: (restype, argtypes)
_PROTOTYPES = {
    "wb_version": (ctypes.c_uint, []),
    "wb_version_string": (_S, []),
    "wb_dtype_name": (_S, [_I]),
    "wb_dtype_size": (_Z, [_I]),
    "wb_strerror": (_S, [_I]),
    "wb_err_name": (_S, [_I]),
    "wb_socket_path": (_I, [_S, ctypes.c_char_p, _Z]),
    "wb_connect": (_I, [_S, _PP]),
    "wb_close": (None, [_P]),
    "wb_errmsg": (ctypes.c_char_p, [_P]),
    "wb_sys_errno": (ctypes.c_int, [_P]),
    "wb_publish_begin": (_I, [_P, _S, ctypes.POINTER(wb_tensor_spec), _Z,
                              ctypes.POINTER(wb_kv), _Z, _PP]),
    "wb_publish_data": (_P, [_P, _Z, ctypes.POINTER(_Z)]),
    "wb_publish_write": (_I, [_P, _Z, ctypes.c_void_p, _Z, _Z]),
    "wb_publish_commit": (_I, [_P, ctypes.POINTER(_U64)]),
    "wb_publish_abort": (None, [_P]),
    "wb_rules_new": (_P, []),
    "wb_rules_free": (None, [_P]),
    "wb_rules_errmsg": (_S, [_P]),
    "wb_rules_include": (_I, [_P, _S]),
    "wb_rules_exclude": (_I, [_P, _S]),
    "wb_rules_rename": (_I, [_P, _S, _S]),
    "wb_rules_rename_prefix": (_I, [_P, _S, _S]),
    "wb_rules_rename_regex": (_I, [_P, _S, _S]),
    "wb_rules_parse": (_I, [_P, _S, ctypes.c_char_p, _Z]),
    "wb_schema_new": (_P, [_S]),
    "wb_schema_free": (None, [_P]),
    "wb_schema_add": (_I, [_P, _S, _I, _I, c_int64_p]),
    "wb_map": (_I, [_P, _S, _U64, _I, _PP]),
    "wb_load": (_I, [_P, _S, _U64, _P, _P, _I, _PP]),
    "wb_map_version": (_U64, [_P]),
    "wb_map_count": (_Z, [_P]),
    "wb_map_tensor": (_I, [_P, _Z, ctypes.POINTER(wb_tensor)]),
    "wb_map_meta": (_S, [_P, _S]),
    "wb_map_meta_count": (_Z, [_P]),
    "wb_map_meta_at": (_I, [_P, _Z, ctypes.POINTER(_S), ctypes.POINTER(_S)]),
    "wb_map_keys_count": (_Z, [_P, _I]),
    "wb_map_key": (_S, [_P, _I, _Z]),
    "wb_map_error_text": (_S, [_P]),
    "wb_map_image": (_I, [_P, _PP, ctypes.POINTER(_Z)]),
    "wb_unmap": (None, [_P]),
    "wb_list": (_I, [_P, ctypes.POINTER(ctypes.POINTER(wb_model_info)),
                     ctypes.POINTER(_Z)]),
    "wb_model_info_free": (None, [ctypes.POINTER(wb_model_info), _Z]),
    "wb_get_status": (_I, [_P, ctypes.POINTER(wb_status)]),
    "wb_drop": (_I, [_P, _S, _U64]),
    "wb_watch": (_I, [_P, _S, _U64, _I, ctypes.POINTER(_U64)]),
    "wb_watch_cancel": (_I, [_P]),
    "wb_pin": (_I, [_P, _S, _U64]),
    "wb_unpin": (_I, [_P, _S, _U64]),
    "wb_holders": (_I, [_P, _S, ctypes.POINTER(ctypes.POINTER(wb_holder)),
                        ctypes.POINTER(_Z)]),
    "wb_holders_free": (None, [ctypes.POINTER(wb_holder), _Z]),
}

_lib = None
_lock = threading.Lock()


def library_path():
    """The path or soname that load() opens: $WBROKER_LIB, else the copy a
    wheel ships next to this file, else the system's libwbroker.so.0."""
    path = os.environ.get("WBROKER_LIB")
    if path:
        return path
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "libwbroker.so")
    if os.path.exists(here):
        return here
    return ctypes.util.find_library("wbroker") or "libwbroker.so.0"


def _file_of(fn):
    """The file a loaded function comes from (its mapping in
    /proc/self/maps), or None."""
    addr = ctypes.cast(fn, ctypes.c_void_p).value
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= addr < hi and len(parts) == 6:
                    return parts[5].strip()
    except (OSError, ValueError):
        pass
    return None


def _version_text(v):
    return "%d.%d.%d" % (v >> 16, (v >> 8) & 0xFF, v & 0xFF)


def _derive(lib):
    """Reads the error codes and dtypes out of lib into this module."""
    g = globals()
    codes = {}
    for code in range(-1, -_CODES_SCANNED, -1):
        name = lib.wb_err_name(code).decode()
        if name != "EUNKNOWN":
            codes[name] = code
    missing = [n for n in _USED_CODES if n not in codes]
    if missing:
        raise ImportError("%s lacks the error code(s) %s that this wbroker "
                          "package needs" % (library_path(),
                                             ", ".join(missing)))
    for name, code in codes.items():
        g["WB_" + name] = code
    names = []
    while True:
        name = lib.wb_dtype_name(len(names))
        if name is None:
            break
        names.append(name.decode())
    ERROR_CODES.update(codes)
    g["DTYPE_NAMES"] = tuple(names)
    DTYPE_CODES.update((n, i) for i, n in enumerate(names))
    DTYPE_SIZES.update((n, lib.wb_dtype_size(i)) for i, n in enumerate(names))


def load(expected_version=None):
    """Returns the loaded libwbroker with its prototypes declared.  The
    first call opens it; with expected_version ("0.1.0", the package's
    __version__) it refuses a library whose wb_version() differs, with an
    ImportError naming both versions and the library's path."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            path = library_path()
            try:
                lib = ctypes.CDLL(path)
            except OSError as e:
                raise ImportError(
                    "cannot load libwbroker (%s): %s; set WBROKER_LIB to the "
                    "path of libwbroker.so" % (path, e)) from e
            # Before any other symbol: another version may lack some.
            lib.wb_version.restype = ctypes.c_uint
            lib.wb_version.argtypes = []
            have = _version_text(lib.wb_version())
            if expected_version is not None and have != expected_version:
                where = _file_of(lib.wb_version) or path
                raise ImportError(
                    "the wbroker package is version %s but libwbroker at %s "
                    "is version %s: install the package and the library "
                    "together (or set WBROKER_LIB to a libwbroker.so %s)"
                    % (expected_version, where, have, expected_version))
            for name, (res, args) in _PROTOTYPES.items():
                fn = getattr(lib, name)
                fn.restype = res
                fn.argtypes = args
            _derive(lib)
            _lib = lib
    return _lib
