"""Tests of the wbroker CLI (build/wbroker) against a real daemon.

Safetensors files are written and read here by hand (struct + json), so the
tests also check the CLI against an independent reader of the format.
"""
import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import time

import pytest
import torch

from st_bytes import DTYPES, write_st


def write_header_only(path, tensors):
    """Writes a target file: name -> (dtype, shape), zero-filled data."""
    header, off = {}, 0
    sizes = {"F32": 4, "F16": 2, "F64": 8, "I64": 8}
    for name, (dt, shape) in tensors.items():
        n = sizes[dt]
        for s in shape:
            n *= s
        header[name] = {"dtype": dt, "shape": list(shape),
                        "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + bytes(off))


def read_st(path):
    """Independent reader: returns (metadata, name -> (dtype, shape, bytes))."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode())
    base = 8 + n
    meta = header.pop("__metadata__", None)
    out = {}
    spans = []
    for name, e in header.items():
        b, end = e["data_offsets"]
        out[name] = (e["dtype"], e["shape"], data[base + b:base + end])
        spans.append((b, end))
    spans.sort()
    pos = 0
    for b, end in spans:
        assert b == pos, "holes or overlaps in %s" % path
        pos = end
    assert base + pos == len(data), "trailing bytes in %s" % path
    return meta, out


def cli(daemon, *args, check=None, timeout=60):
    """Runs wbroker against the daemon; returns the CompletedProcess."""
    p = subprocess.run([daemon.cli, "--socket", daemon.socket, *args],
                       capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def cli_json(daemon, *args, check=0):
    p = cli(daemon, "--json", *args, check=check)
    return json.loads(p.stdout)


def sample(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "fc1.weight": torch.randn(16, 8, generator=g),
        "fc1.bias": torch.randn(16, generator=g),
        "fc2.weight": torch.randn(4, 16, generator=g).half(),
        "emb": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "step": torch.tensor(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
    }


@pytest.fixture
def model_file(tmp_path):
    path = str(tmp_path / "model.safetensors")
    raw = write_st(path, sample(), {"format": "pt", "note": "héllo"})
    return path, raw


# ---------------------------------------------------------------- import

def test_cli_import_then_ls_and_info(daemon, model_file):
    """An imported file shows up in ls and info, for people and in JSON."""
    path, raw = model_file
    p = cli(daemon, "import", path, "net", check=0)
    assert "net@1" in p.stdout
    assert cli_json(daemon, "import", path, "net")["version"] == 2

    p = cli(daemon, "ls", check=0)
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "LATEST", "VERSIONS", "PINNED",
                                "TENSORS", "SIZE", "READERS", "OWNER"]
    assert lines[1].split()[:5] == ["net", "2", "2", "0", str(len(raw))]

    (info,) = cli_json(daemon, "ls")
    assert info == {"name": "net", "latest": 2, "versions": 2,
                    "tensors": len(raw),
                    "bytes": sum(len(b) for b in raw.values()),
                    "readers": 0, "pinned": 0, "owner": os.getuid()}

    p = cli(daemon, "info", "net@1", check=0)
    assert "version   1" in p.stdout
    assert "format: pt" in p.stdout
    for name in raw:
        assert name in p.stdout
    assert "[16, 8]" in p.stdout and "BF16" in p.stdout

    j = cli_json(daemon, "info", "net")
    assert j["model"] == "net" and j["version"] == 2
    assert j["owner"] == os.getuid()
    assert j["metadata"] == {"format": "pt", "note": "héllo"}
    by = {t["name"]: t for t in j["tensors"]}
    assert set(by) == set(raw)
    assert by["fc1.weight"] == {"name": "fc1.weight", "dtype": "F32",
                                "shape": [16, 8], "bytes": 16 * 8 * 4}
    assert by["step"]["shape"] == [] and by["step"]["dtype"] == "I64"
    assert by["empty"]["bytes"] == 0
    assert j["bytes"] == sum(len(b) for b in raw.values())


def test_cli_import_large_file_in_chunks(daemon, tmp_path):
    """A tensor larger than one read chunk (8 MiB) arrives intact."""
    path = str(tmp_path / "big.safetensors")
    g = torch.Generator().manual_seed(1)
    raw = write_st(path, {"a": torch.randn(3 << 20, generator=g),
                          "b": torch.randn(5, generator=g)})
    cli(daemon, "import", path, "big", check=0)
    out = str(tmp_path / "out.safetensors")
    cli(daemon, "export", "big", out, check=0)
    _, got = read_st(out)
    assert got["a"][2] == raw["a"] and got["b"][2] == raw["b"]


def test_cli_import_progress_only_on_a_terminal(daemon, model_file):
    """import draws a progress bar on stderr when it is a terminal, and
    writes nothing there otherwise."""
    path, _ = model_file
    p = cli(daemon, "import", path, "net", check=0)
    assert p.stderr == ""
    master, slave = os.openpty()
    try:
        proc = subprocess.run([daemon.cli, "--socket", daemon.socket,
                               "import", path, "net"],
                              stdout=subprocess.PIPE, stderr=slave, timeout=60)
        os.close(slave)
        slave = -1
        err = b""
        while True:
            r, _, _ = select.select([master], [], [], 1)
            if not r:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0
    assert b"100%" in err and b"importing" in err
    assert b"net@2" in proc.stdout


@pytest.mark.parametrize("kind", [
    "empty", "short_prefix", "header_too_long", "bad_json", "truncated_data",
    "overlap", "bad_dtype", "shape_mismatch", "trailing_bytes", "bad_tie",
    "missing"])
def test_cli_import_refuses_bad_files(daemon, tmp_path, model_file, kind):
    """Corrupt, truncated or missing files are refused with exit 1, and no
    model appears."""
    good, _ = model_file
    data = open(good, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    path = str(tmp_path / "bad.safetensors")

    def with_header(h, body=data[8 + n:]):
        hb = json.dumps(h).encode()
        return struct.pack("<Q", len(hb)) + hb + body

    if kind == "empty":
        blob = b""
    elif kind == "short_prefix":
        blob = data[:5]
    elif kind == "header_too_long":
        blob = struct.pack("<Q", len(data)) + data[8:]
    elif kind == "bad_json":
        blob = struct.pack("<Q", 10) + b"{not json}" + data[8 + n:]
    elif kind == "truncated_data":
        blob = data[:-3]
    elif kind == "overlap":
        header["fc1.bias"]["data_offsets"] = header["fc1.weight"]["data_offsets"]
        blob = with_header(header)
    elif kind == "bad_dtype":
        header["fc1.bias"]["dtype"] = "F128"
        blob = with_header(header)
    elif kind == "shape_mismatch":
        header["fc1.bias"]["shape"] = [17]
        blob = with_header(header)
    elif kind == "trailing_bytes":
        blob = data + b"\0" * 4
    elif kind == "bad_tie":         # An alias of a tensor the file lacks.
        header.setdefault("__metadata__", {})["wbroker.tied"] = \
            json.dumps({"head.weight": "nope"})
        blob = with_header(header)
    if kind != "missing":
        open(path, "wb").write(blob)
    p = cli(daemon, "import", path, "bad", check=1)
    assert p.stderr.startswith("wbroker: ")
    assert "bad.safetensors" in p.stderr
    if kind == "bad_tie":
        assert "wbroker.tied" in p.stderr
    j = cli_json(daemon, "import", path, "bad", check=1)
    assert j["error"] in ("EFORMAT", "EIO", "ESYS") and j["code"] < 0
    assert cli_json(daemon, "ls") == []
    assert cli_json(daemon, "status")["versions"] == 0


def test_cli_import_bad_model_name(daemon, model_file):
    """An invalid model name is the daemon's error: exit 1, nothing added."""
    path, _ = model_file
    j = cli_json(daemon, "import", path, "x" * 2000, check=1)
    assert j["error"] == "ENAME"
    assert cli_json(daemon, "ls") == []


# ---------------------------------------------------------------- export

def test_cli_export_matches_the_imported_file(daemon, model_file, tmp_path):
    """export writes a valid safetensors file whose tensors and metadata are
    the imported ones, byte for byte."""
    path, raw = model_file
    cli(daemon, "import", path, "net", check=0)
    out = str(tmp_path / "out.safetensors")
    p = cli(daemon, "export", "net", out, check=0)
    assert "net@1" in p.stdout
    assert not os.path.exists(out + ".tmp")
    meta, got = read_st(out)
    assert meta == {"format": "pt", "note": "héllo"}
    src = sample()
    assert set(got) == set(raw)
    for name, t in src.items():
        dt, shape, b = got[name]
        assert dt == DTYPES[t.dtype] and shape == list(t.shape)
        assert b == raw[name], name


def test_cli_export_round_trips(daemon, model_file, tmp_path):
    """An exported file imports back to the same content, and exporting that
    gives an identical file."""
    path, raw = model_file
    cli(daemon, "import", path, "a", check=0)
    one = str(tmp_path / "one.safetensors")
    two = str(tmp_path / "two.safetensors")
    cli(daemon, "export", "a@1", one, check=0)
    cli(daemon, "import", one, "b", check=0)
    j = cli_json(daemon, "export", "b", two)
    assert j["model"] == "b" and j["version"] == 1
    assert j["bytes"] == os.path.getsize(two)
    assert open(one, "rb").read() == open(two, "rb").read()
    assert {k: v[2] for k, v in read_st(two)[1].items()} == raw


def test_cli_export_picks_the_version_and_replaces_the_file(daemon, tmp_path):
    """export MODEL@VERSION writes that version; an existing FILE is replaced."""
    p1, p2 = str(tmp_path / "1.safetensors"), str(tmp_path / "2.safetensors")
    r1 = write_st(p1, {"w": torch.ones(4)})
    r2 = write_st(p2, {"w": torch.full((4,), 2.0)})
    cli(daemon, "import", p1, "m", check=0)
    cli(daemon, "import", p2, "m", check=0)
    out = str(tmp_path / "out.safetensors")
    open(out, "wb").write(b"old")
    cli(daemon, "export", "m@1", out, check=0)
    assert read_st(out)[1]["w"][2] == r1["w"]
    cli(daemon, "export", "m", out, check=0)
    assert read_st(out)[1]["w"][2] == r2["w"]
    j = cli_json(daemon, "export", "m@3", out, check=1)
    assert j["error"] == "ENOVERSION"
    assert read_st(out)[1]["w"][2] == r2["w"]


def test_cli_export_to_unwritable_place_fails(daemon, model_file, tmp_path):
    """A file that cannot be written is a system error: exit 1."""
    path, _ = model_file
    cli(daemon, "import", path, "net", check=0)
    p = cli(daemon, "export", "net", str(tmp_path / "no" / "such" / "f"),
            check=1)
    assert "no/such" in p.stderr and "No such file" in p.stderr


def test_cli_export_ignores_a_symlink_planted_at_its_temporary_name(
        daemon, model_file, tmp_path):
    """A symbolic link planted where export used to put its temporary file
    (FILE.tmp) is neither followed nor replaced: the file it points at keeps
    its bytes, and FILE is written through a fresh file of its own."""
    path, raw = model_file
    cli(daemon, "import", path, "net", check=0)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.safetensors"
    os.symlink(victim, str(out) + ".tmp")
    cli(daemon, "export", "net", str(out), check=0)
    assert victim.read_bytes() == b"precious"
    assert os.readlink(str(out) + ".tmp") == str(victim)
    assert {k: v[2] for k, v in read_st(str(out))[1].items()} == raw
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["model.safetensors", "wb.sock", "wbrokerd.log", "victim",
         "out.safetensors", "out.safetensors.tmp"])


def test_cli_export_leaves_no_temporary_file(daemon, model_file, tmp_path):
    """Neither a successful export nor a failed one leaves a temporary file
    next to FILE."""
    path, _ = model_file
    cli(daemon, "import", path, "net", check=0)
    d = tmp_path / "out"
    d.mkdir()
    cli(daemon, "export", "net", str(d / "a.safetensors"), check=0)
    cli(daemon, "export", "net@7", str(d / "b.safetensors"), check=1)
    assert os.listdir(d) == ["a.safetensors"]


def test_cli_export_keeps_the_mode_of_the_file_it_replaces(daemon, model_file,
                                                           tmp_path):
    """A replaced FILE keeps its permission bits; a new one gets 0666 less
    the umask."""
    path, _ = model_file
    cli(daemon, "import", path, "net", check=0)
    old = tmp_path / "private.safetensors"
    old.write_bytes(b"old")
    os.chmod(old, 0o600)
    cli(daemon, "export", "net", str(old), check=0)
    assert os.stat(old).st_mode & 0o7777 == 0o600
    new = tmp_path / "new.safetensors"
    mask = os.umask(0o022)
    try:
        cli(daemon, "export", "net", str(new), check=0)
    finally:
        os.umask(mask)
    assert os.stat(new).st_mode & 0o7777 == 0o644


def special_target(tmp_path, kind):
    """Makes a FILE that is not a regular file; returns (path, check) where
    check() asserts that it is still what it was."""
    p = str(tmp_path / ("target-" + kind))
    if kind == "fifo":
        os.mkfifo(p)
        return p, lambda: stat.S_ISFIFO(os.lstat(p).st_mode)
    if kind == "directory":
        os.mkdir(p)
        open(os.path.join(p, "inside"), "w").write("x")
        return p, lambda: (stat.S_ISDIR(os.lstat(p).st_mode) and
                           os.listdir(p) == ["inside"])
    if kind == "symlink":
        victim = str(tmp_path / "victim")
        open(victim, "wb").write(b"precious")
        os.symlink(victim, p)
        return p, lambda: (os.readlink(p) == victim and
                           open(victim, "rb").read() == b"precious")
    if kind == "dangling_symlink":
        os.symlink(str(tmp_path / "nowhere"), p)
        return p, lambda: (os.readlink(p) == str(tmp_path / "nowhere") and
                           not os.path.lexists(tmp_path / "nowhere"))
    if kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(p)
        s.close()
        return p, lambda: stat.S_ISSOCK(os.lstat(p).st_mode)
    if kind == "device":            # A /dev/null of our own.
        try:
            os.mknod(p, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("cannot make a device node here")
        return p, lambda: (stat.S_ISCHR(os.lstat(p).st_mode) and
                           os.lstat(p).st_rdev == os.makedev(1, 3))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink",
                                  "dangling_symlink", "socket", "device"])
def test_cli_export_refuses_a_file_that_is_not_regular(daemon, model_file,
                                                       tmp_path, kind):
    """FILE that exists and is not a regular file (a device like /dev/null,
    a fifo, a directory, a socket, a symbolic link) is refused with exit 1
    and left as it was; nothing is written next to it."""
    path, _ = model_file
    cli(daemon, "import", path, "net", check=0)
    target, unchanged = special_target(tmp_path, kind)
    before = sorted(os.listdir(tmp_path))
    p = cli(daemon, "export", "net", target, check=1, timeout=20)
    assert p.stderr.startswith("wbroker: ") and target in p.stderr
    assert "not a regular file" in p.stderr
    assert p.stdout == ""
    j = cli_json(daemon, "export", "net", target, check=1)
    assert j["error"] == "EINVAL" and target in j["message"]
    assert unchanged()
    assert sorted(os.listdir(tmp_path)) == before


def test_cli_export_refuses_a_path_ending_in_a_slash(daemon, model_file,
                                                     tmp_path):
    """FILE/ names a directory, existing or not: refused, nothing made."""
    path, _ = model_file
    cli(daemon, "import", path, "net", check=0)
    p = cli(daemon, "export", "net", str(tmp_path / "new") + "/", check=1)
    assert "not a regular file" in p.stderr
    assert not os.path.lexists(tmp_path / "new")


def stopped_while_writing(daemon, tmp_path, out):
    """Starts exporting a 128 MiB model to out and stops the process with
    SIGSTOP while its temporary file exists; returns the Popen."""
    n = 128 << 20
    src = str(tmp_path / "big.safetensors")
    h = json.dumps({"a": {"dtype": "U8", "shape": [n],
                          "data_offsets": [0, n]}}).encode()
    with open(src, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        f.truncate(8 + len(h) + n)
    cli(daemon, "import", src, "big", check=0)
    d, base = os.path.split(out)

    def temporaries():
        return [f for f in os.listdir(d)
                if f.startswith("." + base + ".") and f.endswith(".tmp")]

    def stopped(pid):
        """Waits until pid is stopped (True) or has exited (False)."""
        while True:
            try:
                with open("/proc/%d/stat" % pid) as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                return False
            if state in "tT":
                return True
            if state in "ZX":
                return False

    for _ in range(5):              # Retry if an export outran the polling.
        proc = subprocess.Popen([daemon.cli, "--socket", daemon.socket,
                                 "export", "big", out])
        while not temporaries() and proc.poll() is None:
            pass
        proc.send_signal(signal.SIGSTOP)
        if stopped(proc.pid) and temporaries():
            return proc
        proc.send_signal(signal.SIGCONT)
        proc.wait()
        if os.path.lexists(out):
            os.unlink(out)
    pytest.skip("every export finished before its temporary file was seen")


def test_cli_export_interrupted_removes_its_temporary_file(daemon, tmp_path):
    """SIGINT during the copy ends export as SIGINT would, with its
    temporary file removed and FILE not created."""
    out = str(tmp_path / "out.safetensors")
    proc = stopped_while_writing(daemon, tmp_path, out)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    assert proc.wait(30) == -signal.SIGINT
    assert sorted(os.listdir(tmp_path)) == ["big.safetensors", "wb.sock",
                                            "wbrokerd.log"]


def test_cli_export_checks_the_file_again_before_the_rename(daemon, tmp_path):
    """FILE turned into a fifo while export writes is refused at the rename
    and left alone."""
    out = str(tmp_path / "out.safetensors")
    proc = stopped_while_writing(daemon, tmp_path, out)
    os.mkfifo(out)
    proc.send_signal(signal.SIGCONT)
    assert proc.wait(30) == 1
    assert stat.S_ISFIFO(os.lstat(out).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["big.safetensors",
                                            "out.safetensors", "wb.sock",
                                            "wbrokerd.log"]


def test_cli_export_to_stdout(daemon, model_file, tmp_path):
    """FILE '-' writes the safetensors image to standard output, the same
    bytes as a file; './-' is a file named '-'."""
    path, raw = model_file
    cli(daemon, "import", path, "net", check=0)
    out = str(tmp_path / "out.safetensors")
    cli(daemon, "export", "net", out, check=0)
    p = subprocess.run([daemon.cli, "--socket", daemon.socket, "export",
                        "net@1", "-"], capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stderr == b""
    assert p.stdout == open(out, "rb").read()
    piped = str(tmp_path / "piped.safetensors")
    with open(piped, "wb") as f:
        subprocess.run([daemon.cli, "--socket", daemon.socket, "export",
                        "net", "-"], stdout=f, check=True, timeout=60)
    meta, got = read_st(piped)
    assert meta == {"format": "pt", "note": "héllo"}
    assert {k: v[2] for k, v in got.items()} == raw
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    subprocess.run([daemon.cli, "--socket", daemon.socket, "export", "net",
                    "./-"], cwd=cwd, check=True, capture_output=True,
                   timeout=60)
    assert open(cwd / "-", "rb").read() == p.stdout
    # An unknown version writes nothing to stdout.
    p = subprocess.run([daemon.cli, "--socket", daemon.socket, "export",
                        "net@9", "-"], capture_output=True, timeout=60)
    assert p.returncode == 1 and p.stdout == b""
    assert b"no such version" in p.stderr


def test_cli_export_to_stdout_refuses_json_and_terminals(daemon, model_file):
    """'-' cannot be combined with --json, and is refused when stdout is a
    terminal: exit 2, nothing written."""
    path, _ = model_file
    cli(daemon, "import", path, "net", check=0)
    p = cli(daemon, "--json", "export", "net", "-", check=2)
    assert p.stdout == "" and "--json" in p.stderr
    master, slave = os.openpty()
    try:
        proc = subprocess.run([daemon.cli, "--socket", daemon.socket,
                               "export", "net", "-"], stdout=slave,
                              stderr=subprocess.PIPE, timeout=60)
        os.close(slave)
        slave = -1
        try:                        # EIO: closed slave, nothing written.
            got = os.read(master, 4096)
        except OSError:
            got = b""
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 2, proc.stderr
    assert b"terminal" in proc.stderr
    assert got == b""


# ---------------------------------------------------------------- rm

def test_cli_rm_version_and_model(make_daemon, model_file):
    """rm MODEL@VERSION drops one version, rm MODEL drops them all."""
    daemon = make_daemon("--keep", "0")
    path, _ = model_file
    for _ in range(3):
        cli(daemon, "import", path, "net", check=0)
    p = cli(daemon, "rm", "net@2", check=0)
    assert "net@2" in p.stdout
    (info,) = cli_json(daemon, "ls")
    assert info["versions"] == 2 and info["latest"] == 3
    j = cli_json(daemon, "info", "net@2", check=1)
    assert j["error"] == "ENOVERSION" and j["code"] == -5
    assert cli_json(daemon, "info", "net@1")["version"] == 1
    assert cli_json(daemon, "rm", "net") == {"model": "net", "version": None,
                                             "dropped": True}
    assert cli_json(daemon, "ls") == []
    assert cli_json(daemon, "rm", "net", check=1)["error"] == "ENOMODEL"


# ---------------------------------------------------------------- errors

def test_cli_unknown_model(daemon):
    """An unknown model is exit 1 with ENOMODEL, on stderr and in JSON."""
    p = cli(daemon, "info", "nope", check=1)
    assert p.stderr.startswith("wbroker: no such model")
    assert p.stdout == ""
    j = cli_json(daemon, "info", "nope", check=1)
    assert j["error"] == "ENOMODEL" and j["code"] == -4
    assert "nope" in j["message"]
    out = os.path.join(daemon.dir, "nope.safetensors")
    assert cli_json(daemon, "export", "nope", out, check=1)["error"] \
        == "ENOMODEL"
    assert not os.path.lexists(out)


def test_cli_model_names_with_at_signs(daemon, model_file):
    """Only a last '@' followed by digits separates a version."""
    path, _ = model_file
    cli(daemon, "import", path, "team@site", check=0)
    assert cli_json(daemon, "info", "team@site")["model"] == "team@site"
    assert cli_json(daemon, "info", "team@site@1")["version"] == 1


@pytest.mark.parametrize("args", [
    [], ["bogus"], ["--bogus", "ls"], ["ls", "extra"], ["info"],
    ["info", "a", "b"], ["info", "m@0"], ["info", "m@"], ["info", "@3"],
    ["info", "m@99999999999999999999999"], ["rm"], ["import", "f"],
    ["export", "m"], ["watch"], ["plan", "m"], ["plan", "m", "--target"],
    ["info", "--no-strict", "m"], ["--socket"], ["status", "--frobnicate"],
])
def test_cli_bad_usage(daemon, args):
    """Bad usage exits 2 and says why on stderr."""
    p = cli(daemon, *args, check=2)
    assert p.stderr.startswith("wbroker: ")
    assert p.stdout == ""


def test_cli_unreachable_daemon(tmp_path):
    """No daemon: exit 1 and the message names the socket path."""
    from conftest import BUILD
    sock = str(tmp_path / "nobody-home.sock")
    exe = os.path.join(BUILD, "wbroker")
    p = subprocess.run([exe, "--socket", sock, "ls"], capture_output=True,
                       text=True)
    assert p.returncode == 1
    assert sock in p.stderr
    p = subprocess.run([exe, "--json", "status"], capture_output=True,
                       text=True, env=dict(os.environ, WBROKER_SOCKET=sock))
    assert p.returncode == 1
    j = json.loads(p.stdout)
    assert j["error"] == "ECONNECT" and sock in j["message"]


def test_cli_help_and_version(daemon):
    """--help and --version succeed without a daemon."""
    p = cli(daemon, "--help", check=0)
    for cmd in ("status", "ls", "info", "import", "export", "plan", "rm",
                "watch"):
        assert cmd in p.stdout
    p = cli(daemon, "--version", check=0)
    assert p.stdout.startswith("wbroker ")
    assert cli(daemon, "plan", "--help", check=0).stdout.count("--target")
    p = cli(daemon, "export", "--help", check=0)
    assert "FILE|-" in p.stdout and "stdout for -" in p.stdout


# ---------------------------------------------------------------- status

def test_cli_status(daemon, model_file):
    """status reports the daemon's version, pid, memory and counts."""
    path, _ = model_file
    cli(daemon, "import", path, "net", check=0)
    cli(daemon, "import", path, "net", check=0)
    j = cli_json(daemon, "status")
    assert j["pid"] == daemon.pid
    assert j["models"] == 1 and j["versions"] == 2
    assert j["clients"] >= 1
    assert j["memory_used"] > 0 and j["memory_limit"] >= j["memory_used"]
    assert j["uptime"] >= 0 and isinstance(j["version"], str)
    assert j["socket"] == daemon.socket
    p = cli(daemon, "status", check=0)
    for word in ("wbrokerd", "uptime", "memory", "models", "versions",
                 "clients", str(daemon.pid), daemon.socket):
        assert word in p.stdout


def test_cli_uses_wbroker_socket_env(daemon):
    """Without --socket the CLI finds the daemon through $WBROKER_SOCKET."""
    p = subprocess.run([daemon.cli, "--json", "status"], capture_output=True,
                       text=True, env=daemon.env())
    assert p.returncode == 0 and json.loads(p.stdout)["pid"] == daemon.pid


# ---------------------------------------------------------------- plan

@pytest.fixture
def plan_setup(daemon, tmp_path):
    """A source model keyed layerN.* and a target file keyed fcN.*."""
    g = torch.Generator().manual_seed(2)
    src = str(tmp_path / "src.safetensors")
    write_st(src, {"layer1.weight": torch.randn(20, 10, generator=g),
                   "layer1.bias": torch.randn(20, generator=g),
                   "layer2.weight": torch.randn(5, 20, generator=g),
                   "layer2.bias": torch.randn(5, generator=g)})
    cli(daemon, "import", src, "net", check=0)
    target = str(tmp_path / "Net.safetensors")
    write_header_only(target, {"fc1.weight": ("F32", [20, 10]),
                               "fc1.bias": ("F32", [20]),
                               "fc2.weight": ("F32", [5, 20]),
                               "fc2.bias": ("F32", [5])})
    rules = str(tmp_path / "rules.txt")
    with open(rules, "w") as f:
        f.write("# layerN.x -> fcN.x\n"
                "regex layer(\\d+)\\.(.*) -> fc\\1.\\2\n")
    return target, rules, tmp_path


def test_cli_plan_with_rules_maps_everything(daemon, plan_setup):
    """A rules file that renames layerN to fcN maps every target tensor."""
    target, rules, _ = plan_setup
    p = cli(daemon, "plan", "net", "--target", target, "--rules", rules,
            check=0)
    assert "mapped      4 of 4 target tensors" in p.stdout
    assert "result      ok" in p.stdout
    j = cli_json(daemon, "plan", "net", "--target", target, "--rules", rules)
    assert j["ok"] is True and j["mapped"] == 4 and j["version"] == 1
    assert j["target"].endswith("Net.safetensors") and j["target_tensors"] == 4
    assert j["missing"] == [] and j["unexpected"] == []
    assert j["mismatched"] == [] and j["cast"] == []


def test_cli_plan_strict_failure(daemon, plan_setup):
    """Without rules a strict plan fails: exit 1, PyTorch-format text."""
    target, _, _ = plan_setup
    p = cli(daemon, "plan", "net", "--target", target, check=1)
    assert "Error(s) in loading state_dict for Net.safetensors:" in p.stderr
    assert 'Missing key(s) in state_dict: "fc1.weight"' in p.stderr
    assert "Unexpected key(s) in state_dict:" in p.stderr
    assert "missing keys:" in p.stdout and "  layer1.bias" in p.stdout
    j = cli_json(daemon, "plan", "net", "--target", target, check=1)
    assert j["ok"] is False and j["error"] == "ELOAD" and j["code"] == -20
    assert j["message"].startswith("Error(s) in loading state_dict for")
    assert sorted(j["missing"]) == ["fc1.bias", "fc1.weight", "fc2.bias",
                                    "fc2.weight"]
    assert sorted(j["unexpected"]) == ["layer1.bias", "layer1.weight",
                                       "layer2.bias", "layer2.weight"]


def test_cli_plan_no_strict_reports_keys(daemon, plan_setup):
    """--no-strict reports missing and unexpected keys and succeeds."""
    target, _, tmp = plan_setup
    rules = str(tmp / "partial.txt")
    with open(rules, "w") as f:
        f.write("rename layer1.weight -> fc1.weight\n"
                "exclude layer2.*\n")
    p = cli(daemon, "plan", "net", "--target", target, "--rules", rules,
            check=1)
    assert "Missing key(s)" in p.stderr
    j = cli_json(daemon, "plan", "net", "--target", target, "--rules", rules,
                 "--no-strict")
    assert j["ok"] is True and j["mapped"] == 1
    assert sorted(j["missing"]) == ["fc1.bias", "fc2.bias", "fc2.weight"]
    assert j["unexpected"] == ["layer1.bias"]


def test_cli_plan_size_mismatch_and_cast(daemon, plan_setup):
    """A size mismatch fails even with --no-strict unless ignored; a dtype
    difference is a cast."""
    _, rules, tmp = plan_setup
    target = str(tmp / "Other.safetensors")
    write_header_only(target, {"fc1.weight": ("F32", [20, 11]),
                               "fc1.bias": ("F16", [20]),
                               "fc2.weight": ("F32", [5, 20]),
                               "fc2.bias": ("F32", [5])})
    p = cli(daemon, "plan", "net", "--target", target, "--rules", rules,
            "--no-strict", check=1)
    assert "size mismatch for fc1.weight" in p.stderr
    j = cli_json(daemon, "plan", "net", "--target", target, "--rules", rules,
                 "--no-strict", "--ignore-mismatched-sizes")
    assert j["ok"] is True and j["mismatched"] == ["fc1.weight"]
    assert j["cast"] == ["fc1.bias"] and j["mapped"] == 3


def test_cli_plan_errors(daemon, plan_setup):
    """A bad rules file, a missing target or model is exit 1."""
    target, rules, tmp = plan_setup
    bad = str(tmp / "bad.txt")
    with open(bad, "w") as f:
        f.write("rename a\n")
    p = cli(daemon, "plan", "net", "--target", target, "--rules", bad,
            check=1)
    assert "line 1" in p.stderr
    cli(daemon, "plan", "net", "--target", str(tmp / "none"), check=1)
    j = cli_json(daemon, "plan", "zzz", "--target", target, check=1)
    assert j["error"] == "ENOMODEL"


# ---------------------------------------------------------------- watch

class LineReader:
    """Reads lines from a pipe with a timeout, without Python's buffering
    hiding lines from select()."""

    def __init__(self, f):
        self.fd = f.fileno()
        self.buf = b""

    def line(self, timeout):
        """Returns the next line (str), or None after timeout seconds."""
        deadline = time.time() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                return None
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                chunk = os.read(self.fd, 4096)
                if not chunk:
                    return None
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_watch_prints_new_versions(daemon, model_file, as_json):
    """watch prints a version that another process commits, and not the
    versions that existed before it started."""
    path, _ = model_file
    cli(daemon, "import", path, "net", check=0)
    args = [daemon.cli, "--socket", daemon.socket] + \
        (["--json"] if as_json else []) + ["watch", "net"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE)
    out = LineReader(proc.stdout)

    def parse(line):
        if as_json:
            j = json.loads(line)
            assert j["model"] == "net"
            return j["version"]
        return int(line)

    try:
        # watch starts from the latest version it finds; publish until it
        # has surely started and reports one.
        line = None
        published = []
        deadline = time.time() + 20
        while line is None and time.time() < deadline:
            published.append(cli_json(daemon, "import", path, "net")["version"])
            line = out.line(0.5)
        assert line is not None
        got = parse(line)
        assert got in published and got > 1
        v = cli_json(daemon, "import", path, "net")["version"]
        while got != v:
            line = out.line(10)
            assert line is not None
            nxt = parse(line)
            assert nxt > got and nxt in published + [v]
            got = nxt
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- shmem

def test_cli_status_shmem_follows_the_kernel(daemon, tmp_path):
    """status shows what the kernel has allocated to the daemon's segments:
    at least the 4 MiB of a model once it is published, nothing once it is
    dropped; the same in the table, in --json (shmem) and in the Python
    binding (memory_shmem)."""
    import wbroker
    mib = 1024 * 1024
    path = str(tmp_path / "big.safetensors")
    write_st(path, {"w": torch.arange(mib, dtype=torch.float32)})
    assert cli_json(daemon, "status")["shmem"] == 0
    cli(daemon, "import", path, "big", check=0)
    j = cli_json(daemon, "status")
    assert j["shmem"] >= 4 * mib
    with wbroker.connect(daemon.socket) as c:
        assert c.status().memory_shmem == j["shmem"]
    lines = cli(daemon, "status", check=0).stdout.splitlines()
    shm = [ln.split()[1:] for ln in lines if ln.startswith("shmem ")]
    assert len(shm) == 1 and shm[0][1] == "MiB" and float(shm[0][0]) >= 4
    cli(daemon, "rm", "big", check=0)
    assert cli_json(daemon, "status")["shmem"] == 0
    with wbroker.connect(daemon.socket) as c:
        assert c.status().memory_shmem == 0
    assert "shmem     0 B" in cli(daemon, "status", check=0).stdout


# ---------------------------------------------------------------- messages

def test_cli_import_names_torch_save_files(daemon, tmp_path):
    """A torch.save file given to import is named for what it is (both the
    zip archive torch writes now and the legacy pickle), with what to do,
    instead of an absurd header length."""
    for zipped, what in ((True, "torch.save archive"), (False, "pickle")):
        path = str(tmp_path / ("m%d.pt" % zipped))
        torch.save({"w": torch.zeros(3)}, path,
                   _use_new_zipfile_serialization=zipped)
        p = cli(daemon, "import", path, "m", check=1)
        assert "not a safetensors file" in p.stderr and what in p.stderr, \
            p.stderr
        assert "save_file" in p.stderr


def test_cli_unreachable_daemon_says_what_to_do(tmp_path):
    """Without a daemon the message names the socket once and says what to
    do about it; exit status 1."""
    from wbt_daemon import BUILD
    sock = str(tmp_path / "none.sock")
    p = subprocess.run([os.path.join(BUILD, "wbroker"), "--socket", sock,
                        "status"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert p.stderr.count(sock) == 1, p.stderr
    assert "start one" in p.stderr and "WBROKER_SOCKET" in p.stderr
    assert p.stderr.count("cannot connect") == 1, p.stderr


def test_cli_status_counters(daemon, model_file):
    """status --json carries counters an operator graphs: requests by op,
    error replies by code, bytes by page size; they only grow."""
    cli(daemon, "import", model_file[0], "m", check=0)
    cli(daemon, "info", "nope", check=1)
    cli(daemon, "info", "nope", check=1)
    c1 = cli_json(daemon, "status")["counters"]
    assert c1["errors.ENOMODEL"] >= 2
    assert c1["requests.publish"] == 1 and c1["requests.commit"] == 1
    assert c1["requests.status"] >= 1
    assert c1["bytes.4k"] > 0
    c2 = cli_json(daemon, "status")["counters"]
    assert c2["requests.status"] > c1["requests.status"]
    assert all(c2[k] >= v for k, v in c1.items() if not k.startswith("bytes"))


def _memory_cgroup(tmp_path):
    """A fresh memory cgroup (v1 here; v2 where that is mounted): (dir,
    limit file).  Skips where the machine does not let us make one."""
    name = "wbt-%d-%s" % (os.getpid(), os.path.basename(str(tmp_path)))
    for root, limit in (("/sys/fs/cgroup/memory", "memory.limit_in_bytes"),
                        ("/sys/fs/cgroup", "memory.max")):
        if not os.path.exists(os.path.join(root, limit if root.endswith(
                "memory") else "cgroup.subtree_control")):
            continue
        d = os.path.join(root, name)
        try:
            os.mkdir(d)
        except OSError:
            continue
        if os.path.exists(os.path.join(d, limit)):
            return d, os.path.join(d, limit)
        os.rmdir(d)
    pytest.skip("no memory cgroup can be made here (not root, or no "
                "memory controller)")


def test_cli_memory_limit_follows_the_cgroup(tmp_path):
    """A daemon in a cgroup with 256 MiB takes a limit below that, whatever
    --memory-limit says, so a publish over it is a clean ELIMIT, never the
    OOM killer."""
    from wbt_daemon import Daemon
    cg, limit_file = _memory_cgroup(tmp_path)
    d = None
    try:
        with open(limit_file, "w") as f:
            f.write(str(256 << 20))
        procs = os.path.join(cg, "cgroup.procs")

        def enter():
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        d = Daemon(tmp_path, ["--memory-limit", "8G"], preexec=enter)
        st = cli_json(d, "status")
        assert 0 < st["memory_limit"] < (256 << 20)
        assert "cgroup allows" in open(d.log).read()
        path = str(tmp_path / "big.safetensors")
        write_st(path, {"w": torch.zeros(64 << 20, dtype=torch.float32)})
        p = cli(d, "import", path, "big", check=1)
        assert "memory limit" in p.stderr, p.stderr
        assert cli_json(d, "status")["memory_used"] == 0
    finally:
        if d is not None:
            assert d.stop() == 0
        os.rmdir(cg)
