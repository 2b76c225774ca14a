"""load.py -- reading versions: state_dict(), load_into(), plan() and the
LoadResult report.

A load runs in two steps.  prepare() asks the daemon to resolve the rules
against the model's schema, maps the answer and builds and checks every
view; it raises (LoadError for a strict failure) before the model is
touched.  _PendingLoad.apply() then switches the model's tensors to those
views in one pass that cannot fail.  load_into() is both steps; following a
model prepares each new version first and applies it under the caller's
lock.
"""
import collections
import collections.abc
import ctypes
import json
import os
import re
import sys
import warnings

from . import _lib
from . import release
from ._lib import dec as _dec
from ._lib import enc as _enc
from .dtypes import dtype_code as _dtype_code
from .dtypes import itemsize as _itemsize
from .dtypes import torch as _torch
from .dtypes import torch_dtype as _torch_dtype
from .errors import Error, LoadError, UnusedRuleWarning, _raise

# ------------------------------------------------------------------ module
# versions and the keys torch fills in itself


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
    lives.  Collected, it is unmapped by release's thread, not by whatever
    call dropped the last view (a reload's; see release.py); close()
    unmaps at once."""

    __slots__ = ("_ptr", "_unmap", "__weakref__")

    def __init__(self, ptr):
        self._unmap = _lib.load().wb_unmap
        self._ptr = ptr
        release.start()

    def close(self):
        ptr, self._ptr = self._ptr, None
        if ptr:
            self._unmap(ptr)

    def __del__(self):
        ptr, self._ptr = self._ptr, None
        if ptr:
            release.release(self._unmap, ptr)


def _view(owner, data, nbytes, dtype, shape):
    """A tensor of dtype and shape viewing nbytes at address data, keeping
    owner alive as long as the tensor's storage lives."""
    torch = _torch()
    numel = 1
    for s in shape:
        numel *= s
    need = numel * _itemsize(dtype)
    if need != nbytes:
        raise Error(_lib.WB_ECORRUPT, "mapped tensor has %d bytes, its shape "
                    "needs %d" % (nbytes, need))
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
    keys that share a source with another; unused_rules: the rules that
    matched no key, each described as 'rule 2: prefix "module." -> ""'
    (or 'line 3: ...' for a line of a rules file); version: the version
    loaded; error: the PyTorch-format error text when the load fails or
    (for a plan) would fail, else None.  The key lists are plain lists, so they
    compare equal to those of torch's load_state_dict(strict=False) for
    the same pair."""

    __slots__ = ("missing_keys", "unexpected_keys", "mismatched_keys",
                 "cast_keys", "copied_keys", "aliased_keys", "unused_rules",
                 "version", "error")
    missing_keys: "list[str]"
    unexpected_keys: "list[str]"
    mismatched_keys: "list[str]"
    cast_keys: "list[str]"
    copied_keys: "list[str]"
    aliased_keys: "list[str]"
    unused_rules: "list[str]"
    version: int
    error: "str | None"

    def __init__(self, version=0, missing_keys=(), unexpected_keys=(),
                 mismatched_keys=(), cast_keys=(), copied_keys=(),
                 aliased_keys=(), unused_rules=(), error=None):
        self.version = version
        self.missing_keys = list(missing_keys)
        self.unexpected_keys = list(unexpected_keys)
        self.mismatched_keys = list(mismatched_keys)
        self.cast_keys = list(cast_keys)
        self.copied_keys = list(copied_keys)
        self.aliased_keys = list(aliased_keys)
        self.unused_rules = list(unused_rules)
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
                   unused_rules=keys(_lib.WB_KEYS_UNUSED_RULES),
                   error=error)


# ------------------------------------------------------------------ rules

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


def _prefix_pairs(prefix):
    """The (old, new) pairs of a prefix argument: one pair, or a list of
    pairs."""
    def is_pair(p):
        return (isinstance(p, (tuple, list)) and len(p) == 2 and
                all(isinstance(x, (str, bytes)) for x in p))
    if prefix is None:
        return []
    if is_pair(prefix):
        return [tuple(prefix)]
    if isinstance(prefix, (str, bytes)) or \
            not isinstance(prefix, collections.abc.Iterable):
        raise TypeError("prefix takes a pair (old, new) or a list of pairs, "
                        "not %r" % (prefix,))
    pairs = list(prefix)
    for p in pairs:
        if not is_pair(p):
            raise TypeError("prefix takes a pair (old, new) or a list of "
                            "pairs; %r is not a pair of str" % (p,))
    return [tuple(p) for p in pairs]


class _Rules:
    """Owns a wb_rules built from load_into()'s keyword arguments, in this
    order: the rules file, include, exclude, prefix, rename."""

    def __init__(self, include, exclude, rename, rules, prefix=None):
        lib = self._lib = _lib.load()
        self.ptr = None
        pairs = _prefix_pairs(prefix)
        if include is None and exclude is None and not rename and \
                rules is None and not pairs:
            return
        self.ptr = lib.wb_rules_new()
        if not self.ptr:
            raise MemoryError("wb_rules_new")
        try:
            self._fill(include, exclude, rename, rules, pairs)
        except BaseException:
            self.close()
            raise

    def _check(self, rc, what):
        if rc:
            _raise(rc, "%s: %s" % (what,
                                   _dec(self._lib.wb_rules_errmsg(self.ptr))))

    def _fill(self, include, exclude, rename, rules, pairs):
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
        for old, new in pairs:
            self._check(lib.wb_rules_rename_prefix(
                self.ptr, _enc(old, "prefix"), _enc(new, "prefix")),
                "prefix %r -> %r" % (old, new))
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


# ------------------------------------------------------------------ state_dict

def state_dict(client, name, version=None, populate=False):
    """Client.state_dict(): see there."""
    _torch()
    lib = client._lib
    m = ctypes.c_void_p()
    with client._lock:
        c = client._handle()
        client._check(lib.wb_map(c, _enc(name), version or 0,
                                 _lib.WB_MAP_PRIVATE |
                                 (_lib.WB_MAP_POPULATE if populate else 0),
                                 ctypes.byref(m)))
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


def metadata(client, name, version=None):
    """Client.metadata(): see there."""
    lib = client._lib
    m = ctypes.c_void_p()
    with client._lock:
        c = client._handle()
        client._check(lib.wb_map(c, _enc(name), version or 0,
                                 _lib.WB_MAP_PLAN, ctypes.byref(m)))
    try:
        meta = _metadata_of(lib, m)
        meta.pop(_lib.VERSIONS_KEY, None)
        return meta
    finally:
        lib.wb_unmap(m)


def _meta_value(client, name, version, key):
    """The raw value (bytes or None) of one metadata entry of a version."""
    lib = client._lib
    m = ctypes.c_void_p()
    with client._lock:
        client._check(lib.wb_map(client._handle(), _enc(name), version,
                                 _lib.WB_MAP_PLAN, ctypes.byref(m)))
    try:
        raw = lib.wb_map_meta(m, key.encode())
        return None if raw is None else bytes(raw)
    finally:
        lib.wb_unmap(m)


# ------------------------------------------------------------------ loads

# The keyword arguments of load_into(), plan() and _prepare_load() besides
# model, name and version, with their defaults.
LOAD_OPTIONS = {"strict": True, "include": None, "exclude": None,
                "rename": None, "prefix": None, "rules": None,
                "ignore_mismatched_sizes": False, "populate": False}


def _options(kw):
    """The full options of a load from its keyword arguments (TypeError
    for one that load_into() does not take)."""
    bad = sorted(set(kw) - set(LOAD_OPTIONS))
    if bad:
        raise TypeError("load_into() got unexpected keyword argument(s) %s"
                        % ", ".join(bad))
    opts = dict(LOAD_OPTIONS)
    opts.update(kw)
    return opts


def _resolve(client, model, name, version, opts, plan):
    """Asks the daemon to load version (None: the latest) of name into
    model's schema with the options opts (see LOAD_OPTIONS).  Returns
    (targets, m, result): targets the key -> tensor of
    model.state_dict(keep_vars=True), and either m the new wb_mapping
    (result None) or, for a plan that would fail, m None and result its
    report.  A load that fails raises LoadError (after warning about the
    rules that matched nothing)."""
    torch = _torch()
    lib = client._lib
    if not isinstance(model, torch.nn.Module):
        raise TypeError("load_into takes an nn.Module, not %s"
                        % type(model).__name__)
    sd = model.state_dict(keep_vars=True)
    targets = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    flags = _lib.WB_MAP_PRIVATE
    if not opts["strict"]:
        flags |= _lib.WB_MAP_NONSTRICT
    if opts["ignore_mismatched_sizes"]:
        flags |= _lib.WB_MAP_IGNORE_MISMATCH
    if plan:
        flags |= _lib.WB_MAP_PLAN
    elif opts["populate"]:
        flags |= _lib.WB_MAP_POPULATE
    schema = lib.wb_schema_new(_enc(type(model).__name__))
    if not schema:
        raise MemoryError("wb_schema_new")
    rs = None
    m = ctypes.c_void_p()
    try:
        for key, t in targets.items():
            shape = (ctypes.c_int64 * max(t.dim(), 1))(*t.shape)
            rc = lib.wb_schema_add(schema, _enc(key),
                                   _dtype_code(t.dtype, key), t.dim(), shape)
            if rc:
                _raise(rc, "target key %r: %s"
                       % (key, _dec(lib.wb_strerror(rc))))
        rs = _Rules(opts["include"], opts["exclude"], opts["rename"],
                    opts["rules"], opts["prefix"])
        with client._lock:
            c = client._handle()
            rc = lib.wb_load(c, _enc(name), version or 0, schema, rs.ptr,
                             flags, ctypes.byref(m))
            if rc == _lib.WB_ELOAD:
                text = _dec(lib.wb_map_error_text(m))
                result = LoadResult._from_mapping(lib, m, text)
                lib.wb_unmap(m)
                m = ctypes.c_void_p()
                text = _fill_report(client, model, targets, name, result,
                                    None)
                if text is not None:
                    return targets, None, _refused(result, plan)
                # Nothing left but keys torch supplies itself: the same
                # version, non-strict, gives the same matching.
                rc = lib.wb_load(c, _enc(name), result.version, schema,
                                 rs.ptr, flags | _lib.WB_MAP_NONSTRICT,
                                 ctypes.byref(m))
                if rc == _lib.WB_ELOAD:
                    text = _dec(lib.wb_map_error_text(m))
                    result = LoadResult._from_mapping(lib, m, text)
                    lib.wb_unmap(m)
                    return targets, None, _refused(result, plan)
            client._check(rc)
    finally:
        lib.wb_schema_free(schema)
        if rs is not None:
            rs.close()
    return targets, m, None


def _refused(result, plan):
    """The report of a refused load, its error text ending with a hint
    when a prefix rule would fix it; raises LoadError unless plan."""
    hint = _prefix_hint(result.missing_keys, result.unexpected_keys)
    if hint:
        result.error += hint
    _warn_unused(result)
    if plan:
        return result
    raise LoadError(result.error, result)


def _prefix_hint(missing, unexpected):
    """A last line for the error text of a load whose unexpected keys are
    missing keys with a first component (such as "module.") added or
    removed, naming the prefix= argument that makes them match; "" when
    there is none."""
    if not missing or not unexpected:
        return ""
    miss, unex = set(missing), set(unexpected)
    counts = {}
    for keys, other, strip in ((unex, miss, True), (miss, unex, False)):
        for k in keys:
            head, dot, rest = k.partition(".")
            if dot and rest in other:
                p = head + "."
                counts[(p, "") if strip else ("", p)] = \
                    counts.get((p, "") if strip else ("", p), 0) + 1
    if not counts:
        return ""
    (old, new), n = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    how = ("without the prefix %s" % json.dumps(old) if old else
           "with the prefix %s added" % json.dumps(new))
    return ("\n\tHint: %d of the unexpected keys match missing keys %s: "
            "load with prefix=(%s, %s)." % (n, how, json.dumps(old),
                                             json.dumps(new)))


def _warn_unused(result):
    """Warns (UnusedRuleWarning) about each rule of result that matched no
    key, pointing at the caller's line outside this package.  A rule of a
    rules file is named by its line; one of the keyword arguments by what
    it says (the library numbers it among all rules, file first)."""
    if not result.unused_rules:
        return
    # warnings.warn's stacklevel 2 is the frame of _warn_unused's caller.
    level, f = 2, sys._getframe(1)
    here = os.path.dirname(os.path.abspath(__file__))
    while f is not None and os.path.dirname(
            os.path.abspath(f.f_code.co_filename)) == here:
        level, f = level + 1, f.f_back
    for rule in result.unused_rules:
        what = re.sub(r"^rule \d+: ", "", rule)
        text = "rule matched no key: %s" % what
        exact = re.search(r': rename "(.*)" -> "(.*)"$', rule)
        if exact and exact.group(1).endswith("."):
            old, new = (json.dumps(g) for g in exact.groups())
            text += (" (rename= with a dict renames whole keys; to rename a "
                     "prefix, use prefix=(%s, %s))" % (old, new))
        warnings.warn(text, UnusedRuleWarning, stacklevel=level)


def _fill_report(client, model, targets, name, result, m):
    """Takes out of result the missing keys that torch's load_state_dict()
    would fill in itself (a BatchNorm's num_batches_tracked when the
    checkpoint's metadata gives the module no version 2, see _fills), and
    mends result.error to match.  m is the mapping when there is one (its
    metadata holds the recorded module versions), None after a refused load
    (they are asked for separately).  Returns the key -> value fills on
    success, or the mended error text (None when no error is left) after a
    refusal."""
    cands = _fill_candidates(model, targets, result.missing_keys)
    fills = {}
    if cands:
        if m is not None:
            raw = client._lib.wb_map_meta(m, _lib.VERSIONS_KEY.encode())
        else:
            raw = _meta_value(client, name, result.version,
                              _lib.VERSIONS_KEY)
        fills = _fills(cands, _parse_versions(_dec(raw)))
    if fills:
        old = result.missing_keys
        result.missing_keys = [k for k in old if k not in fills]
        if result.error is not None:
            result.error = _drop_missing(result.error, type(model).__name__,
                                         old, result.missing_keys)
    return fills if m is not None else result.error


def plan(client, model, name, version=None, **kw):
    """Client.plan(): see there."""
    targets, m, result = _resolve(client, model, name, version, _options(kw),
                                  plan=True)
    if m is None:
        return result
    lib = client._lib
    try:
        result = LoadResult._from_mapping(lib, m)
        _fill_report(client, model, targets, name, result, m)
    finally:
        lib.wb_unmap(m)
    _warn_unused(result)
    return result


def prepare(client, model, name, version=None, **kw):
    """Client._prepare_load(): the first step of a load, see there."""
    opts = _options(kw)
    targets, m, _ = _resolve(client, model, name, version, opts, plan=False)
    # From here on the mapping lives as long as a view of it does.
    owner = _Mapping(m)
    lib = client._lib
    result = LoadResult._from_mapping(lib, m)
    fills = _fill_report(client, model, targets, name, result, m)
    pending = _PendingLoad(model, targets, owner, lib, m, result, fills,
                           strict=opts["strict"])
    _warn_unused(result)
    return pending


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


def _is_meta(t):
    return t.device.type == "meta"


def _rebuilt(old, data):
    """A tensor of old's class viewing data, for a target on the meta
    device: a Parameter (or Parameter subclass) stays one, with old's
    requires_grad and attributes, as load_state_dict(assign=True) keeps
    them; a plain buffer is data itself."""
    torch = _torch()
    if type(old) is torch.Tensor:
        return data.requires_grad_(old.requires_grad) if old.requires_grad \
            else data
    new = torch.Tensor._make_subclass(type(old), data, old.requires_grad)
    new.__dict__.update(old.__dict__)
    return new


def _missing_text(target, keys):
    """PyTorch's error text for missing keys only."""
    return ("Error(s) in loading state_dict for %s:\n\tMissing key(s) in "
            "state_dict: %s. " % (target, ", ".join('"%s"' % k
                                                    for k in keys)))


class _PendingLoad:
    """A load that the daemon answered and that is ready to switch the
    model to: .result is the final LoadResult, .apply() switches every
    matched tensor of the model to its view (or copies into it) at once.

    Every view is built and checked when the object is made, so apply()
    does nothing that can fail for the load's sake.  A pending load never
    applied releases its version when it is collected.

    A target on the meta device has no memory to repoint or copy into: it
    is replaced, wherever the model holds it, by a tensor of its class
    viewing the mapped memory (assigned, as load_state_dict(assign=True)
    does), so a model built on the meta device is never allocated."""

    def __init__(self, model, targets, owner, lib, m, result, fills,
                 strict=True):
        torch = _torch()
        self.result = result
        self._model = model
        self._targets = targets
        self._fills = fills
        # (target tensor, view, "map", "copy" or "assign"); an "assign"
        # view is the mapped one, or a private copy where "copy" would be.
        self._actions = []
        self._fallback = {}     # key -> view, for load_state_dict
        self._applied = False
        placed = {}             # mapped address -> target tensor viewing it
        for i in range(lib.wb_map_count(m)):
            t = _tensor_at(lib, m, i)
            key = _dec(t.name)
            dst = targets.get(key)
            if dst is None:
                raise Error(_lib.WB_EPROTO, "daemon mapped %r, which the "
                            "target lacks" % (key,))
            shape = tuple(t.shape[:t.ndim])
            dt = _torch_dtype(t.dtype)
            if dt != dst.dtype or shape != tuple(dst.shape):
                raise Error(_lib.WB_EPROTO, "daemon mapped %r as %s%s, the "
                            "target has %s%s" % (key, dt, list(shape),
                                                 dst.dtype, list(dst.shape)))
            view = _view(owner, t.data, t.nbytes, dt, shape)
            if not _is_member(model, key, dst):
                self._fallback[key] = view
                result.copied_keys.append(key)
                continue
            # Tied targets (one tensor under two keys) stay tied; two
            # distinct targets fed by one tied source are not tied by the
            # load: the second gets a copy.
            own = not t.nbytes or placed.setdefault(t.data, dst) is dst
            if _is_meta(dst):
                if not own:
                    view = view.clone()
                    result.copied_keys.append(key)
                self._actions.append((dst, view, "assign"))
            elif (dst.device.type == "cpu" and dst.layout == torch.strided
                  and own):
                self._actions.append((dst, view, "map"))
            else:
                self._actions.append((dst, view, "copy"))
                result.copied_keys.append(key)
        for key, value in list(fills.items()):
            if _is_meta(targets[key]):
                fills[key] = value.detach().to("cpu", copy=True)
        # What no action reaches stays on meta (a key the load skipped, or
        # one only load_state_dict could fill, which cannot fill it there):
        # it is reported missing, unless a tie partner's load replaces it.
        assigned = {id(dst) for dst, _, how in self._actions
                    if how == "assign"}
        assigned.update(id(targets[k]) for k in fills)
        left = [k for k, t in targets.items()
                if _is_meta(t) and id(t) not in assigned]
        for k in left:
            if k in self._fallback:
                del self._fallback[k]
                result.copied_keys.remove(k)
        new = [k for k in left if k not in result.missing_keys]
        if new:
            result.missing_keys.extend(new)
            if strict:
                result.error = _missing_text(type(model).__name__, new)
                raise LoadError(result.error, result)

    def apply(self):
        """Points the model's tensors at the mapped views (or copies into
        them), fills what torch would fill, and returns .result.  A second
        call does nothing."""
        if self._applied:
            return self.result
        self._applied = True
        torch = _torch()
        replaced = {}           # id(meta target) -> (it, its replacement)
        with torch.no_grad():
            for dst, view, how in self._actions:
                if how == "map":
                    dst.data = view
                elif how == "copy":
                    dst.copy_(view)
                elif id(dst) in replaced:
                    replaced[id(dst)][1].data = view
                else:
                    replaced[id(dst)] = (dst, _rebuilt(dst, view))
            for key, value in self._fills.items():
                dst = self._targets[key]
                if _is_meta(dst):
                    replaced[id(dst)] = (dst, _rebuilt(dst, value))
                else:
                    dst.copy_(value)
        if replaced:
            # Every module that holds a replaced tensor (ties included)
            # gets its replacement.
            for mod in self._model.modules():
                for table in (mod._parameters, mod._buffers):
                    for leaf, v in table.items():
                        hit = replaced.get(id(v))
                        if hit is not None and hit[0] is v:
                            table[leaf] = hit[1]
        if self._fallback:
            self._model.load_state_dict(self._fallback, strict=False)
        # The views live on in the model; the version is released once the
        # model lets go of them.
        self._actions = self._fallback = self._fills = None
        return self.result
