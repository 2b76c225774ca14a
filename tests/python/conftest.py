"""Fixtures shared by the Python tests: a real wbrokerd on a private socket.

Every test that takes the ``daemon`` fixture gets its own daemon process,
started from the build directory (``$WB_BUILD``, default ``build``), with its
own temporary socket, and stopped (SIGTERM) afterwards; the test fails if the
daemon did not exit cleanly.
"""
import os
import sys

import pytest

from wbt_daemon import BUILD, ROOT, Daemon

sys.path.insert(0, os.path.join(ROOT, "client", "python"))
os.environ.setdefault("WBROKER_LIB", os.path.join(BUILD, "libwbroker.so"))


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
