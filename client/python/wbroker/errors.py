"""errors.py -- the exceptions of the wbroker package.

Every failure that libwbroker or the daemon reports becomes an Error (a
RuntimeError) carrying the library's code and its symbolic name; the few
that callers handle by kind have subclasses that are also the builtin
exception a Python program expects (KeyError, ConnectionError).
"""
from . import _lib
from ._safetensors import FormatError

__all__ = ["Error", "NotFoundError", "ConnectError", "LoadError",
           "FormatError", "UnusedRuleWarning"]


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


class UnusedRuleWarning(UserWarning):
    """A rule of a load or plan matched no key (it is listed in the
    report's unused_rules too): a rename= dict names whole keys, so
    {"layer1.": "fc1."} renames nothing; a prefix is renamed with
    prefix=("layer1.", "fc1.")."""


_ERROR_CLASSES = {
    _lib.WB_ENOMODEL: NotFoundError,
    _lib.WB_ENOVERSION: NotFoundError,
    _lib.WB_ECONNECT: ConnectError,
    _lib.WB_ECLOSED: ConnectError,
}


def _raise(code, detail=None, sys_errno=0):
    """Raises the Error (or subclass) of code with detail (str or bytes)
    as its message and sys_errno, when not 0, as its .errno."""
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    e = _ERROR_CLASSES.get(code, Error)(code, detail)
    if sys_errno:
        e.errno = sys_errno
    raise e
