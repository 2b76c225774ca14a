"""follow.py -- Client.follow(): keeps a model on the newest version of a
published model while other threads use it.

A Follower runs one background thread with a connection of its own.  It
loads the latest version (if there is one), then waits in a blocking
wb_watch() for the next commit -- no polling: stop() wakes it with
wb_watch_cancel().  Each new version is prepared completely first (every
view built and checked, through Client._prepare_load, with the arguments
load_into would take), then switched in one pass inside ``with lock:`` so
that a forward pass run under the same lock sees one version, never a
mix.  The follower then drops its own references to what it replaced, so
the version left behind is released as soon as nothing else views it.

A version that fails to load leaves the model on the one it had and is
reported to on_error(exc) (default: a RuntimeWarning); the follower goes on
watching.  When the daemon goes away the library reconnects on the next
call; the follower retries (backing off up to a second, waking at once on
stop()) and, once connected, loads whatever is newest there.
"""
import ctypes
import inspect
import threading
import warnings

from . import _lib
from ._lib import enc
from .errors import ConnectError, Error, NotFoundError

_RETRY_FIRST = 0.05             # Seconds before the first retry ...
_RETRY_MAX = 1.0                # ... doubling up to this.

class Follower:
    """Keeps `model` on the newest version of `name`; see Client.follow().

    .version is the version the model holds (0 before the first one);
    .wait() waits for a version; .stop() ends the thread.  Also a context
    manager that stops on exit."""

    def __init__(self, client, model, name, lock, on_error, load_kwargs):
        self._name = name
        self._raw = enc(name)
        self._model = model
        self._lock = lock
        self._on_error = on_error or self._warn
        self._kwargs = load_kwargs
        self._version = 0
        self._failed = 0            # Newest version that failed to load.
        self._loading = 0           # Version being loaded, for messages.
        self._done = False          # The thread has ended.
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._stop_lock = threading.Lock()
        # A misspelt load_into argument fails here, not at every version.
        inspect.signature(client._prepare_load).bind(model, name, None,
                                                     **load_kwargs)
        self._close_on_exit = False  # stop() came from the thread itself.
        self._c = type(client)(client.socket)     # The thread's own.
        self._lib = self._c._lib
        try:
            # Checks the name now, where the caller sees an error.
            self._latest = self._watch(0, 0)
        except Error:
            self._c.close()
            raise
        self._thread = threading.Thread(
            target=self._run, name="wbroker-follow-%s" % name, daemon=True)
        self._thread.start()

    # -- the public side

    @property
    def version(self):
        """The version the model holds now (0: none loaded yet); read
        under the follow lock, the version of the weights it sees."""
        return self._version

    def wait(self, version=None, timeout=None):
        """Waits until the model holds `version` or a newer one (None: a
        version newer than the one it holds at this call), at most timeout
        seconds (None: no limit).  Returns True when it does, False on
        timeout or once the follower has stopped without it."""
        with self._cond:
            want = self._version + 1 if version is None else version
            self._cond.wait_for(
                lambda: self._version >= want or self._done
                or self._stopping.is_set(), timeout)
            return self._version >= want

    def stop(self):
        """Stops following (at once, even while the thread waits for a
        commit; a load in progress finishes first, and is not applied) and
        closes the follower's connection.  The model keeps the version it
        holds.  Safe to call more than once, and from on_error."""
        self._stopping.set()
        with self._stop_lock:   # Never cancel a handle being closed.
            c = self._c._c
            if c is not None:
                self._lib.wb_watch_cancel(c)
        if threading.current_thread() is not self._thread:
            self._thread.join()
            with self._stop_lock:
                self._c.close()
        else:  # From on_error: the thread closes it on its way out.
            self._close_on_exit = True
        with self._cond:
            self._cond.notify_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return "<wbroker.Follower %r@%d%s>" % (
            self._name, self._version,
            " (stopped)" if self._done else "")

    # -- the thread

    def _watch(self, after, timeout_ms):
        """wb_watch on the follower's connection: the newest version when
        one newer than after is there (else after, on timeout), or None
        when stop() cancelled it; raises the package's errors."""
        v = ctypes.c_uint64()
        c = self._c
        with c._lock:
            rc = self._lib.wb_watch(c._handle(), self._raw, after, timeout_ms,
                                    ctypes.byref(v))
            if rc == _lib.WB_ECANCELED:
                return None
            c._check(rc)
        return v.value

    def _run(self):
        latest, retry = self._latest, _RETRY_FIRST
        while not self._stopping.is_set():
            try:
                if latest is None:  # After a lost connection: what is there?
                    latest = self._watch(0, 0)
                    if latest is None:
                        break
                while (latest and latest not in (self._version, self._failed)
                       and not self._stopping.is_set()):
                    newer = self._switch(latest)
                    if newer is None:
                        break
                    latest = newer
                if self._stopping.is_set():
                    break
                # Newer than what the model holds or last failed on; after a
                # restart that lost versions, newer than what is there.
                latest = self._watch(latest, -1)
                if latest is None:
                    break
                retry = _RETRY_FIRST
            except ConnectError:
                # The daemon went away: the next call reconnects.  Wait a
                # little (stop() cuts it short), then resynchronise.
                latest = None
                self._stopping.wait(retry)
                retry = min(retry * 2, _RETRY_MAX)
            except Exception as e:  # Not the daemon's: report, go on.
                self._report(e)
                latest = None
                self._stopping.wait(retry)
                retry = min(retry * 2, _RETRY_MAX)
        if self._close_on_exit:
            with self._stop_lock:
                self._c.close()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def _switch(self, version):
        """Loads version into the model, or reports why not.  Returns a
        newer version to load instead when this one went meanwhile, else
        None."""
        self._loading = version
        try:
            pending = self._c._prepare_load(self._model, self._name, version,
                                            **self._kwargs)
        except ConnectError:
            raise
        except NotFoundError as e:
            # Retired (or dropped) between the watch and the load, as when
            # a trainer commits faster than --keep allows: the newest will
            # do.  Only a version with nothing newer is a failure.
            newest = self._watch(0, 0)
            if newest is None:  # stop() came meanwhile.
                return None
            if newest > version:
                return newest
            self._failed = version
            self._report(e)
            return None
        except Exception as e:
            self._failed = version
            self._report(e)
            return None
        if self._stopping.is_set():
            return None
        # .version changes with the weights, so that a reader holding the
        # lock sees the version its weights are.
        if self._lock is not None:
            with self._lock:
                pending.apply()
                self._version = pending.result.version
        else:
            pending.apply()
            self._version = pending.result.version
        # The model's tensors now hold the new views; dropping the pending
        # load releases the follower's last reference to the old ones.
        del pending
        with self._cond:
            self._cond.notify_all()
        return None

    def _warn(self, exc):
        """The default on_error: a RuntimeWarning naming the versions."""
        warnings.warn("wbroker: following %r: version %d not loaded, the "
                      "model stays on version %d: %s"
                      % (self._name, self._loading, self._version, exc),
                      RuntimeWarning, stacklevel=2)

    def _report(self, exc):
        try:
            self._on_error(exc)
        except Exception as e:  # on_error must not end the follower.
            warnings.warn("wbroker: following %r: on_error raised %r"
                          % (self._name, e), RuntimeWarning)
