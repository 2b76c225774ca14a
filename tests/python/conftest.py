"""Fixtures shared by the Python tests: a real wbrokerd on a private socket.

Every test that takes the ``daemon`` fixture gets its own daemon process,
started from the build directory (``$WB_BUILD``, default ``build``), with its
own temporary socket, and stopped (SIGTERM) afterwards; the test fails if the
daemon did not exit cleanly.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("WB_BUILD", "build"))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
os.environ.setdefault("WBROKER_LIB", os.path.join(BUILD, "libwbroker.so"))


class Daemon:
    """A running wbrokerd: its socket path, pid, log file and CLI path."""

    def __init__(self, tmp_path, extra=()):
        self.dir = str(tmp_path)
        self.socket = os.path.join(self.dir, "wb.sock")
        self.log = os.path.join(self.dir, "wbrokerd.log")
        self.cli = os.path.join(BUILD, "wbroker")
        env = dict(os.environ)
        env.pop("LISTEN_FDS", None)
        env.pop("NOTIFY_SOCKET", None)
        self._logf = open(self.log, "w")
        self.proc = subprocess.Popen(
            [os.path.join(BUILD, "wbrokerd"), "--socket", self.socket,
             "--log-level", "debug", *extra],
            stderr=self._logf, env=env)
        self.pid = self.proc.pid
        deadline = time.time() + 10
        while time.time() < deadline:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(self.socket)
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.01)
            finally:
                s.close()
        raise RuntimeError("wbrokerd did not start: " + open(self.log).read())

    def env(self):
        """Environment for a child process that should use this daemon."""
        env = dict(os.environ)
        env["WBROKER_SOCKET"] = self.socket
        env["PYTHONPATH"] = os.path.join(ROOT, "client", "python")
        return env

    def fd_count(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return self.proc.returncode


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    rc = d.stop()
    assert rc == 0, "wbrokerd exited with %r:\n%s" % (rc, open(d.log).read()[-4000:])


@pytest.fixture
def make_daemon(tmp_path):
    """Factory for a daemon with extra arguments (e.g. --memory-limit)."""
    started = []

    def make(*extra):
        sub = tmp_path / ("d%d" % len(started))
        sub.mkdir()
        d = Daemon(sub, extra)
        started.append(d)
        return d

    yield make
    for d in started:
        assert d.stop() == 0, open(d.log).read()[-4000:]
