"""The follow examples against a real daemon: examples/server.py follows
examples/trainer.py, and examples/follow.c (the C building blocks:
a blocking watch in a thread, wb_watch_cancel) follows a publisher."""
import os
import re
import signal
import subprocess
import sys
import time

from wbt_daemon import BUILD, ROOT

EXAMPLES = os.path.join(ROOT, "examples")


def test_server_follows_the_trainer(daemon):
    env = daemon.env()
    env.setdefault("WBROKER_LIB", os.path.join(BUILD, "libwbroker.so"))
    server = subprocess.Popen(
        [sys.executable, os.path.join(EXAMPLES, "server.py"), "--model", "tr",
         "--until", "4", "--seconds", "120"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "following tr\n"
        r = subprocess.run(
            [sys.executable, os.path.join(EXAMPLES, "trainer.py"), "--model",
             "tr", "--steps", "40", "--every", "10", "--socket",
             daemon.socket],
            env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out, err = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.returncode == 0, out + err
    served = [int(v) for v in re.findall(r"^serving tr@(\d+) ", out, re.M)]
    assert served and served[-1] == 4 and served == sorted(served), out
    assert re.search(r"^answered \d+ batches, last on tr@4$", out, re.M), out


def c_follower(daemon, *args):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(["make", "-C", ROOT, "--no-print-directory",
                        "BUILD=" + os.environ.get("WB_BUILD", "build"),
                        "examples"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    p = subprocess.Popen(
        [os.path.join(BUILD, "examples", "follow"), "--socket",
         daemon.socket, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "following cw\n"
    return p


def publish_filled(c, v):
    import torch
    got = c.publish("cw", {"a": torch.full((64,), float(v)),
                           "b": torch.full((3, 5), float(v))})
    assert got == v


def test_c_follower_serves_each_version_and_stops(daemon):
    """examples/follow.c: the first version is there before it
    starts, two more come while it runs; it serves the last one, and its
    watch thread is cancelled at the end."""
    import wbroker
    with wbroker.connect(daemon.socket) as c:
        publish_filled(c, 1)
        p = c_follower(daemon, "--model", "cw", "--until", "3")
        try:
            assert p.stdout.readline().startswith("serving cw@1: 2 tensors, "
                                                  "first value 1")
            publish_filled(c, 2)
            publish_filled(c, 3)
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, out + err
        assert "serving cw@3: 2 tensors, first value 3" in out
        assert "watch cancelled\nstopped, last on cw@3\n" in out
        assert c.holders("cw") == []        # It let go of every version.


def test_c_follower_stops_at_once_on_sigterm(daemon):
    """SIGTERM cancels the watch from the signal handler: a prompt, clean
    exit even though nothing was ever published."""
    p = c_follower(daemon, "--model", "cw")
    time.sleep(0.2)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=10)
    assert time.monotonic() - t0 < 1.0
    assert p.returncode == 0, out + err
    assert "watch cancelled\nstopped, last on cw@0\n" in out
