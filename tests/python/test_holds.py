"""Holds from Python, as the README's own example uses them: a process
that loaded a model and closed its client keeps its version held (and
its weights readable) after retention retired it; the daemon's
accounting and the kernel's shared memory drop only when that process
lets go, by freeing its model or by being killed."""
import gc
import os
import signal
import subprocess
import sys
import time

import torch

import wbroker
from wbt_daemon import BUILD

MIB = 1 << 20
SIZE = 64 * MIB                  # Bytes of tensor data per version.

# A consumer: loads the model, closes its client, says its pid's version
# and a checksum, then waits for a line: "free" frees the model (and
# says "freed"), end of input exits.
CONSUMER = r"""
import gc, sys, torch, wbroker
model = torch.nn.Linear(%(n)d, 1024, bias=False)
with wbroker.connect() as c:
    r = c.load_into(model, "m")
print("loaded", r.version, float(model.weight.sum()), flush=True)
for line in sys.stdin:
    if line.strip() == "free":
        del model
        gc.collect()
        print("freed", flush=True)
"""


def shmem():
    """The kernel's Shmem (bytes), from /proc/meminfo."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no Shmem in /proc/meminfo")


def wait_for(pred, timeout=10):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def version(v):
    n = SIZE // (1024 * 4)
    return {"weight": torch.full((1024, n), float(v))}


def start_consumer(d):
    env = d.env()
    env.setdefault("WBROKER_LIB", os.path.join(BUILD, "libwbroker.so"))
    p = subprocess.Popen([sys.executable, "-c",
                          CONSUMER % {"n": SIZE // (1024 * 4)}],
                         env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    words = p.stdout.readline().split()
    assert words[:2] == ["loaded", "1"], words
    assert float(words[2]) == SIZE // 4
    return p


def run_retired_hold(make_daemon, release):
    d = make_daemon("--keep", "1")
    with wbroker.connect(d.socket) as c:
        assert c.publish("m", version(1)) == 1
        p = start_consumer(d)
        try:
            (h,) = c.holders("m")
            assert (h.pid, h.version) == (p.pid, 1) and h.bytes >= SIZE
            assert c.publish("m", version(2)) == 2       # Retires 1.
            assert [m.versions for m in c.models()] == [1]
            held = c.status().memory_used
            assert held >= 2 * SIZE
            before = shmem()
            time.sleep(0.2)
            # Still held: neither the daemon nor the kernel let go.
            assert [(h.pid, h.version) for h in c.holders("m")] == [(p.pid, 1)]
            assert c.status().memory_used == held
            release(p)
            assert wait_for(lambda: c.holders("m") == [], timeout=1.0)
            assert wait_for(lambda: c.status().memory_used <= held - SIZE)
            # The kernel freed the retired version's pages with the hold
            # (other processes' shared memory may move a little meanwhile).
            assert wait_for(lambda: shmem() <= before - SIZE // 2), \
                (before, shmem())
        finally:
            p.kill()
            p.wait()


def test_hold_outlives_client_and_ends_when_the_model_is_freed(make_daemon):
    def free(p):
        p.stdin.write("free\n")
        p.stdin.flush()
        assert p.stdout.readline() == "freed\n"
    run_retired_hold(make_daemon, free)


def test_hold_outlives_client_and_ends_with_sigkill(make_daemon):
    def kill(p):
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    run_retired_hold(make_daemon, kill)


def test_freed_views_release_the_hold_in_this_process(daemon):
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", {"w": torch.ones(1024)})
        model = torch.nn.Module()
        model.w = torch.nn.Parameter(torch.zeros(1024))
        c.load_into(model, "m")
    with wbroker.connect(daemon.socket) as c:
        assert [h.pid for h in c.holders()] == [os.getpid()]
        del model
        gc.collect()
        assert wait_for(lambda: c.holders() == [])
