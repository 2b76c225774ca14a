"""wbroker -- Python binding of libwbroker: PyTorch state_dicts in wbrokerd.

A thin ctypes layer over libwbroker.so (see include/wbroker.h)::

    import wbroker

    with wbroker.connect() as c:
        v = c.publish("resnet", model)                 # -> 1, 2, ...
        sd = c.state_dict("resnet")                    # zero-copy views
        r = c.load_into(target, "resnet", strict=False,
                        rename=[(r"module\\.(.*)", r"\\1")])
        r.missing_keys, r.unexpected_keys, r.version

Mapped tensors view the daemon's sealed shared memory copy-on-write: a
process that writes to them changes only its own pages.  A mapping is
unmapped when the last tensor viewing it is garbage-collected.

The library is $WBROKER_LIB if set, else libwbroker found by ctypes (the
"libwbroker.so.0" soname that ``make install`` provides).  torch is
imported on first use, so models(), drop(), watch(), publish_file() and
export() work without it.
"""
import collections
import collections.abc
import ctypes
import json
import os
import threading
import time

from . import _lib
from ._safetensors import FormatError

__all__ = ["connect", "Client", "Error", "ConnectError", "LoadError",
           "NotFoundError", "FormatError", "LoadResult", "ModelInfo",
           "Status"]

__version__ = "0.1.0"


# ------------------------------------------------------------------ errors

class Error(RuntimeError):
    """A failure libwbroker or the daemon reported.

    .code is the negative WB_E* code, .name its symbolic name ("ENOMODEL")
    and .message the detail (wb_errmsg() of the call, else the code's
    generic text).  For ESYS, .errno is the system's error code behind it
    (this process's or the daemon's, e.g. errno.EMFILE), else None."""

    errno = None

    def __init__(self, code, message=None):
        lib = _lib.load()
        self.code = code
        self.name = (lib.wb_err_name(code) or b"EUNKNOWN").decode()
        if not message:
            message = (lib.wb_strerror(code) or b"unknown error").decode()
        self.message = message
        super().__init__(message)

    def __str__(self):
        return self.message


class NotFoundError(Error, KeyError):
    """No such model or version (ENOMODEL, ENOVERSION); a KeyError."""


class ConnectError(Error, ConnectionError):
    """The daemon is unreachable or closed the connection; a
    ConnectionError whose message and .socket name the socket path."""

    socket = None


class LoadError(Error):
    """A load that violated strict or met a size mismatch (ELOAD).

    The message is PyTorch's load_state_dict error text; .result holds the
    report (a LoadResult).  The target was not touched."""

    def __init__(self, message, result):
        super().__init__(_lib.WB_ELOAD, message)
        self.result = result


_ERROR_CLASSES = {
    _lib.WB_ENOMODEL: NotFoundError,
    _lib.WB_ENOVERSION: NotFoundError,
    _lib.WB_ECONNECT: ConnectError,
    _lib.WB_ECLOSED: ConnectError,
}


def _raise(code, detail=None, sys_errno=0):
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    e = _ERROR_CLASSES.get(code, Error)(code, detail)
    if sys_errno:
        e.errno = sys_errno
    raise e


def _enc(s, what="name"):
    """UTF-8 bytes of a str argument (TypeError for anything else)."""
    if isinstance(s, bytes):
        return s
    if not isinstance(s, str):
        raise TypeError("%s must be a str, not %s" % (what, type(s).__name__))
    return s.encode("utf-8", "surrogatepass")


def _dec(b):
    return b.decode("utf-8", "surrogateescape") if b is not None else None


# ------------------------------------------------------------------ dtypes

_torch_mod = None
_TO_TORCH = {}                  # dtype name -> torch.dtype
_FROM_TORCH = {}                # torch.dtype -> dtype name


def _torch():
    """Imports torch and fills the dtype tables on first use."""
    global _torch_mod
    if _torch_mod is None:
        import torch
        pairs = [("F64", "float64"), ("F32", "float32"), ("F16", "float16"),
                 ("BF16", "bfloat16"), ("I64", "int64"), ("I32", "int32"),
                 ("I16", "int16"), ("I8", "int8"), ("U8", "uint8"),
                 ("BOOL", "bool"), ("F8_E4M3", "float8_e4m3fn"),
                 ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"),
                 ("U32", "uint32"), ("U64", "uint64")]
        for name, attr in pairs:
            dt = getattr(torch, attr, None)
            if isinstance(dt, torch.dtype):
                _TO_TORCH[name] = dt
                _FROM_TORCH[dt] = name
        _torch_mod = torch
    return _torch_mod


def _dtype_code(dt, key):
    name = _FROM_TORCH.get(dt)
    if name is None:
        raise TypeError("tensor %r: dtype %s has no safetensors equivalent"
                        % (key, dt))
    return _lib.DTYPE_CODES[name]


def _torch_dtype(code):
    name = _lib.DTYPE_NAMES[code] if 0 <= code < len(_lib.DTYPE_NAMES) \
        else None
    dt = _TO_TORCH.get(name)
    if dt is None:
        raise TypeError("dtype %s has no torch equivalent in torch %s"
                        % (name or code, _torch().__version__))
    return dt


# ------------------------------------------------------------------ publishing

_COPY_CHUNK = 8 << 20          # Bytes per read when importing a file.


def _declare(entries):
    """wb_tensor_spec array for (name, dtype code, shape, tied to or None)
    entries, and the buffers it points into (keep them alive)."""
    specs = (_lib.wb_tensor_spec * max(len(entries), 1))()
    keep = []
    for i, (name, code, shape, tied) in enumerate(entries):
        dims = (ctypes.c_int64 * max(len(shape), 1))(*shape)
        keep.append(dims)
        specs[i].name = _enc(name)
        specs[i].dtype = code
        specs[i].ndim = len(shape)
        specs[i].shape = ctypes.cast(dims, _lib.c_int64_p)
        specs[i].tied_to = None if tied is None else _enc(tied)
    return specs, keep


def _kvs(meta):
    """wb_kv array of a dict of str -> str, and its length."""
    kvs = (_lib.wb_kv * max(len(meta), 1))()
    for i, (k, v) in enumerate(meta.items()):
        kvs[i].key = _enc(k, "metadata key")
        kvs[i].value = _enc(v, "metadata value")
    return kvs, len(meta)


# ------------------------------------------------------------------ module
# versions

_VERSIONS_MAX = 512 << 10      # Max chars of the recorded module versions.


def _versions_text(sd):
    """The module versions of a state_dict (torch's sd._metadata, prefix ->
    {"version": n}) as the JSON text publish() records, or None when sd
    carries none (a plain dict, one rebuilt with a comprehension)."""
    meta = getattr(sd, "_metadata", None)
    if not isinstance(meta, collections.abc.Mapping):
        return None
    versions = {}
    for prefix, local in meta.items():
        if isinstance(prefix, str) and isinstance(local,
                                                  collections.abc.Mapping):
            v = local.get("version")
            if isinstance(v, int) and not isinstance(v, bool):
                versions[prefix] = v
    text = json.dumps(versions, separators=(",", ":"))
    if len(text) > _VERSIONS_MAX:
        # Version 1 is what torch assumes of a module it finds no entry for.
        text = json.dumps({k: v for k, v in versions.items() if v != 1},
                          separators=(",", ":"))
    return text if len(text) <= _VERSIONS_MAX else None


def _parse_versions(text):
    """The dict prefix -> version of recorded module versions, or None."""
    if text is None:
        return None
    try:
        d = json.loads(text)
    except ValueError:
        return None
    if not isinstance(d, dict):
        return None
    return {k: v for k, v in d.items()
            if isinstance(v, int) and not isinstance(v, bool)}


class _FillProbe(dict):
    """An always-empty state_dict that records what a module's
    _load_from_state_dict() adds to it, without keeping it: the module then
    finds nothing to load, so probing it changes nothing."""

    def __init__(self):
        super().__init__()
        self.filled = {}

    def __setitem__(self, key, value):
        self.filled[key] = value


def _fill_candidates(model, targets, keys):
    """(key, module, module prefix) of each key of keys that names a buffer
    of a normalization module (BatchNorm and the like), whose
    _load_from_state_dict() may supply it when the checkpoint lacks it."""
    norm = _torch().nn.modules.batchnorm._NormBase
    out = []
    for key in keys:
        prefix, _, leaf = key.rpartition(".")
        try:
            mod = model.get_submodule(prefix) if prefix else model
        except AttributeError:
            continue
        if isinstance(mod, norm) and leaf in mod._buffers and \
                mod._buffers[leaf] is targets.get(key):
            out.append((key, mod, prefix))
    return out


def _fills(candidates, versions):
    """key -> tensor for the candidates that torch's load_state_dict() would
    fill in itself: it asks each module, with the local metadata it would
    pass (the source's recorded version of that module, if any), as torch
    does for a BatchNorm's num_batches_tracked when the checkpoint carries
    no version 2 metadata for it."""
    out = {}
    for key, mod, prefix in candidates:
        local = {}
        if versions is not None and prefix in versions:
            local = {"version": versions[prefix]}
        probe = _FillProbe()
        try:
            mod._load_from_state_dict(probe, prefix + "." if prefix else "",
                                      local, True, [], [], [])
        except Exception:       # A module that cannot be probed fills nothing.
            continue
        if key in probe.filled:
            out[key] = probe.filled[key]
    return out


def _drop_missing(text, target, old, new):
    """The PyTorch-format error text with its missing keys old reduced to
    new, or None when no error is left."""
    def line(keys):
        return "Missing key(s) in state_dict: %s. " % ", ".join(
            '"%s"' % k for k in keys)
    was = line(old)
    if was in text:
        if new:
            text = text.replace(was, line(new), 1)
        elif was + "\n\t" in text:
            text = text.replace(was + "\n\t", "", 1)
        else:
            text = text.replace(was, "", 1)
    if text == "Error(s) in loading state_dict for %s:\n\t" % target:
        return None
    return text


# ------------------------------------------------------------------ mappings

class _Mapping:
    """Owns one wb_mapping; unmaps it when collected or closed.

    Every tensor view made from the mapping holds this object (through the
    ctypes buffer it views), so the memory stays mapped as long as any view
    lives."""

    __slots__ = ("_ptr", "_unmap", "__weakref__")

    def __init__(self, ptr):
        self._unmap = _lib.load().wb_unmap
        self._ptr = ptr

    def close(self):
        ptr, self._ptr = self._ptr, None
        if ptr:
            self._unmap(ptr)

    def __del__(self):
        self.close()


_ITEMSIZE = {}                  # torch.dtype -> bytes per element


def _view(owner, data, nbytes, dtype, shape):
    """A tensor of dtype and shape viewing nbytes at address data, keeping
    owner alive as long as the tensor's storage lives."""
    torch = _torch()
    numel = 1
    for s in shape:
        numel *= s
    itemsize = _ITEMSIZE.get(dtype)
    if itemsize is None:
        itemsize = _ITEMSIZE[dtype] = torch.empty(
            (), dtype=dtype).element_size()
    if numel * itemsize != nbytes:
        raise Error(-16, "mapped tensor has %d bytes, its shape needs %d"
                    % (nbytes, numel * itemsize))
    if nbytes == 0 or not data:
        return torch.empty(shape, dtype=dtype)
    buf = (ctypes.c_ubyte * nbytes).from_address(data)
    buf._wb_owner = owner       # Unmapped only after the last view dies.
    return torch.frombuffer(buf, dtype=dtype, count=numel).view(shape)


def _tensor_at(lib, m, i):
    t = _lib.wb_tensor()
    rc = lib.wb_map_tensor(m, i, ctypes.byref(t))
    if rc:
        _raise(rc)
    return t


def _metadata_of(lib, m):
    out = {}
    k, v = ctypes.c_char_p(), ctypes.c_char_p()
    for i in range(lib.wb_map_meta_count(m)):
        if lib.wb_map_meta_at(m, i, ctypes.byref(k), ctypes.byref(v)) == 0:
            out[_dec(k.value)] = _dec(v.value)
    return out


# ------------------------------------------------------------------ reports

class LoadResult:
    """The load report of load_into() and plan().

    missing_keys: target keys no source key reached; unexpected_keys: source
    keys (after renaming) the target lacks; mismatched_keys: same key,
    different shape; cast_keys: keys the daemon converted to the target's
    dtype; copied_keys: keys copied instead of mapped (targets off the CPU
    or outside the module's parameters and buffers); aliased_keys: target
    keys that share a source with another; version: the version loaded;
    error: the PyTorch-format error text when the load fails or (for a
    plan) would fail, else None.  The key lists are plain lists, so they
    compare equal to those of torch's load_state_dict(strict=False) for
    the same pair."""

    __slots__ = ("missing_keys", "unexpected_keys", "mismatched_keys",
                 "cast_keys", "copied_keys", "aliased_keys", "version",
                 "error")

    def __init__(self, version=0, missing_keys=(), unexpected_keys=(),
                 mismatched_keys=(), cast_keys=(), copied_keys=(),
                 aliased_keys=(), error=None):
        self.version = version
        self.missing_keys = list(missing_keys)
        self.unexpected_keys = list(unexpected_keys)
        self.mismatched_keys = list(mismatched_keys)
        self.cast_keys = list(cast_keys)
        self.copied_keys = list(copied_keys)
        self.aliased_keys = list(aliased_keys)
        self.error = error

    @property
    def ok(self):
        """True unless the (planned) load would fail."""
        return self.error is None

    def __eq__(self, other):
        if not isinstance(other, LoadResult):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k)
                   for k in self.__slots__)

    def __repr__(self):
        return "LoadResult(%s)" % ", ".join(
            "%s=%r" % (k, getattr(self, k)) for k in self.__slots__
            if k != "error" or self.error is not None)

    @classmethod
    def _from_mapping(cls, lib, m, error=None):
        def keys(which):
            return [_dec(lib.wb_map_key(m, which, i))
                    for i in range(lib.wb_map_keys_count(m, which))]
        return cls(version=lib.wb_map_version(m),
                   missing_keys=keys(_lib.WB_KEYS_MISSING),
                   unexpected_keys=keys(_lib.WB_KEYS_UNEXPECTED),
                   mismatched_keys=keys(_lib.WB_KEYS_MISMATCHED),
                   cast_keys=keys(_lib.WB_KEYS_CAST),
                   aliased_keys=keys(_lib.WB_KEYS_ALIASED),
                   error=error)


class ModelInfo:
    """One model of models(): name, version (latest), versions (held),
    tensors and bytes (of the latest version), readers."""

    __slots__ = ("name", "version", "versions", "tensors", "bytes",
                 "readers")

    def __init__(self, name, version, versions, tensors, bytes, readers):
        self.name = name
        self.version = version
        self.versions = versions
        self.tensors = tensors
        self.bytes = bytes
        self.readers = readers

    def __repr__(self):
        return "ModelInfo(%s)" % ", ".join(
            "%s=%r" % (k, getattr(self, k)) for k in self.__slots__)


class Status:
    """The daemon's status: version, uptime (s), memory_used (bytes
    charged to the limit), memory_limit, memory_shmem (bytes the kernel
    has allocated to the daemon's segments), models, versions, clients,
    pid."""

    __slots__ = ("version", "uptime", "memory_used", "memory_limit",
                 "memory_shmem", "models", "versions", "clients", "pid")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw[k])

    def __repr__(self):
        return "Status(%s)" % ", ".join(
            "%s=%r" % (k, getattr(self, k)) for k in self.__slots__)


# ------------------------------------------------------------------ client

def socket_path(socket=None):
    """The socket path a client uses: socket, else $WBROKER_SOCKET, else
    the per-user default (as every wbroker program resolves it)."""
    lib = _lib.load()
    buf = ctypes.create_string_buffer(4096)
    arg = os.fsencode(socket) if socket is not None else None
    if lib.wb_socket_path(arg, buf, len(buf)) < 0:
        raise ValueError("socket path too long: %r" % (socket,))
    return os.fsdecode(buf.value)


def connect(socket=None):
    """Connects to wbrokerd (socket=None: the default path) and returns a
    Client, usable as a context manager.  Raises ConnectError naming the
    socket path when the daemon cannot be reached."""
    return Client(socket)


def _as_list(v, what):
    if v is None:
        return []
    if isinstance(v, (str, bytes)):
        return [v]
    if not isinstance(v, collections.abc.Iterable):
        raise TypeError("%s must be a list of str" % what)
    return list(v)


def _rules_text(rules):
    """The text of a rules argument: file contents for a path, else the
    text itself."""
    if isinstance(rules, os.PathLike):
        with open(rules, "rb") as f:
            return f.read()
    if isinstance(rules, bytes):
        return rules
    if not isinstance(rules, str):
        raise TypeError("rules must be a rules-file text or a path")
    if "\n" not in rules and rules.strip() and os.path.isfile(rules):
        with open(rules, "rb") as f:
            return f.read()
    return rules.encode("utf-8")


class _Rules:
    """Owns a wb_rules built from load_into()'s keyword arguments."""

    def __init__(self, include, exclude, rename, rules):
        lib = self._lib = _lib.load()
        self.ptr = None
        if include is None and exclude is None and not rename and \
                rules is None:
            return
        self.ptr = lib.wb_rules_new()
        if not self.ptr:
            raise MemoryError("wb_rules_new")
        try:
            self._fill(include, exclude, rename, rules)
        except BaseException:
            self.close()
            raise

    def _check(self, rc, what):
        if rc:
            _raise(rc, "%s: %s" % (what,
                                   _dec(self._lib.wb_rules_errmsg(self.ptr))))

    def _fill(self, include, exclude, rename, rules):
        lib = self._lib
        if rules is not None:
            text = _rules_text(rules)
            err = ctypes.create_string_buffer(512)
            rc = lib.wb_rules_parse(self.ptr, text, err, len(err))
            if rc:
                _raise(rc, "rules: " + (_dec(err.value) or
                                        _dec(lib.wb_strerror(rc))))
        for g in _as_list(include, "include"):
            self._check(lib.wb_rules_include(self.ptr, _enc(g, "include")),
                        "include %r" % (g,))
        for g in _as_list(exclude, "exclude"):
            self._check(lib.wb_rules_exclude(self.ptr, _enc(g, "exclude")),
                        "exclude %r" % (g,))
        if isinstance(rename, collections.abc.Mapping):
            for old, new in rename.items():
                self._check(lib.wb_rules_rename(self.ptr, _enc(old, "rename"),
                                                _enc(new, "rename")),
                            "rename %r -> %r" % (old, new))
        elif rename:
            for pair in rename:
                if isinstance(pair, (str, bytes)) or len(pair) != 2:
                    raise TypeError("rename takes a dict or a list of "
                                    "(pattern, replacement) pairs")
                pat, repl = pair
                self._check(lib.wb_rules_rename_regex(
                    self.ptr, _enc(pat, "pattern"), _enc(repl, "replacement")),
                    "rename %r -> %r" % (pat, repl))

    def close(self):
        ptr, self.ptr = self.ptr, None
        if ptr:
            self._lib.wb_rules_free(ptr)


class Client:
    """A connection to wbrokerd.  Calls are blocking; one call runs at a
    time per client (a lock serialises threads sharing it)."""

    def __init__(self, socket=None):
        lib = self._lib = _lib.load()
        self._c = None
        self._lock = threading.RLock()
        self.socket = socket_path(socket)
        h = ctypes.c_void_p()
        rc = lib.wb_connect(os.fsencode(self.socket), ctypes.byref(h))
        if rc:
            detail = _dec(lib.wb_errmsg(h)) if h.value else None
            lib.wb_close(h)
            if rc in (_lib.WB_ECONNECT, _lib.WB_ECLOSED, -12):
                e = ConnectError(rc, detail or "cannot connect to wbrokerd "
                                 "at %s" % self.socket)
                e.socket = self.socket
                raise e
            _raise(rc, detail)
        self._c = h

    # -- plumbing

    def _handle(self):
        if self._c is None:
            raise Error(-17, "client is closed")
        return self._c

    def _check(self, rc):
        if rc < 0:
            _raise(rc, _dec(self._lib.wb_errmsg(self._c)),
                   self._lib.wb_sys_errno(self._c))
        return rc

    def close(self):
        """Closes the connection.  Tensors mapped through it stay valid."""
        with self._lock:
            c, self._c = self._c, None
            if c is not None:
                self._lib.wb_close(c)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_c", None) is not None:
            self._lib.wb_close(self._c)
            self._c = None

    def __repr__(self):
        return "<wbroker.Client %s%s>" % (
            self.socket, "" if self._c is not None else " (closed)")

    # -- publish

    def publish(self, name, model, metadata=None):
        """Publishes an nn.Module's state_dict (or a dict name -> tensor) as
        a new version of model `name` and returns its number.

        Tensors are detached, moved to the CPU and written in C order.
        Tensors that are the same view of the same storage (tied weights)
        are stored once and published under each of their names.  metadata
        is a dict of str -> str.  Nothing is visible to readers unless the
        whole version commits."""
        torch = _torch()
        if isinstance(model, torch.nn.Module):
            sd = model.state_dict()
        elif isinstance(model, collections.abc.Mapping):
            sd = model
        else:
            raise TypeError("publish takes an nn.Module or a dict of tensors, "
                            "not %s" % type(model).__name__)
        items = []              # (key, tensor, dtype code, tied to)
        first = {}              # view identity -> first key with it
        for key, t in sd.items():
            if not isinstance(key, str):
                raise TypeError("state_dict keys must be str, not %r"
                                % (key,))
            if not isinstance(t, torch.Tensor):
                raise TypeError("state_dict[%r] is a %s, not a tensor"
                                % (key, type(t).__name__))
            t = t.detach()
            if t.layout != torch.strided or t.is_quantized:
                raise TypeError("state_dict[%r]: only dense tensors can be "
                                "published" % (key,))
            tied = None
            if t.numel() > 0:
                ident = (t.device, t.data_ptr(), t.dtype, tuple(t.shape),
                         t.stride())
                tied = first.setdefault(ident, key)
                tied = None if tied == key else tied
            if t.device.type != "cpu":
                t = t.cpu()
            items.append((key, t, _dtype_code(t.dtype, key), tied))
        specs, keep = _declare([(key, code, tuple(t.shape), tied)
                                for key, t, code, tied in items])
        meta = dict(metadata or {})
        versions = _versions_text(sd)
        if versions is not None:
            meta.setdefault(_lib.VERSIONS_KEY, versions)
        kvs, nmeta = _kvs(meta)
        lib = self._lib
        with self._lock:
            c = self._handle()
            p = ctypes.c_void_p()
            self._check(lib.wb_publish_begin(c, _enc(name), specs, len(items),
                                             kvs, nmeta, ctypes.byref(p)))
            try:
                for i, (key, t, _, tied) in enumerate(items):
                    if tied is None:
                        self._write(p, i, key, t)
            except BaseException:
                lib.wb_publish_abort(p)
                raise
            version = ctypes.c_uint64()
            self._check(lib.wb_publish_commit(p, ctypes.byref(version)))
            return version.value

    def _write(self, p, i, key, t):
        """Copies tensor t into slot i of publish p: a contiguous tensor
        with write(2), which fills fresh shared pages faster than a copy
        through a mapping; another through the mapping, in one pass."""
        need = t.numel() * t.element_size()
        if t.is_contiguous():
            self._check(self._lib.wb_publish_write(p, i, t.data_ptr(), need,
                                                   0))
            return
        nbytes = ctypes.c_size_t()
        ptr = self._lib.wb_publish_data(p, i, ctypes.byref(nbytes))
        if not ptr or nbytes.value != need:
            raise Error(_lib.WB_EINVAL, "tensor %r: daemon laid out %d bytes, "
                        "the tensor has %d" % (key, nbytes.value, need))
        torch = _torch()
        buf = (ctypes.c_ubyte * need).from_address(ptr)
        dst = torch.frombuffer(buf, dtype=t.dtype, count=t.numel())
        with torch.no_grad():
            dst.view(t.shape).copy_(t)
        del dst, buf

    def publish_file(self, path, name, metadata=None):
        """Publishes a .safetensors file as a new version of `name` and
        returns its number.  The header is validated first (FormatError);
        the file's metadata is kept, updated by `metadata`, and names a
        file made by `export` records as tied are tied again."""
        lib = self._lib
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            from ._safetensors import read_header
            h = read_header(f, size)
            by_name = {t.name: t for t in h.tensors}
            decl = [(t.name, _lib.DTYPE_CODES[t.dtype], t.shape, None)
                    for t in h.tensors]
            decl += [(alias, _lib.DTYPE_CODES[by_name[s].dtype],
                      by_name[s].shape, s) for alias, s in h.ties.items()]
            specs, keep = _declare(decl)
            meta = dict(h.metadata)
            meta.update(metadata or {})
            kvs, nmeta = _kvs(meta)
            with self._lock:
                c = self._handle()
                p = ctypes.c_void_p()
                self._check(lib.wb_publish_begin(c, _enc(name), specs,
                                                 len(decl), kvs, nmeta,
                                                 ctypes.byref(p)))
                try:
                    f.seek(h.data_start)
                    buf = ctypes.create_string_buffer(_COPY_CHUNK)
                    for i, t in enumerate(h.tensors):
                        self._read_into(f, p, i, t, path, buf)
                except BaseException:
                    lib.wb_publish_abort(p)
                    raise
                version = ctypes.c_uint64()
                self._check(lib.wb_publish_commit(p, ctypes.byref(version)))
                return version.value

    def _read_into(self, f, p, i, t, path, buf):
        """Copies tensor t of file f into slot i of publish p through buf
        (a ctypes buffer) and wb_publish_write().  The header was checked:
        t's bytes match its shape, which is what the daemon laid out."""
        need = t.end - t.begin
        mv = memoryview(buf).cast("B")
        done = 0
        try:
            while done < need:
                got = f.readinto(mv[:min(len(mv), need - done)])
                if not got:
                    raise Error(-26, "%s: file ended inside tensor %r"
                                % (path, t.name))
                self._check(self._lib.wb_publish_write(
                    p, i, ctypes.addressof(buf), got, done))
                done += got
        finally:
            mv.release()

    # -- map

    def state_dict(self, name, version=None):
        """The tensors of a version (None: the latest) as a dict name ->
        tensor, in the order the daemon stores them (an OrderedDict that
        carries, as torch's state_dict() does, the module versions
        publish() recorded as its _metadata).  The tensors view the shared memory
        copy-on-write, without a copy; writes to them stay private.  The
        memory is unmapped when the last of them is collected."""
        _torch()
        lib = self._lib
        m = ctypes.c_void_p()
        with self._lock:
            c = self._handle()
            self._check(lib.wb_map(c, _enc(name), version or 0,
                                   _lib.WB_MAP_PRIVATE, ctypes.byref(m)))
        owner = _Mapping(m)
        out = collections.OrderedDict()
        versions = _parse_versions(_dec(lib.wb_map_meta(
            m, _lib.VERSIONS_KEY.encode())))
        if versions is not None:
            # As torch's state_dict() carries them, for load_state_dict().
            out._metadata = collections.OrderedDict(
                (k, {"version": v}) for k, v in versions.items())
        for i in range(lib.wb_map_count(m)):
            t = _tensor_at(lib, m, i)
            dt = _torch_dtype(t.dtype)
            shape = tuple(t.shape[:t.ndim])
            out[_dec(t.name)] = _view(owner, t.data, t.nbytes, dt, shape)
        return out

    def metadata(self, name, version=None):
        """The metadata (dict str -> str) of a version (None: the
        latest)."""
        lib = self._lib
        m = ctypes.c_void_p()
        with self._lock:
            c = self._handle()
            self._check(lib.wb_map(c, _enc(name), version or 0,
                                   _lib.WB_MAP_PLAN, ctypes.byref(m)))
        try:
            meta = _metadata_of(lib, m)
            meta.pop(_lib.VERSIONS_KEY, None)
            return meta
        finally:
            lib.wb_unmap(m)

    def load_into(self, model, name, version=None, strict=True, include=None,
                  exclude=None, rename=None, rules=None,
                  ignore_mismatched_sizes=False):
        """Loads a version (None: the latest) of `name` into model.

        The daemon applies the rules (rules file first, then include,
        exclude and rename) against model.state_dict()'s schema and answers
        with a PyTorch-style report.  CPU targets then view the shared
        memory copy-on-write (zero-copy; Parameters stay the same objects,
        so ties and requires_grad are kept); other targets are copied into
        and listed in copied_keys.  A strict violation or size mismatch
        raises LoadError and leaves model untouched.  Returns a
        LoadResult."""
        return self._load(model, name, version, strict, include, exclude,
                          rename, rules, ignore_mismatched_sizes, plan=False)

    def plan(self, model, name, version=None, strict=True, include=None,
             exclude=None, rename=None, rules=None,
             ignore_mismatched_sizes=False):
        """Dry run of load_into(): the same report, nothing mapped or
        touched.  A load that would fail is reported in .error (the
        PyTorch-format text), not raised."""
        return self._load(model, name, version, strict, include, exclude,
                          rename, rules, ignore_mismatched_sizes, plan=True)

    def _load(self, model, name, version, strict, include, exclude, rename,
              rules, ignore, plan):
        torch = _torch()
        lib = self._lib
        if not isinstance(model, torch.nn.Module):
            raise TypeError("load_into takes an nn.Module, not %s"
                            % type(model).__name__)
        sd = model.state_dict(keep_vars=True)
        targets = {k: v for k, v in sd.items()
                   if isinstance(v, torch.Tensor)}
        flags = _lib.WB_MAP_PRIVATE
        if not strict:
            flags |= _lib.WB_MAP_NONSTRICT
        if ignore:
            flags |= _lib.WB_MAP_IGNORE_MISMATCH
        if plan:
            flags |= _lib.WB_MAP_PLAN
        schema = lib.wb_schema_new(_enc(type(model).__name__))
        if not schema:
            raise MemoryError("wb_schema_new")
        rs = None
        m = ctypes.c_void_p()
        try:
            for key, t in targets.items():
                shape = (ctypes.c_int64 * max(t.dim(), 1))(*t.shape)
                rc = lib.wb_schema_add(schema, _enc(key),
                                       _dtype_code(t.dtype, key), t.dim(),
                                       shape)
                if rc:
                    _raise(rc, "target key %r: %s"
                           % (key, _dec(lib.wb_strerror(rc))))
            rs = _Rules(include, exclude, rename, rules)
            with self._lock:
                c = self._handle()
                rc = lib.wb_load(c, _enc(name), version or 0, schema, rs.ptr,
                                 flags, ctypes.byref(m))
                if rc == _lib.WB_ELOAD:
                    text = _dec(lib.wb_map_error_text(m))
                    result = LoadResult._from_mapping(lib, m, text)
                    lib.wb_unmap(m)
                    m = ctypes.c_void_p()
                    text = self._fill_report(model, targets, name, result,
                                             None)
                    if text is not None:
                        if plan:
                            return result
                        raise LoadError(text, result)
                    # Nothing left but keys torch supplies itself: the same
                    # version, non-strict, gives the same matching.
                    rc = lib.wb_load(c, _enc(name), result.version, schema,
                                     rs.ptr, flags | _lib.WB_MAP_NONSTRICT,
                                     ctypes.byref(m))
                    if rc == _lib.WB_ELOAD:
                        text = _dec(lib.wb_map_error_text(m))
                        result = LoadResult._from_mapping(lib, m, text)
                        lib.wb_unmap(m)
                        raise LoadError(text, result)
                self._check(rc)
        finally:
            lib.wb_schema_free(schema)
            if rs is not None:
                rs.close()
        if plan:
            try:
                result = LoadResult._from_mapping(lib, m)
                self._fill_report(model, targets, name, result, m)
                return result
            finally:
                lib.wb_unmap(m)
        owner = _Mapping(m)
        result = LoadResult._from_mapping(lib, m)
        fills = self._fill_report(model, targets, name, result, m)
        self._apply(model, targets, owner, lib, m, result, fills)
        return result

    def _fill_report(self, model, targets, name, result, m):
        """Takes out of result the missing keys that torch's
        load_state_dict() would fill in itself (a BatchNorm's
        num_batches_tracked when the checkpoint's metadata gives the module
        no version 2, see _fills), and mends result.error to match.  m is
        the mapping when there is one (its metadata holds the recorded
        module versions), None after a refused load (they are asked for
        separately).  Returns the key -> value fills on success, or the
        mended error text (None when no error is left) after a refusal."""
        cands = _fill_candidates(model, targets, result.missing_keys)
        fills = {}
        if cands:
            lib = self._lib
            if m is not None:
                raw = lib.wb_map_meta(m, _lib.VERSIONS_KEY.encode())
            else:
                raw = self._meta_value(name, result.version,
                                       _lib.VERSIONS_KEY)
            fills = _fills(cands, _parse_versions(_dec(raw)))
        if fills:
            old = result.missing_keys
            result.missing_keys = [k for k in old if k not in fills]
            if result.error is not None:
                result.error = _drop_missing(result.error, type(model).__name__,
                                             old, result.missing_keys)
        return fills if m is not None else result.error

    def _meta_value(self, name, version, key):
        """The raw value (bytes or None) of one metadata entry of a
        version."""
        lib = self._lib
        m = ctypes.c_void_p()
        with self._lock:
            self._check(lib.wb_map(self._handle(), _enc(name), version,
                                   _lib.WB_MAP_PLAN, ctypes.byref(m)))
        try:
            raw = lib.wb_map_meta(m, key.encode())
            return None if raw is None else bytes(raw)
        finally:
            lib.wb_unmap(m)

    def _apply(self, model, targets, owner, lib, m, result, fills):
        """Points model's tensors at the mapped views (or copies into
        them).  Every view is built and checked before anything changes.
        Tied targets (one tensor under two keys) stay tied; two distinct
        target tensors fed by one tied source are not tied by the load: the
        second gets a copy."""
        torch = _torch()
        actions = []            # (target tensor, view, how)
        fallback = {}           # key -> view, for load_state_dict
        placed = {}             # mapped address -> target tensor viewing it
        for i in range(lib.wb_map_count(m)):
            t = _tensor_at(lib, m, i)
            key = _dec(t.name)
            dst = targets.get(key)
            if dst is None:
                raise Error(-2, "daemon mapped %r, which the target lacks"
                            % (key,))
            shape = tuple(t.shape[:t.ndim])
            dt = _torch_dtype(t.dtype)
            if dt != dst.dtype or shape != tuple(dst.shape):
                raise Error(-2, "daemon mapped %r as %s%s, the target has "
                            "%s%s" % (key, dt, list(shape), dst.dtype,
                                      list(dst.shape)))
            view = _view(owner, t.data, t.nbytes, dt, shape)
            if not _is_member(model, key, dst):
                fallback[key] = view
                result.copied_keys.append(key)
            elif (dst.device.type == "cpu" and dst.layout == torch.strided
                  and (not t.nbytes or placed.setdefault(t.data, dst) is dst)):
                actions.append((dst, view, "map"))
            else:
                actions.append((dst, view, "copy"))
                result.copied_keys.append(key)
        with torch.no_grad():
            for dst, view, how in actions:
                if how == "map":
                    dst.data = view
                else:
                    dst.copy_(view)
            for key, value in fills.items():
                targets[key].copy_(value)
        if fallback:
            model.load_state_dict(fallback, strict=False)

    # -- inspect

    def models(self):
        """The models the daemon holds, as a list of ModelInfo."""
        lib = self._lib
        arr = ctypes.POINTER(_lib.wb_model_info)()
        n = ctypes.c_size_t()
        with self._lock:
            self._check(lib.wb_list(self._handle(), ctypes.byref(arr),
                                    ctypes.byref(n)))
        try:
            return [ModelInfo(_dec(arr[i].name), arr[i].latest,
                              arr[i].nversions, arr[i].tensors, arr[i].bytes,
                              arr[i].readers) for i in range(n.value)]
        finally:
            lib.wb_model_info_free(arr, n.value)

    def status(self):
        """The daemon's Status."""
        st = _lib.wb_status()
        with self._lock:
            self._check(self._lib.wb_get_status(self._handle(),
                                                ctypes.byref(st)))
        return Status(version=_dec(st.version), uptime=st.uptime,
                      memory_used=st.memory_used,
                      memory_limit=st.memory_limit,
                      memory_shmem=st.memory_shmem, models=st.models,
                      versions=st.versions, clients=st.clients, pid=st.pid)

    def drop(self, name, version=None):
        """Drops one version, or (version None) every version of `name`.
        Tensors already mapped stay valid."""
        with self._lock:
            self._check(self._lib.wb_drop(self._handle(), _enc(name),
                                          version or 0))

    def _watch_once(self, name, after, timeout_ms):
        v = ctypes.c_uint64()
        with self._lock:
            self._check(self._lib.wb_watch(self._handle(), name, after,
                                           timeout_ms, ctypes.byref(v)))
        return v.value

    def watch(self, name, timeout=None):
        """Returns an iterator over the versions of `name` committed after
        this call (it blocks between them; if several commit while the
        caller is busy, the newest is yielded).  With a timeout (seconds),
        iteration stops after that long without a new version.  The model
        need not exist yet.  Waits are cut into one-second calls so that
        signals (Ctrl-C) are handled; use a client of its own for it, since
        each wait holds this client."""
        raw = _enc(name)
        return self._watch(raw, self._watch_once(raw, 0, 0), timeout)

    def _watch(self, raw, last, timeout):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 1000
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                wait = max(1, min(wait, int(left * 1000)))
            v = self._watch_once(raw, last, wait)
            if v > last:
                last = v
                yield v
                if deadline is not None:
                    deadline = time.monotonic() + timeout

    def export(self, name, path, version=None):
        """Writes a version (None: the latest) of `name` as a safetensors
        file at path (through a temporary file renamed into place) and
        returns the version written."""
        lib = self._lib
        m = ctypes.c_void_p()
        with self._lock:
            self._check(lib.wb_map(self._handle(), _enc(name), version or 0,
                                   _lib.WB_MAP_SHARED, ctypes.byref(m)))
        try:
            data = ctypes.c_void_p()
            size = ctypes.c_size_t()
            rc = lib.wb_map_image(m, ctypes.byref(data), ctypes.byref(size))
            if rc:
                _raise(rc)
            written = lib.wb_map_version(m)
            _write_file(path, data.value, size.value)
            return written
        finally:
            lib.wb_unmap(m)


def _is_member(model, key, tensor):
    """True if key names tensor itself among model's parameters or
    buffers (so that it can be repointed in place)."""
    prefix, _, leaf = key.rpartition(".")
    try:
        mod = model.get_submodule(prefix) if prefix else model
    except AttributeError:
        return False
    return (mod._parameters.get(leaf) is tensor or
            mod._buffers.get(leaf) is tensor)


def _check_replaceable(path):
    """Refuses a target that exists and is not a regular file (a device, a
    fifo, a directory, a symlink), as ``wbroker export`` does: replacing it
    would destroy something that is not a weights file."""
    import stat
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(
            "%s exists and is not a regular file: export refuses to replace "
            "it" % path) if stat.S_ISDIR(st.st_mode) else FileExistsError(
            "%s exists and is not a regular file: export refuses to replace "
            "it" % path)


def _write_file(path, data, size):
    """Writes size bytes at address data to path atomically: a temporary
    file in the same directory (mode 0666 less the umask), fsynced, then
    renamed over path."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    _check_replaceable(path)
    for attempt in range(100):
        tmp = os.path.join(d, ".%s.%d.%d.tmp" % (base, os.getpid(), attempt))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                         os.O_CLOEXEC, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError("no free temporary name next to %s" % path)
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            if size:
                mv = memoryview((ctypes.c_ubyte * size).from_address(data))
                mv = mv.cast("B")
                done = 0
                while done < size:
                    done += f.write(mv[done:done + (64 << 20)])
                mv.release()
            os.fsync(f.fileno())
        _check_replaceable(path)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
