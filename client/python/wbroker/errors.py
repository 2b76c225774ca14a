"""errors.py -- the exceptions of the wbroker package.

Every failure that libwbroker or the daemon reports becomes an Error (a
RuntimeError) carrying the library's code and its symbolic name; the few
that callers handle by kind have subclasses that are also the builtin
exception a Python program expects (KeyError, ConnectionError).
"""
from . import _lib

import re

__all__ = ["Error", "NotFoundError", "ConnectError", "LoadError",
           "MemoryLimitError", "FormatError", "SystemCallError",
           "UnusedRuleWarning"]


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


class PermissionDeniedError(Error, PermissionError):
    """The daemon's access policy or a model's owner refused the request
    (EPERM); a PermissionError whose message names the user, the action
    and the model."""


class LoadError(Error):
    """A load that violated strict or met a size mismatch (ELOAD).

    The message is PyTorch's load_state_dict error text; .result holds the
    report (a LoadResult).  The target was not touched."""

    def __init__(self, message, result):
        super().__init__(_lib.WB_ELOAD, message)
        self.result = result


class FormatError(Error, ValueError):
    """A safetensors file that does not follow the format (EFORMAT); a
    ValueError whose message says where and why."""

    def __init__(self, message=None):
        super().__init__(_lib.WB_EFORMAT, message)


def human_size(n):
    """n bytes as people read them: "512 B", "1.5 GiB", "4 GiB"."""
    if n < 1024:
        return "%d B" % n
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024.0
        if n < 1024 or unit == "PiB":
            text = "%.1f" % n
            return "%s %s" % (text[:-2] if text.endswith(".0") else text,
                              unit)


class MemoryLimitError(Error):
    """The daemon refused to take more memory (ELIMIT): a publish, or the
    converted copies a load asked for, would pass its --memory-limit.

    .needed is what the request needed, .used and .limit the daemon's
    memory in use and its limit (bytes, None when unknown); the message
    gives them in human sizes and says how to make room.  .detail is the
    daemon's own text."""

    def __init__(self, detail, used=None, limit=None):
        self.detail = detail
        what, self.needed = "the request", None
        m = re.match(r"(.*?)\s*\(?(\d+) bytes\)? would exceed", detail or "")
        if m:
            what, self.needed = m.group(1), int(m.group(2))
            what = re.sub(r"\b1 tensors\b", "1 tensor", what)
        m = re.search(r"\((\d+) of (\d+) bytes in use\)", detail or "")
        if m:
            used, limit = int(m.group(1)), int(m.group(2))
        self.used, self.limit = used, limit
        if self.needed is not None and used is not None and \
                limit is not None:
            text = "%s needs %s, %s of %s in use" % (
                what, human_size(self.needed), human_size(used),
                human_size(limit))
        elif self.needed is not None:
            text = "%s needs %s, more than the memory limit leaves" % (
                what, human_size(self.needed))
        else:
            text = detail or "memory limit reached"
        super().__init__(_lib.WB_ELIMIT, "%s: drop versions (Client.drop, "
                         "wbroker rm) or give wbrokerd a larger "
                         "--memory-limit" % text)


class UnusedRuleWarning(UserWarning):
    """A rule of a load or plan matched no key (it is listed in the
    report's unused_rules too): a rename= dict names whole keys, so
    {"layer1.": "fc1."} renames nothing; a prefix is renamed with
    prefix=("layer1.", "fc1.")."""


class SystemCallError(Error, OSError):
    """A system call failed (ESYS), here or in the daemon: also an OSError
    whose .errno is the system's code.  Raised as the builtin subclass
    that code means as well (FileNotFoundError for ENOENT,
    PermissionError for EACCES, ...), so `except FileNotFoundError`
    works as it does for open()."""

    def __init__(self, code, message=None):
        Error.__init__(self, code, message)


_SYS_CLASSES = {}               # errno -> SystemCallError subclass


def _sys_class(sys_errno):
    """The SystemCallError subclass for sys_errno: also the builtin
    OSError subclass Python raises for it, when there is one."""
    cls = _SYS_CLASSES.get(sys_errno)
    if cls is None:
        builtin = type(OSError(sys_errno, ""))
        if builtin is OSError:
            cls = SystemCallError
        else:
            cls = type(builtin.__name__, (SystemCallError, builtin),
                       {"__module__": "wbroker", "__doc__":
                        SystemCallError.__doc__})
        _SYS_CLASSES[sys_errno] = cls
    return cls


_ERROR_CLASSES = {
    _lib.WB_ENOMODEL: NotFoundError,
    _lib.WB_ENOVERSION: NotFoundError,
    _lib.WB_ECONNECT: ConnectError,
    _lib.WB_ECLOSED: ConnectError,
    _lib.WB_EPERM: PermissionDeniedError,
}


def _raise(code, detail=None, sys_errno=0):
    """Raises the Error (or subclass) of code with detail (str or bytes)
    as its message and sys_errno, when not 0, as its .errno."""
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    if code == _lib.WB_EFORMAT:
        e = FormatError(detail)
    elif code == _lib.WB_ESYS:
        e = (_sys_class(sys_errno) if sys_errno else SystemCallError)(
            code, detail)
    else:
        e = _ERROR_CLASSES.get(code, Error)(code, detail)
    if sys_errno:
        e.errno = sys_errno
    raise e
