"""Unmapping off the caller's path: the mapping whose last view died is
handed to one background thread, which calls wb_unmap().

Unmapping a resident gigabyte takes the kernel about 10 ms (4 KiB pages),
and the last view of a version usually dies inside a call that has better
things to do: load_into() or a follower's switch repointing the model at
the next version.  So a mapping's finalizer only queues it; the thread
unmaps it at once (ctypes lets go of the GIL during the call), after which
the daemon sees the hold end as before.  flush() waits until every
mapping queued so far is unmapped: for a test, or for a caller that must
know the daemon can free a version now.

The queue is a queue.SimpleQueue, whose put() may be called from a
finalizer at any moment, even inside the thread's own code.  A child made
by fork() starts with a new queue and no thread; mappings queued but not
yet unmapped at the fork are the parent's to release (the child's copies
go when it exits).
"""
import os
import queue
import threading

_queue = queue.SimpleQueue()
_thread = None
_start_lock = threading.Lock()


def _run(q):
    while True:
        item = q.get()
        if isinstance(item, threading.Event):
            item.set()          # A flush: everything before it is done.
            continue
        unmap, ptr = item
        try:
            unmap(ptr)
        except Exception:       # noqa: BLE001 -- never let the thread die.
            pass
        del item, unmap, ptr


def start():
    """Starts the thread unless it runs.  Called where a mapping is made
    (ordinary code, never a finalizer, which must not start threads)."""
    global _thread
    if _thread is not None:
        return
    with _start_lock:
        if _thread is None:
            t = threading.Thread(target=_run, args=(_queue,),
                                 name="wbroker-unmap", daemon=True)
            t.start()
            _thread = t


def release(unmap, ptr):
    """Queues ptr for unmap(ptr) on the thread; unmaps at once when the
    thread does not run (it was never started, or the interpreter is
    shutting down)."""
    if _thread is None or not _thread.is_alive():
        unmap(ptr)
        return
    _queue.put((unmap, ptr))


def flush(timeout=10.0):
    """Waits until every mapping whose last view died before the call has
    been unmapped (so the daemon can see its hold end).  Returns True, or
    False when timeout seconds passed first."""
    if _thread is None or not _thread.is_alive():
        return True
    done = threading.Event()
    _queue.put(done)
    return done.wait(timeout)


def _after_fork():
    global _queue, _thread, _start_lock
    _queue = queue.SimpleQueue()
    _thread = None
    _start_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
