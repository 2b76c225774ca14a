"""wbroker -- Python binding of libwbroker: PyTorch state_dicts in wbrokerd.

A thin ctypes layer over libwbroker.so (see include/wbroker.h)::

    import wbroker

    with wbroker.connect() as c:
        v = c.publish("resnet", model)                 # -> 1, 2, ...
        sd = c.state_dict("resnet")                    # zero-copy views
        r = c.load_into(target, "resnet", strict=False,
                        prefix=("module.", ""))    # strip DataParallel's
        r.missing_keys, r.unexpected_keys, r.version

Mapped tensors view the daemon's sealed shared memory copy-on-write: a
process that writes to them changes only its own pages.  A mapping is
unmapped when the last tensor viewing it is garbage-collected, by a
background thread, off the path of the call that dropped it (a reload);
flush_unmaps() waits until every such mapping is unmapped.

The library is $WBROKER_LIB if set, else the libwbroker.so a wheel ships
next to this package, else libwbroker found by ctypes (the
"libwbroker.so.0" soname that ``make install`` provides).  Importing the
package loads it and raises ImportError when it cannot be loaded or is of
another version than the package.  torch is imported on first use, so
models(), drop(), watch(), publish_file() and export() work without it.

Modules: errors (the exceptions), dtypes (safetensors and torch dtypes),
publish (publish, publish_file, export), load (state_dict, load_into,
plan and LoadResult), client (connect, Client, Holder), follow (Follower,
what Client.follow() returns), release (the unmapping thread,
flush_unmaps), _lib (the ctypes declarations).
"""
__version__ = "0.1.0"

from . import _lib  # noqa: E402

_lib.load(__version__)   # Fills the error codes and dtypes the modules use.

from .client import (Client, Holder, ModelInfo, Status, connect,  # noqa
                     socket_path)
from .errors import (ConnectError, Error, FormatError, LoadError,  # noqa
                     MemoryLimitError, NotFoundError, PermissionDeniedError,
                     SystemCallError,
                     UnusedRuleWarning)
from .follow import Follower  # noqa: E402
from .load import LoadResult  # noqa: E402
from .release import flush as flush_unmaps  # noqa: E402

__all__ = ["connect", "socket_path", "Client", "Error", "ConnectError",
           "LoadError", "MemoryLimitError", "NotFoundError", "FormatError",
           "PermissionDeniedError", "SystemCallError", "UnusedRuleWarning",
           "LoadResult", "ModelInfo", "Status", "Holder", "Follower",
           "flush_unmaps"]

# The public classes are the package's: tracebacks and reprs say
# wbroker.LoadError, whichever module defines it.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
