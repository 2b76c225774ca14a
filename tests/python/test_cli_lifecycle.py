"""Tests of the wbroker CLI's version lifecycle commands (pin, unpin,
holders, and what ls shows of them) against a real daemon.

Only the CLI binary runs here.  A process that holds a version is a
``wbroker export MODEL@V -`` whose stdout nobody reads: it maps the version
and blocks writing a model larger than the pipe's buffer, until the test
reads it out.
"""
import datetime
import json
import os
import pwd
import struct
import subprocess
import time

import pytest

NBYTES = 1 << 20  # Bytes of the test model's one tensor (blocks a pipe).


def write_st(path, tag):
    """Writes a safetensors file with one U8 tensor "w" filled with tag."""
    header = {"w": {"dtype": "U8", "shape": [NBYTES],
                    "data_offsets": [0, NBYTES]}}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + bytes([tag]) * NBYTES)


def cli(daemon, *args, check=None):
    p = subprocess.run([daemon.cli, "--socket", daemon.socket, *args],
                       capture_output=True, text=True, timeout=60)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def cli_json(daemon, *args, check=0):
    return json.loads(cli(daemon, "--json", *args, check=check).stdout)


def publish(daemon, tmp_path, model, tag):
    path = str(tmp_path / ("v%d.safetensors" % tag))
    write_st(path, tag)
    return cli_json(daemon, "import", path, model)["version"]


def ls_row(daemon, model):
    (row,) = [r for r in cli_json(daemon, "ls") if r["name"] == model]
    return row


def holders(daemon, *model):
    return cli_json(daemon, "holders", *model)


def wait_for(cond, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    return cond()


class Holder:
    """A wbroker export of model@version blocked on a full stdout pipe."""

    def __init__(self, daemon, ref):
        self.proc = subprocess.Popen(
            [daemon.cli, "--socket", daemon.socket, "export", ref, "-"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def finish(self):
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return out


@pytest.fixture
def holder():
    made = []

    def make(daemon, ref):
        h = Holder(daemon, ref)
        made.append(h)
        return h

    yield make
    for h in made:
        if h.proc.poll() is None:
            h.proc.kill()
            h.proc.communicate()


def test_cli_pin_keeps_a_version_and_ls_shows_it(daemon, tmp_path):
    """A pinned version survives --keep 2, ls counts it in PINNED, and
    unpin lets retention retire it at once."""
    assert publish(daemon, tmp_path, "net", 1) == 1
    p = cli(daemon, "pin", "net@1", check=0)
    assert p.stdout.strip() == "pinned net@1"
    for tag in range(2, 6):
        publish(daemon, tmp_path, "net", tag)

    lines = cli(daemon, "ls", check=0).stdout.splitlines()
    assert lines[0].split() == ["MODEL", "LATEST", "VERSIONS", "PINNED",
                                "TENSORS", "SIZE", "READERS", "OWNER"]
    assert lines[1].split()[:5] == ["net", "5", "3", "1", "1"]
    row = ls_row(daemon, "net")
    assert (row["latest"], row["versions"], row["pinned"]) == (5, 3, 1)

    assert cli_json(daemon, "unpin", "net@1") == {
        "model": "net", "version": 1, "pinned": False}
    row = ls_row(daemon, "net")
    assert (row["versions"], row["pinned"]) == (2, 0)
    p = cli(daemon, "info", "net@1", check=1)
    assert "no such version" in p.stderr


def test_cli_pin_errors(daemon, tmp_path):
    """pin and unpin need MODEL@VERSION (usage, exit 2), and report a
    missing model or version (exit 1, with --json an error document)."""
    publish(daemon, tmp_path, "net", 1)
    p = cli(daemon, "pin", "net", check=2)
    assert "MODEL@VERSION" in p.stderr
    cli(daemon, "unpin", check=2)
    cli(daemon, "pin", "net@1", "net@2", check=2)
    p = cli(daemon, "pin", "absent@1", check=1)
    assert "no such model" in p.stderr
    p = cli(daemon, "unpin", "net@9", check=1)
    assert "no such version" in p.stderr and "latest is 1" in p.stderr
    doc = cli_json(daemon, "pin", "net@9", check=1)
    assert doc["error"] == "ENOVERSION" and doc["code"] == -5


def test_cli_holders_names_the_process(daemon, tmp_path, holder):
    """holders shows who maps what: pid, user, command, model@version, size
    and since (local time); --json parses; ls readers counts it."""
    publish(daemon, tmp_path, "net", 1)
    publish(daemon, tmp_path, "other", 1)
    before = int(time.time())
    h = holder(daemon, "net@1")
    rows = wait_for(lambda: holders(daemon))
    assert len(rows) == 1
    (r,) = rows
    user = pwd.getpwuid(os.getuid()).pw_name
    assert r["pid"] == h.proc.pid
    assert r["uid"] == os.getuid()
    assert r["user"] == user
    assert r["command"] == "wbroker"
    assert (r["model"], r["version"]) == ("net", 1)
    assert r["bytes"] >= NBYTES
    assert before <= r["since"] <= before + 60
    assert holders(daemon, "net") == rows
    assert holders(daemon, "other") == []
    assert ls_row(daemon, "net")["readers"] == 1
    assert ls_row(daemon, "other")["readers"] == 0

    lines = cli(daemon, "holders", check=0).stdout.splitlines()
    assert lines[0].split() == ["PID", "USER", "COMMAND", "VERSION", "SIZE",
                                "SINCE"]
    cells = lines[1].split()
    assert cells[:4] == [str(h.proc.pid), user, "wbroker", "net@1"]
    since = datetime.datetime.fromtimestamp(r["since"])
    assert " ".join(cells[-2:]) == since.strftime("%Y-%m-%d %H:%M:%S")

    out = h.finish()
    assert out[-NBYTES:] == bytes([1]) * NBYTES
    assert wait_for(lambda: holders(daemon) == [])
    assert ls_row(daemon, "net")["readers"] == 0


def test_cli_holders_of_a_retired_version(daemon, tmp_path, holder):
    """A version retired while a process holds it is gone from ls and info
    but still listed by holders, and its bytes count in bytes.retired until
    the holder lets go."""
    publish(daemon, tmp_path, "net", 1)
    h = holder(daemon, "net@1")
    assert wait_for(lambda: holders(daemon, "net"))
    for tag in range(2, 5):
        publish(daemon, tmp_path, "net", tag)
    assert ls_row(daemon, "net")["versions"] == 2
    cli(daemon, "info", "net@1", check=1)
    (r,) = holders(daemon, "net")
    assert r["version"] == 1
    counters = cli_json(daemon, "status")["counters"]
    assert counters["holds"] == 1
    assert counters["bytes.retired"] >= NBYTES
    (line,) = [s for s in cli(daemon, "status", check=0).stdout.splitlines()
               if s.startswith("holds")]
    assert line.split()[1] == "1" and "2.0 MiB of them in retired" in line

    assert h.finish()[-NBYTES:] == bytes([1]) * NBYTES
    assert wait_for(lambda: cli_json(daemon, "status")["counters"]
                    ["bytes.retired"] == 0)
    assert cli_json(daemon, "status")["counters"]["holds"] == 0


def test_cli_holders_errors(daemon, tmp_path):
    """holders of an unknown model fails (exit 1); no holds is an empty
    table or []; extra arguments are a usage error."""
    p = cli(daemon, "holders", "absent", check=1)
    assert "no such model" in p.stderr
    assert holders(daemon) == []
    publish(daemon, tmp_path, "net", 1)
    assert holders(daemon, "net") == []
    lines = cli(daemon, "holders", check=0).stdout.splitlines()
    assert lines[0].split()[0] == "PID" and len(lines) == 1
    cli(daemon, "holders", "a", "b", check=2)
