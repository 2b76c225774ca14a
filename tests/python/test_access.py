"""test_access.py -- Access control as Python programs and the CLI meet it:
a refused request raises wbroker.PermissionDeniedError (a PermissionError
and a wbroker.Error) naming the user, the action and the model; the CLI
exits 1 with the same sentence; ModelInfo.owner is the first publisher.

The clients run as nobody (uid 65534) in child processes, so the tests
need root; they are skipped, saying why, without it."""
import os
import shutil
import subprocess
import tempfile

import pytest

from wbt_daemon import BUILD, ROOT, Daemon

import wbroker

NOBODY = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root, to run clients as another uid")


def as_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@pytest.fixture
def shared():
    """A daemon whose socket nobody can reach (and that root publishes
    "prod" into)."""
    top = tempfile.mkdtemp(prefix="wbt-py-acc-")
    os.chmod(top, 0o755)
    # What nobody runs is copied where nobody can read it: the checkout
    # may sit under a directory only root may enter.
    dist = os.path.join(top, "dist")
    shutil.copytree(os.path.join(ROOT, "client", "python", "wbroker"),
                    os.path.join(dist, "wbroker"))
    shutil.copy2(os.environ["WBROKER_LIB"], dist)
    os.mkdir(os.path.join(dist, "bin"))
    shutil.copy2(os.path.join(BUILD, "wbroker"), os.path.join(dist, "bin"))
    for base, dirs, files in os.walk(top):
        for n in dirs + files:
            os.chmod(os.path.join(base, n), 0o755)
    d = Daemon(top, ["--socket-mode", "0666"])
    d.dist = dist
    try:
        import torch
        with wbroker.connect(d.socket) as c:
            c.publish("prod", {"w": torch.zeros(4)})
        yield d
    finally:
        rc = d.stop()
        shutil.rmtree(top, ignore_errors=True)
    assert rc == 0


SCRIPT = r"""
import sys, wbroker
c = wbroker.connect(sys.argv[1])
try:
    c.drop("prod")
except wbroker.PermissionDeniedError as e:
    assert isinstance(e, PermissionError) and isinstance(e, wbroker.Error)
    assert e.code == wbroker._lib.WB_EPERM
    print(e)
else:
    sys.exit("drop of root's model was not refused")
print(sorted((m.name, m.owner) for m in c.models()))
"""


def run_as_nobody(d, args, **kw):
    env = dict(os.environ)
    env["PYTHONPATH"] = d.dist
    env["WBROKER_LIB"] = os.path.join(d.dist, "libwbroker.so")
    return subprocess.run(args, capture_output=True, text=True, env=env,
                          preexec_fn=as_nobody, timeout=60, **kw)


def test_access_python_permission_error(shared):
    # The system's interpreter: a venv's may sit under root's home, which
    # nobody cannot enter (the script needs no torch).
    p = run_as_nobody(shared, ["/usr/bin/python3", "-c", SCRIPT,
                              shared.socket])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == ("user 65534 (nobody) may not remove model 'prod': "
                        "it belongs to root")
    assert lines[1] == "[('prod', 0)]"
    with wbroker.connect(shared.socket) as c:
        (m,) = c.models()
        assert m.owner == 0  # Still there, still root's.


def test_access_cli_exits_1_with_the_sentence(shared):
    cli = os.path.join(shared.dist, "bin", "wbroker")
    p = run_as_nobody(shared, [cli, "--socket", shared.socket, "rm", "prod"])
    assert p.returncode == 1
    assert ("user 65534 (nobody) may not remove model 'prod': it belongs to "
            "root") in p.stderr
    p = run_as_nobody(shared, [cli, "--socket", shared.socket, "ls"])
    assert p.returncode == 0
    assert p.stdout.splitlines()[1].split()[-1] == "root"
