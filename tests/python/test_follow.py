"""Client.follow(): a model kept on the newest version while a server
thread runs forward passes with it, against a real daemon and a trainer in
a process of its own (helpers/follow_trainer.py publishes versions whose
every tensor holds the version number)."""
import gc
import os
import re
import subprocess
import sys
import threading
import time
import warnings

import pytest
import torch

import wbroker
from wbt_daemon import BUILD, Daemon

HELPERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers")
sys.path.insert(0, HELPERS)

from follow_trainer import filled  # noqa: E402


def trainer(daemon, name, first, last, *extra, wait=True):
    """Runs helpers/follow_trainer.py against daemon; waits for it unless
    wait is False (then returns the Popen)."""
    env = daemon.env()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], HELPERS])
    env.setdefault("WBROKER_LIB", os.path.join(BUILD, "libwbroker.so"))
    argv = [sys.executable, os.path.join(HELPERS, "follow_trainer.py"), name,
            str(first), str(last), *extra]
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    if not wait:
        return p
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, out + err
    return out


def values(model):
    """The distinct values of all of model's tensors."""
    with torch.no_grad():
        flat = torch.cat([t.flatten().float()
                          for t in model.state_dict().values()])
        return set(torch.unique(flat).tolist())


def segments(label):
    """Distinct segments (inodes) of model label this process maps."""
    pat = re.compile(r"/memfd:wbroker:%s( |$)" % re.escape(label))
    with open("/proc/self/maps") as f:
        return {line.split()[4] for line in f if pat.search(line)}


def test_follow_switches_whole_versions_under_the_lock(daemon):
    """A server thread runs forward passes in a loop under the lock while a
    trainer publishes 20 versions: each forward pass sees exactly one
    version, the follower ends on the last, and the versions it left are
    unmapped."""
    c = wbroker.connect(daemon.socket)
    model = filled(0)
    lock = threading.Lock()
    seen, mixed, done = [], [], threading.Event()
    x = torch.ones(2, 8)

    def serve():
        while not done.is_set():
            with lock:
                vals = values(model)
                model(x)        # A real forward pass on the same weights.
            if len(vals) != 1:
                mixed.append(vals)
            elif not seen or seen[-1] != min(vals):
                seen.append(min(vals))
    errors = []
    f = c.follow(model, "m", lock=lock, on_error=errors.append)
    server = threading.Thread(target=serve)
    server.start()
    try:
        trainer(daemon, "m", 1, 20, "--every", "0.02")
        assert f.wait(20, timeout=60)
        assert f.version == 20
    finally:
        done.set()
        server.join()
        f.stop()
    assert errors == []
    assert mixed == []
    assert values(model) == {20.0}
    assert seen[0] in (0.0, 1.0) and seen[-1] == 20.0
    assert seen == sorted(seen), seen       # Never back to an older one.
    gc.collect()
    assert wbroker.flush_unmaps()           # Left versions: unmapped.
    assert len(segments("m")) == 1          # Only version 20 stays mapped.
    c.close()


def test_follow_loads_the_latest_first_and_waits(daemon):
    """A follower starts on the latest version there is; wait() with no
    version waits for the next one after the call."""
    trainer(daemon, "m", 1, 3)
    model = filled(0)
    with wbroker.connect(daemon.socket) as c:
        with c.follow(model, "m") as f:
            assert f.wait(3, timeout=10)
            assert f.version == 3 and values(model) == {3.0}
            assert not f.wait(timeout=0.2)          # Nothing newer yet.
            p = trainer(daemon, "m", 4, 4, wait=False)
            assert f.wait(timeout=30)
            assert p.wait(30) == 0
            assert f.version == 4 and values(model) == {4.0}
            assert f.wait(2, timeout=0)             # Already past it.
            assert "'m'@4" in repr(f)
        assert "stopped" in repr(f)


def test_follow_keeps_the_old_version_when_a_load_fails(daemon):
    """A version the model cannot take (the trainer changed a shape) leaves
    the model on the version it had and goes to on_error; the next good
    version is loaded."""
    trainer(daemon, "m", 1, 1)
    model = filled(0)
    errors = []
    with wbroker.connect(daemon.socket) as c:
        with c.follow(model, "m", on_error=errors.append) as f:
            assert f.wait(1, timeout=10)
            trainer(daemon, "m", 2, 2, "--bad", "2")
            deadline = time.monotonic() + 10
            while not errors and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(errors) == 1
            assert isinstance(errors[0], wbroker.LoadError)
            assert "size mismatch for fc1.weight" in str(errors[0])
            assert f.version == 1 and values(model) == {1.0}
            trainer(daemon, "m", 3, 3)
            assert f.wait(3, timeout=10)
            assert values(model) == {3.0}
    assert len(errors) == 1


def test_follow_warns_by_default(daemon):
    """Without on_error a failed version is a RuntimeWarning naming the
    versions."""
    trainer(daemon, "m", 1, 1)
    model = filled(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with wbroker.connect(daemon.socket) as c:
            with c.follow(model, "m") as f:
                assert f.wait(1, timeout=10)
                trainer(daemon, "m", 2, 2, "--bad", "2")
                deadline = time.monotonic() + 10
                while not caught and time.monotonic() < deadline:
                    time.sleep(0.01)
    msgs = [str(w.message) for w in caught
            if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1, msgs
    assert "version 2 not loaded, the model stays on version 1" in msgs[0]


def test_follow_stop_is_prompt(daemon):
    """stop() ends a follower waiting for a model nobody has published, at
    once, wakes a wait() in another thread, closes the follower's
    connection and leaves the model alone; a second stop() is harmless."""
    model = filled(5)
    with wbroker.connect(daemon.socket) as c:
        f = c.follow(model, "nothing-yet")
        assert c.status().clients == 2
        time.sleep(0.2)                 # Well inside its watch.
        woke = []
        waiter = threading.Thread(
            target=lambda: woke.append(f.wait(timeout=30)))
        waiter.start()
        t0 = time.monotonic()
        f.stop()
        waiter.join(5)
        assert time.monotonic() - t0 < 0.5
        assert woke == [False]
        assert f.version == 0 and values(model) == {5.0}
        f.stop()
        deadline = time.monotonic() + 5
        while c.status().clients != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.status().clients == 1


def test_follow_stop_from_on_error(daemon):
    """on_error may stop the follower: its thread ends and closes its
    connection itself."""
    trainer(daemon, "m", 1, 1, "--bad", "1")
    with wbroker.connect(daemon.socket) as c:
        holder, ready = [], threading.Event()

        def on_error(e):
            ready.wait(10)
            holder[0].stop()
        f = c.follow(filled(0), "m", on_error=on_error)
        holder.append(f)
        ready.set()
        assert not f.wait(1, timeout=10)
        deadline = time.monotonic() + 5
        while ((c.status().clients != 1 or "stopped" not in repr(f))
               and time.monotonic() < deadline):
            time.sleep(0.01)
        assert "stopped" in repr(f)
        assert c.status().clients == 1


def test_follow_refuses_a_bad_argument_at_once(daemon):
    with wbroker.connect(daemon.socket) as c:
        with pytest.raises(TypeError):
            c.follow(filled(0), "m", strictt=False)
        assert c.status().clients == 1
        f = c.follow(filled(0), "m", strict=False)   # A good one.
        f.stop()


def test_follow_refuses_a_bad_name_at_once(daemon):
    with wbroker.connect(daemon.socket) as c:
        with pytest.raises(wbroker.Error) as e:
            c.follow(filled(0), "")
        assert e.value.name == "ENAME"
        assert c.status().clients == 1     # No connection left behind.


def test_follow_goes_on_after_a_daemon_restart(tmp_path):
    """The daemon is killed and another starts on the same socket: the
    follower reconnects by itself and loads what the new one publishes."""
    d = Daemon(tmp_path)
    try:
        trainer(d, "m", 1, 2)
        model = filled(0)
        with wbroker.connect(d.socket) as c:
            with c.follow(model, "m") as f:
                assert f.wait(2, timeout=10)
                d.proc.kill()
                d.proc.wait()
                d.stop()
                time.sleep(0.3)         # The follower finds it gone.
                assert values(model) == {2.0}   # Its weights stay.
                d = Daemon(tmp_path)    # Numbers start again at 1.
                trainer(d, "m", 1, 1)
                deadline = time.monotonic() + 10
                while f.version != 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert f.version == 1 and values(model) == {1.0}
                trainer(d, "m", 2, 2)
                deadline = time.monotonic() + 10
                while values(model) != {2.0} and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert f.version == 2 and values(model) == {2.0}
            assert c.models()[0].version == 2   # c reconnected too.
    finally:
        assert d.stop() == 0


def test_follow_takes_the_newest_when_its_version_retired(make_daemon):
    """With --keep 1 and a trainer committing as fast as it can, the
    version a watch named is often retired before the follower asks for
    it: the follower then takes the newest, reports nothing, and ends on
    the last."""
    d = make_daemon("--keep", "1")
    errors = []
    model = filled(0)
    with wbroker.connect(d.socket) as c:
        with c.follow(model, "m", lock=threading.Lock(),
                      on_error=errors.append) as f:
            trainer(d, "m", 1, 40)
            assert f.wait(40, timeout=60)
    assert errors == []
    assert values(model) == {40.0}
