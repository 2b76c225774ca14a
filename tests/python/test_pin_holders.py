"""Client.pin(), unpin() and holders() against a real daemon with
retention (--keep 2), and what a follower holds."""
import gc
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import wbroker
from wbt_daemon import BUILD

HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")
sys.path.insert(0, HELPERS)

from follow_trainer import filled  # noqa: E402


def publish(c, name, n):
    return [c.publish(name, {"w": torch.full((1024,), float(i))})
            for i in range(n)]


def listed(c, name):
    return {m.name: m for m in c.models()}[name].versions


def wait_for(pred, timeout=10):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_pin_keeps_a_version_through_retention(make_daemon):
    d = make_daemon("--keep", "2")
    with wbroker.connect(d.socket) as c:
        assert publish(c, "m", 2) == [1, 2]
        c.pin("m", 1)
        c.pin("m", 1)                   # Again: nothing changes.
        publish(c, "m", 3)              # 3, 4, 5: 2..3 retire, 1 stays.
        assert listed(c, "m") == 3
        publish(c, "other", 1)          # A second row: the struct's size.
        info = {m.name: m for m in c.models()}
        assert (info["m"].pinned, info["other"].pinned) == (1, 0)
        assert info["other"].version == 1 and info["m"].version == 5
        assert c.state_dict("m", 1)["w"][0].item() == 0.0
        with pytest.raises(wbroker.NotFoundError):
            c.state_dict("m", 3)
        c.unpin("m", 1)                 # Retention runs at once.
        assert listed(c, "m") == 2
        with pytest.raises(wbroker.NotFoundError):
            c.state_dict("m", 1)
        c.pin("m")                      # The latest, 5.
        publish(c, "m", 2)              # 6, 7: 5 stays pinned.
        assert c.state_dict("m", 5)["w"][0].item() == 2.0
        c.unpin("m", 5)
        c.unpin("m", 7)                 # Not pinned: fine.


def test_pin_errors(daemon):
    with wbroker.connect(daemon.socket) as c:
        publish(c, "m", 1)
        with pytest.raises(wbroker.NotFoundError) as e:
            c.pin("nope")
        assert e.value.name == "ENOMODEL"
        with pytest.raises(wbroker.NotFoundError) as e:
            c.unpin("m", 9)
        assert e.value.name == "ENOVERSION"
        with pytest.raises(wbroker.Error) as e:
            c.pin("")
        assert e.value.name == "ENAME"
        with pytest.raises(wbroker.NotFoundError):
            c.holders("nope")


def test_holders_name_this_process_and_a_child(daemon):
    with wbroker.connect(daemon.socket) as c:
        publish(c, "m", 2)
        assert c.holders("m") == []
        sd = c.state_dict("m", 1)
        hs = c.holders("m")
        assert len(hs) == 1
        h = hs[0]
        assert (h.pid, h.uid, h.model, h.version) == (os.getpid(),
                                                      os.getuid(), "m", 1)
        assert h.bytes >= 4096 and isinstance(h.comm, str) and h.comm
        assert abs(h.since - time.time()) < 60
        assert "pid=%d" % os.getpid() in repr(h)
        env = daemon.env()
        env.setdefault("WBROKER_LIB", os.path.join(BUILD, "libwbroker.so"))
        child = subprocess.Popen(
            [sys.executable, "-c",
             "import sys, wbroker\n"
             "sd = wbroker.connect().state_dict('m', 2)\n"
             "print('ready', flush=True)\n"
             "sys.stdin.read()\n"],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\n"
        all_ = c.holders()
        assert {(h.pid, h.version) for h in all_} == {(os.getpid(), 1),
                                                     (child.pid, 2)}
        child.stdin.close()
        assert child.wait(30) == 0
        assert wait_for(lambda: len(c.holders("m")) == 1)
        del sd
        gc.collect()
        assert wait_for(lambda: c.holders("m") == [])


def test_follower_holds_one_version_and_memory_stays_bounded(make_daemon):
    """With --keep 2, a follower that went through 10 versions holds only
    the last one, and the daemon's memory stays within keep + 2 versions."""
    d = make_daemon("--keep", "2")
    env = d.env()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], HELPERS])
    env.setdefault("WBROKER_LIB", os.path.join(BUILD, "libwbroker.so"))
    model = filled(0)
    lock = threading.Lock()
    with wbroker.connect(d.socket) as c:
        with c.follow(model, "m", lock=lock) as f:
            subprocess.run([sys.executable,
                            os.path.join(HELPERS, "follow_trainer.py"), "m",
                            "1", "10", "--every", "0.05"],
                           env=env, check=True, capture_output=True)
            assert f.wait(10, timeout=30)
            gc.collect()
            assert wait_for(lambda: [(h.pid, h.version)
                                     for h in c.holders("m")]
                            == [(os.getpid(), 10)])
            size = c.holders("m")[0].bytes
            st = c.status()
            assert st.memory_used <= (2 + 2) * size, (st.memory_used, size)
