"""publish.py -- writing versions: publish(), publish_file() and export().

The Client methods of the same names call these with themselves as the
first argument; they take the client's lock around every library call.
Files go through the library's one safetensors implementation
(wb_import_file, wb_export_file), the one the wbroker CLI calls.
"""
import collections.abc
import ctypes
import json
import os

from . import _lib
from ._lib import enc as _enc
from .dtypes import dtype_code as _dtype_code
from .dtypes import torch as _torch
from .errors import Error

_VERSIONS_MAX = 512 << 10      # Max chars of the recorded module versions.


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


def publish(client, name, model, metadata=None):
    """Client.publish(): see there."""
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
            raise TypeError("state_dict keys must be str, not %r" % (key,))
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
    lib = client._lib
    with client._lock:
        c = client._handle()
        p = ctypes.c_void_p()
        client._check(lib.wb_publish_begin(c, _enc(name), specs, len(items),
                                           kvs, nmeta, ctypes.byref(p)))
        try:
            for i, (key, t, _, tied) in enumerate(items):
                if tied is None:
                    _write(client, p, i, key, t)
        except BaseException:
            lib.wb_publish_abort(p)
            raise
        version = ctypes.c_uint64()
        client._check(lib.wb_publish_commit(p, ctypes.byref(version)))
        return version.value


def _write(client, p, i, key, t):
    """Copies tensor t into slot i of publish p: a contiguous tensor with
    write(2), which fills fresh shared pages faster than a copy through a
    mapping; another through the mapping, in one pass."""
    need = t.numel() * t.element_size()
    if t.is_contiguous():
        client._check(client._lib.wb_publish_write(p, i, t.data_ptr(), need,
                                                   0))
        return
    nbytes = ctypes.c_size_t()
    ptr = client._lib.wb_publish_data(p, i, ctypes.byref(nbytes))
    if not ptr or nbytes.value != need:
        raise Error(_lib.WB_EINVAL, "tensor %r: daemon laid out %d bytes, "
                    "the tensor has %d" % (key, nbytes.value, need))
    torch = _torch()
    buf = (ctypes.c_ubyte * need).from_address(ptr)
    dst = torch.frombuffer(buf, dtype=t.dtype, count=t.numel())
    with torch.no_grad():
        dst.view(t.shape).copy_(t)
    del dst, buf


# ------------------------------------------------------------------ files
#
# Safetensors files go through the library's one implementation
# (wb_import_file, wb_export_file: include/wbroker.h), which the wbroker
# CLI uses too: validation before any request, the atomic write.

_PROGRESS_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p,
                                ctypes.c_uint64, ctypes.c_uint64)


class _FileInfo(ctypes.Structure):
    """wb_file_info."""
    _fields_ = [("version", ctypes.c_uint64), ("tensors", ctypes.c_uint64),
                ("bytes", ctypes.c_uint64), ("files", ctypes.c_uint64)]


def _file_calls(lib):
    """Declares the library's file calls on lib (once is enough; again is
    harmless)."""
    p, s = ctypes.c_void_p, ctypes.c_char_p
    info = ctypes.POINTER(_FileInfo)
    lib.wb_import_file.restype = ctypes.c_int
    lib.wb_import_file.argtypes = [p, s, s, ctypes.POINTER(_lib.wb_kv),
                                   ctypes.c_size_t, _PROGRESS_FN, p, info]
    lib.wb_export_file.restype = ctypes.c_int
    lib.wb_export_file.argtypes = [p, s, ctypes.c_uint64, s, _PROGRESS_FN,
                                   p, info]


def _stoppable(call):
    """Runs call(progress) with a wb_progress_fn that stops the library's
    transfer when SIGINT comes (the publish is aborted, the temporary file
    removed), then raises KeyboardInterrupt.  While the library works no
    Python runs but this callback, so the default handler's exception
    would be raised, and lost, on the way into it: in the main thread the
    handler is replaced for the call by one that only takes note."""
    import signal
    import threading
    hit = []
    progress = _PROGRESS_FN(
        lambda user, done, total: _lib.WB_ESTATE if hit else 0)
    old = None
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        old = signal.signal(signal.SIGINT, lambda sig, frame: hit.append(sig))
    try:
        rc = call(progress)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    if hit:
        raise KeyboardInterrupt
    return rc


def publish_file(client, path, name, metadata=None):
    """Client.publish_file(): see there."""
    lib = client._lib
    _file_calls(lib)
    kvs, nmeta = _kvs(dict(metadata or {}))
    info = _FileInfo()
    with client._lock:
        c = client._handle()
        client._check(_stoppable(lambda progress: lib.wb_import_file(
            c, os.fsencode(path), _enc(name), kvs, nmeta, progress, None,
            ctypes.byref(info))))
    return info.version


def export(client, name, path, version=None):
    """Client.export(): see there."""
    lib = client._lib
    _file_calls(lib)
    info = _FileInfo()
    with client._lock:
        c = client._handle()
        client._check(_stoppable(lambda progress: lib.wb_export_file(
            c, _enc(name), version or 0, os.fsencode(path), progress, None,
            ctypes.byref(info))))
    return info.version
