"""publish.py -- writing versions: publish(), publish_file() and export().

The Client methods of the same names call these with themselves as the
first argument; they take the client's lock around every library call.
"""
import collections.abc
import ctypes
import json
import os

from . import _lib
from ._lib import enc as _enc
from .dtypes import dtype_code as _dtype_code
from .dtypes import torch as _torch
from .errors import Error, _raise

_COPY_CHUNK = 8 << 20          # Bytes per read when importing a file.
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


def publish_file(client, path, name, metadata=None):
    """Client.publish_file(): see there."""
    lib = client._lib
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
        with client._lock:
            c = client._handle()
            p = ctypes.c_void_p()
            client._check(lib.wb_publish_begin(c, _enc(name), specs,
                                               len(decl), kvs, nmeta,
                                               ctypes.byref(p)))
            try:
                f.seek(h.data_start)
                buf = ctypes.create_string_buffer(_COPY_CHUNK)
                for i, t in enumerate(h.tensors):
                    _read_into(client, f, p, i, t, path, buf)
            except BaseException:
                lib.wb_publish_abort(p)
                raise
            version = ctypes.c_uint64()
            client._check(lib.wb_publish_commit(p, ctypes.byref(version)))
            return version.value


def _read_into(client, f, p, i, t, path, buf):
    """Copies tensor t of file f into slot i of publish p through buf (a
    ctypes buffer) and wb_publish_write().  The header was checked: t's
    bytes match its shape, which is what the daemon laid out."""
    need = t.end - t.begin
    mv = memoryview(buf).cast("B")
    done = 0
    try:
        while done < need:
            got = f.readinto(mv[:min(len(mv), need - done)])
            if not got:
                raise Error(_lib.WB_EIO, "%s: file ended inside tensor %r"
                            % (path, t.name))
            client._check(client._lib.wb_publish_write(
                p, i, ctypes.addressof(buf), got, done))
            done += got
    finally:
        mv.release()


def export(client, name, path, version=None):
    """Client.export(): see there."""
    lib = client._lib
    m = ctypes.c_void_p()
    with client._lock:
        client._check(lib.wb_map(client._handle(), _enc(name), version or 0,
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
