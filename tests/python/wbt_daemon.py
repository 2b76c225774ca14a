"""wbt_daemon.py -- A real wbrokerd on a private socket, for the Python
tests (through conftest.py) and the benchmarks in bench/.

The daemon comes from the build directory ($WB_BUILD, default build) and
listens on wb.sock in a directory of the caller's; stop() sends SIGTERM and
returns the exit status.
"""
import os
import signal
import socket
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("WB_BUILD", "build"))


class Daemon:
    """A running wbrokerd: its socket path, pid, log file and CLI path."""

    def __init__(self, tmp_path, extra=(), log_level="debug", preexec=None):
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
             "--log-level", log_level, *extra],
            stderr=self._logf, env=env, preexec_fn=preexec)
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
