"""client.py -- the connection to wbrokerd: connect(), Client and the
small records its inspection calls return.

Client's methods that move tensors live in publish.py and load.py; the
methods here hold the connection, its lock, and the calls that move none.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
import typing
from typing import Dict, Iterator, List, Mapping, Optional, Union

from . import _lib
from . import load as _load
from . import publish as _publish
from ._lib import dec as _dec
from ._lib import enc as _enc
from .errors import (ConnectError, Error, MemoryLimitError,
                     PermissionDeniedError, _raise)

if typing.TYPE_CHECKING:     # Only for the annotations: torch loads lazily.
    import torch

    from .load import LoadResult, _PendingLoad

__all__ = ["connect", "socket_path", "Client", "ModelInfo", "Status",
           "Holder"]

# What the rules arguments of load_into(), plan() and _prepare_load() take.
Rename = Union[Mapping[str, str], "list[tuple[str, str]]"]
Prefix = Union["tuple[str, str]", "list[tuple[str, str]]"]
Globs = Union[str, List[str]]


class _Record:
    """A record of named fields (its __slots__, in order), given by
    position or by name; fields in _defaults may be left out."""

    __slots__ = ()
    _defaults: Dict[str, object] = {}

    def __init__(self, *args, **kw):
        if len(args) > len(self.__slots__):
            raise TypeError("%s takes %d fields" % (type(self).__name__,
                                                    len(self.__slots__)))
        values = dict(self._defaults)
        values.update(zip(self.__slots__, args))
        values.update(kw)
        missing = [k for k in self.__slots__ if k not in values]
        if missing:
            raise TypeError("%s lacks %s" % (type(self).__name__,
                                             ", ".join(missing)))
        for k in self.__slots__:
            setattr(self, k, values[k])

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join(
            "%s=%r" % (k, getattr(self, k)) for k in self.__slots__))


class ModelInfo(_Record):
    """One model of models(): name, version (latest), versions (held),
    tensors and bytes (of the latest version), readers (processes mapping
    any of its versions), pinned (pinned versions among versions), owner
    (uid of the user who first published it, None from an older daemon),
    digest (XXH3-128 of the latest version's image, 32 hex digits; "" from
    an older daemon)."""

    __slots__ = ("name", "version", "versions", "tensors", "bytes",
                 "readers", "pinned", "owner", "digest")
    _defaults = {"pinned": 0, "owner": None, "digest": ""}


class Holder(_Record):
    """One hold of holders(): a process that maps a version.  pid, uid,
    comm (its command name), model, version, bytes (of shared memory the
    mapping covers) and since (when it was made, seconds since the
    epoch)."""

    __slots__ = ("pid", "uid", "comm", "model", "version", "bytes", "since")


class Status(_Record):
    """The daemon's status: version, uptime (s), memory_used (bytes
    charged to the limit), memory_limit, memory_shmem (bytes the kernel
    has allocated to the daemon's segments), models, versions, clients,
    pid."""

    __slots__ = ("version", "uptime", "memory_used", "memory_limit",
                 "memory_shmem", "models", "versions", "clients", "pid")


def socket_path(socket: Optional[str] = None) -> str:
    """The socket path a client uses: socket, else $WBROKER_SOCKET, else
    the per-user default (as every wbroker program resolves it)."""
    lib = _lib.load()
    buf = ctypes.create_string_buffer(4096)
    arg = os.fsencode(socket) if socket is not None else None
    if lib.wb_socket_path(arg, buf, len(buf)) < 0:
        raise ValueError("socket path too long: %r" % (socket,))
    return os.fsdecode(buf.value)


def _connect_text(detail, path):
    """The message of a failed connect: the library's, said once, with
    what a Python program can do about it."""
    if not detail:
        detail = "no wbrokerd listens at %s" % path
    head, sep, _ = detail.partition(": start one")
    if sep or detail.startswith("no wbrokerd listens at"):
        return ("%s: start it (wbrokerd; make run in a checkout; systemctl "
                "start wbrokerd.socket), or pass its socket to "
                "wbroker.connect(socket=...) or in WBROKER_SOCKET" % head)
    return detail


def connect(socket: Optional[str] = None) -> Client:
    """Connects to wbrokerd (socket=None: the default path) and returns a
    Client, usable as a context manager.  Raises ConnectError naming the
    socket path when the daemon cannot be reached."""
    return Client(socket)


class Client:
    """A connection to wbrokerd.  Calls are blocking; one call runs at a
    time per client (a lock serialises threads sharing it)."""

    def __init__(self, socket: Optional[str] = None):
        lib = self._lib = _lib.load()
        self._c = None
        self._lock = threading.RLock()
        self.socket = socket_path(socket)
        h = ctypes.c_void_p()
        rc = lib.wb_connect(os.fsencode(self.socket), ctypes.byref(h))
        if rc:
            detail = _dec(lib.wb_errmsg(h)) if h.value else None
            lib.wb_close(h)
            if rc in (_lib.WB_ECONNECT, _lib.WB_ECLOSED, _lib.WB_EPERM):
                # EPERM (the socket's mode, an untrusted daemon, or the
                # daemon's access policy) is a PermissionError.
                cls = (PermissionDeniedError if rc == _lib.WB_EPERM
                       else ConnectError)
                e = cls(rc, _connect_text(detail, self.socket))
                e.socket = self.socket
                raise e
            _raise(rc, detail)
        self._c = h

    # -- plumbing

    def _handle(self):
        if self._c is None:
            raise Error(_lib.WB_ESTATE, "client is closed")
        return self._c

    def _check(self, rc):
        """Raises the Error of a negative rc with the handle's detail;
        returns rc otherwise."""
        if rc < 0:
            detail = _dec(self._lib.wb_errmsg(self._c))
            if rc == _lib.WB_ELIMIT:
                raise self._limit_error(detail)
            _raise(rc, detail, self._lib.wb_sys_errno(self._c))
        return rc

    def _limit_error(self, detail):
        """The MemoryLimitError of an ELIMIT refusal, with the daemon's
        memory in use and limit asked for when its text lacks them."""
        used = limit = None
        if detail is None or " in use)" not in detail:
            st = _lib.wb_status()
            if self._lib.wb_get_status(self._c, ctypes.byref(st)) == 0:
                used, limit = st.memory_used, st.memory_limit
        return MemoryLimitError(detail, used, limit)

    def close(self) -> None:
        """Closes the connection.  Tensors mapped through it stay valid."""
        with self._lock:
            c, self._c = self._c, None
            if c is not None:
                self._lib.wb_close(c)

    def __enter__(self) -> Client:
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

    def publish(self, name: str,
                model: Union[torch.nn.Module, Mapping[str, torch.Tensor]],
                metadata: Optional[Mapping[str, str]] = None) -> int:
        """Publishes an nn.Module's state_dict (or a dict name -> tensor) as
        a new version of model `name` and returns its number.

        Tensors are detached, moved to the CPU and written in C order.
        Tensors that are the same view of the same storage (tied weights)
        are stored once and published under each of their names.  metadata
        is a dict of str -> str.  Nothing is visible to readers unless the
        whole version commits."""
        return _publish.publish(self, name, model, metadata)

    def publish_file(self, path: Union[str, os.PathLike], name: str,
                     metadata: Optional[Mapping[str, str]] = None) -> int:
        """Publishes a .safetensors file, or a sharded checkpoint (its
        model.safetensors.index.json, or a directory holding it or
        model.safetensors), as one new version of `name` and returns its
        number.  Every header (and the index) is validated before anything
        is published (FormatError naming the file and tensor); the files'
        metadata is kept, updated by `metadata`, and names a file made by
        `export` records as tied are tied again.  Ctrl-C aborts it
        (KeyboardInterrupt, nothing published)."""
        return _publish.publish_file(self, path, name, metadata)

    def export(self, name: str, path: Union[str, os.PathLike],
               version: Optional[int] = None) -> int:
        """Writes a version (None: the latest) of `name` as a safetensors
        file at path and returns the version written: through a fresh
        temporary file, synced and renamed over path, so that path is the
        old file or the new one.  path must be absent or a regular file
        (anything else is an Error, EINVAL).  Ctrl-C stops it
        (KeyboardInterrupt, path untouched, no temporary file left)."""
        return _publish.export(self, name, path, version)

    # -- map

    def state_dict(self, name: str, version: Optional[int] = None,
                   populate: bool = False) -> Dict[str, torch.Tensor]:
        """The tensors of a version (None: the latest) as a dict name ->
        tensor, in the order the daemon stores them (an OrderedDict that
        carries, as torch's state_dict() does, the module versions
        publish() recorded as its _metadata).  The tensors view the shared
        memory copy-on-write, without a copy; writes to them stay private.
        The memory is unmapped when the last of them is collected.
        populate=True makes every page resident before returning (no page
        fault on first use)."""
        return _load.state_dict(self, name, version, populate)

    def metadata(self, name: str, version: Optional[int] = None
                 ) -> Dict[str, str]:
        """The metadata (dict str -> str) of a version (None: the
        latest)."""
        return _load.metadata(self, name, version)

    def load_into(self, model: torch.nn.Module, name: str,
                  version: Optional[int] = None, strict: bool = True,
                  include: Optional[Globs] = None,
                  exclude: Optional[Globs] = None,
                  rename: Optional[Rename] = None,
                  prefix: Optional[Prefix] = None,
                  rules: Optional[Union[str, os.PathLike]] = None,
                  ignore_mismatched_sizes: bool = False,
                  populate: bool = False) -> LoadResult:
        """Loads a version (None: the latest) of `name` into model.

        The daemon applies the rules against model.state_dict()'s schema
        and answers with the report torch's load_state_dict() would give.
        CPU targets then view the shared memory copy-on-write (zero-copy;
        Parameters stay the same objects, so ties and requires_grad are
        kept); other targets are copied into and listed in copied_keys.
        A model built on the meta device gets the views without being
        allocated first.

        strict: fail (LoadError, model untouched) on any missing,
        unexpected or size-mismatched key; strict=False reports missing
        and unexpected keys and skips them.  ignore_mismatched_sizes: skip
        and report size mismatches instead of failing.  The rules apply in
        this order: rules (the text of a rules file, or a path to one),
        include and exclude (globs on source names, exclude wins), prefix
        (a pair (old, new) or a list of pairs: ("module.", "") strips a
        DataParallel prefix), rename (a dict of exact names, or a list of
        (pattern, replacement) regular expressions matching whole keys).
        A rule that matches no key is listed in unused_rules and warned
        about (UnusedRuleWarning).  populate=True makes every shared page
        resident before returning, for a server that wants no page fault
        on its first request.  Returns a LoadResult."""
        return self._prepare_load(
            model, name, version, strict=strict, include=include,
            exclude=exclude, rename=rename, prefix=prefix, rules=rules,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
            populate=populate).apply()

    def plan(self, model: torch.nn.Module, name: str,
             version: Optional[int] = None, strict: bool = True,
             include: Optional[Globs] = None,
             exclude: Optional[Globs] = None,
             rename: Optional[Rename] = None,
             prefix: Optional[Prefix] = None,
             rules: Optional[Union[str, os.PathLike]] = None,
             ignore_mismatched_sizes: bool = False) -> LoadResult:
        """Dry run of load_into(): the same report, nothing mapped or
        touched.  A load that would fail is reported in .error (the
        PyTorch-format text), not raised."""
        return _load.plan(self, model, name, version, strict=strict,
                          include=include, exclude=exclude, rename=rename,
                          prefix=prefix, rules=rules,
                          ignore_mismatched_sizes=ignore_mismatched_sizes)

    def _prepare_load(self, model: torch.nn.Module, name: str,
                      version: Optional[int] = None, strict: bool = True,
                      include: Optional[Globs] = None,
                      exclude: Optional[Globs] = None,
                      rename: Optional[Rename] = None,
                      prefix: Optional[Prefix] = None,
                      rules: Optional[Union[str, os.PathLike]] = None,
                      ignore_mismatched_sizes: bool = False,
                      populate: bool = False) -> _PendingLoad:
        """The first step of load_into(), with the same arguments: asks the
        daemon, maps its answer and checks every view, without touching
        model.  Returns a pending load whose .result is the LoadResult and
        whose .apply() switches all of model's matched tensors at once
        (and cannot fail).  Raises as load_into() does, LoadError for a
        strict failure."""
        return _load.prepare(self, model, name, version, strict=strict,
                             include=include, exclude=exclude, rename=rename,
                             prefix=prefix, rules=rules,
                             ignore_mismatched_sizes=ignore_mismatched_sizes,
                             populate=populate)

    def follow(self, model, name, lock=None, on_error=None,
               **load_into_arguments):
        """Keeps model on the newest version of `name` from now on and
        returns the Follower doing it (.version, .wait(), .stop()).

        A background thread with a connection of its own loads the latest
        version (if any), then waits for each new commit (a blocking watch,
        woken by stop()).  It prepares every new version completely, with
        the load_into arguments given here, then switches all of model's
        tensors in one pass, inside ``with lock:`` when a lock (any context
        manager) is given: a forward pass run under the same lock sees one
        version, never a mix.  It then drops its references to the version
        left behind, which is released once nothing else views it.  A
        version that fails to load leaves model on the one it had and is
        passed to on_error(exception) (default: a RuntimeWarning).  When
        the daemon restarts, the follower reconnects and goes on by itself.
        Raises at once for an invalid name or an unreachable daemon."""
        from .follow import Follower
        return Follower(self, model, name, lock, on_error, load_into_arguments)

    # -- inspect

    def models(self) -> List[ModelInfo]:
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
                              arr[i].readers, arr[i].pinned,
                              None if arr[i].owner == 0xFFFFFFFF
                              else arr[i].owner, arr[i].digest.decode())
                    for i in range(n.value)]
        finally:
            lib.wb_model_info_free(arr, n.value)

    def status(self) -> Status:
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

    def drop(self, name: str, version: Optional[int] = None) -> None:
        """Drops one version, or (version None) every version of `name`.
        Tensors already mapped stay valid."""
        with self._lock:
            self._check(self._lib.wb_drop(self._handle(), _enc(name),
                                          version or 0))

    def pin(self, name: str, version: Optional[int] = None) -> None:
        """Pins a version (None: the latest) of `name`, so that retention
        (wbrokerd --keep) never retires it; pinning it again changes
        nothing."""
        with self._lock:
            self._check(self._lib.wb_pin(
                self._handle(), _enc(name), version or 0))

    def unpin(self, name: str, version: Optional[int] = None) -> None:
        """Removes the pin of a version (None: the latest) of `name`;
        retention then runs at once, as after a commit."""
        with self._lock:
            self._check(self._lib.wb_unpin(
                self._handle(), _enc(name), version or 0))

    def holders(self, name: Optional[str] = None) -> "list[Holder]":
        """The processes that map versions of `name` (None: of every
        model), newest first, as a list of Holder."""
        lib = self._lib
        arr = ctypes.POINTER(_lib.wb_holder)()
        n = ctypes.c_size_t()
        with self._lock:
            self._check(lib.wb_holders(
                self._handle(), None if name is None else _enc(name),
                ctypes.byref(arr), ctypes.byref(n)))
        try:
            return [Holder(h.pid, h.uid, _dec(h.comm), _dec(h.model),
                           h.version, h.bytes, h.since)
                    for h in (arr[i] for i in range(n.value))]
        finally:
            lib.wb_holders_free(arr, n.value)

    def _watch_once(self, name, after, timeout_ms):
        v = ctypes.c_uint64()
        with self._lock:
            self._check(self._lib.wb_watch(self._handle(), name, after,
                                           timeout_ms, ctypes.byref(v)))
        return v.value

    def watch(self, name: str, timeout: Optional[float] = None
              ) -> Iterator[int]:
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
