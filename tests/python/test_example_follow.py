"""Test of examples/follow.c (build/examples/follow): a server following a
model while new versions are imported with the CLI under --keep 2.

Each version V holds F32 tensors whose every element is V; the example
fails if a forward pass sees anything else.  Only C programs run here: the
example, the CLI and the daemon.
"""
import array
import json
import os
import struct
import subprocess
import time

import pytest

from wbt_daemon import BUILD, ROOT

NELEM = 64 * 1024  # Elements per tensor.


def write_stamped(path, version):
    header, off, blobs = {}, 0, []
    for name in ("a.weight", "b.weight"):
        b = array.array("f", [float(version)] * NELEM).tobytes()
        header[name] = {"dtype": "F32", "shape": [NELEM],
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def cli_json(daemon, *args):
    p = subprocess.run([daemon.cli, "--socket", daemon.socket, "--json",
                        *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def wait_for(cond, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture(scope="module")
def follow_exe():
    """Builds the C examples as make examples does; the follow binary."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(["make", "-C", ROOT, "--no-print-directory",
                        "BUILD=" + os.environ.get("WB_BUILD", "build"),
                        "examples"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return os.path.join(BUILD, "examples", "follow")


def test_example_follow_switches_and_releases(daemon, tmp_path, follow_exe):
    """The follower serves each new version, every forward pass sees one
    whole version, the version it leaves is released (its hold ends), and
    retention keeps two versions listed throughout."""
    exe = follow_exe
    proc = subprocess.Popen([exe, "--socket", daemon.socket, "--model", "f",
                             "--until", "6", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        def mine():
            return sorted(h["version"] for h in cli_json(daemon, "holders")
                          if h["pid"] == proc.pid)

        for v in range(1, 7):
            path = str(tmp_path / ("v%d.safetensors" % v))
            write_stamped(path, v)
            assert cli_json(daemon, "import", path, "f")["version"] == v
            (row,) = cli_json(daemon, "ls")
            assert row["versions"] == min(v, 2)
            if v < 6:
                # Switched to v, and let go of the version before.
                assert wait_for(lambda: mine() == [v]), mine()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, (out, err)
    lines = out.splitlines()
    assert lines[:6] == ["serving f@%d" % v for v in range(1, 7)]
    assert lines[-1].startswith("followed f from version 1 to 6: ")
    assert lines[-1].endswith(", 0 saw more than one version")
    assert wait_for(lambda: cli_json(daemon, "holders") == [])
    counters = cli_json(daemon, "status")["counters"]
    assert counters["bytes.retired"] == 0
