"""Tests of the wbroker Python API besides load_into(): state_dict views
and their lifetime, publish edge cases, safetensors import and export,
models / drop / watch, and errors."""
import gc
import json
import os
import re
import struct
import subprocess
import threading
import warnings

import pytest
import torch

import wbroker

from st_bytes import DTYPES, tensor_bytes, write_st


def read_st(path):
    """Reads a safetensors file by hand: (name -> (dtype, shape, bytes),
    metadata)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    end = max([e["data_offsets"][1] for e in header.values()] or [0])
    assert end == len(data)
    return {k: (e["dtype"], e["shape"],
                data[e["data_offsets"][0]:e["data_offsets"][1]])
            for k, e in header.items()}, meta


def sample_tensors():
    g = torch.Generator().manual_seed(7)
    return {
        "w": torch.randn(4, 3, generator=g),
        "w_t": torch.randn(3, 5, generator=g).t(),   # not contiguous
        "half": torch.randn(6, generator=g).half(),
        "bf": torch.randn(2, 2, generator=g).to(torch.bfloat16),
        "d": torch.randn(3, generator=g).double(),
        "i64": torch.arange(5),
        "i32": torch.arange(-3, 3, dtype=torch.int32),
        "i16": torch.tensor([-7, 7], dtype=torch.int16),
        "i8": torch.tensor([-1, 2, 3], dtype=torch.int8),
        "u8": torch.tensor([255, 0], dtype=torch.uint8),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "slice": torch.arange(10.0)[3:7],           # a storage offset
    }


def memfd_lines(label):
    """Lines of /proc/self/maps that map a segment of model `label`."""
    pat = re.compile(r"/memfd:wbroker:%s( |$)" % re.escape(label))
    with open("/proc/self/maps") as f:
        return [line for line in f if pat.search(line)]


def fd_count():
    return len(os.listdir("/proc/self/fd"))


# Every dtype and odd shape survives publish -> state_dict unchanged.
def test_python_publish_state_dict_round_trip(daemon):
    src = sample_tensors()
    with wbroker.connect(daemon.socket) as c:
        assert c.publish("m", src, metadata={"step": "10"}) == 1
        assert c.publish("m", src) == 2
        sd = c.state_dict("m")
        assert c.metadata("m", version=1) == {"step": "10"}
    assert sorted(sd) == sorted(src)
    for k, t in src.items():
        assert sd[k].dtype == t.dtype and sd[k].shape == t.shape, k
        assert torch.equal(sd[k], t), k


# state_dict() tensors are views of the segment: no copy, no warning, and
# writes stay private to the view's mapping.
def test_python_state_dict_views(daemon):
    with wbroker.connect(daemon.socket) as c:
        c.publish("views", {"w": torch.ones(1000)})
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sd = c.state_dict("views")
            other = c.state_dict("views", version=1)
            sd["w"].add_(1)
    assert memfd_lines("views")
    ptr = sd["w"].data_ptr()
    ranges = [[int(x, 16) for x in line.split()[0].split("-")]
              for line in memfd_lines("views")]
    assert any(lo <= ptr < hi for lo, hi in ranges)
    assert torch.equal(sd["w"], torch.full((1000,), 2.0))
    assert torch.equal(other["w"], torch.ones(1000))


# The segment stays mapped while any view lives and goes with the last.
def test_python_state_dict_lifetime(daemon):
    with wbroker.connect(daemon.socket) as c:
        c.publish("life", {"a": torch.arange(10.0), "b": torch.ones(3)})
        fds = fd_count()
        sd = c.state_dict("life")
    a = sd["a"][2:5]            # a view of a view
    del sd
    gc.collect()
    assert memfd_lines("life")
    assert torch.equal(a, torch.tensor([2.0, 3.0, 4.0]))
    del a
    gc.collect()
    assert memfd_lines("life") == []
    assert fd_count() <= fds


# Parameters loaded zero-copy keep the mapping alive after the client is
# closed and the version dropped, and release it when replaced.
def test_python_load_into_lifetime(daemon):
    net = torch.nn.Linear(4, 2)
    with wbroker.connect(daemon.socket) as c:
        c.publish("lin", net)
        target = torch.nn.Linear(4, 2)
        c.load_into(target, "lin")
        c.drop("lin")
    assert memfd_lines("lin")
    assert torch.equal(target.weight, net.weight)
    target.weight.data = torch.zeros(2, 4)
    target.bias.data = torch.zeros(2)
    gc.collect()
    assert memfd_lines("lin") == []


# A publish that fails half-way is aborted: nothing becomes visible.
def test_python_publish_abort(daemon, monkeypatch):
    with wbroker.connect(daemon.socket) as c:
        with pytest.raises(TypeError):
            c.publish("bad", {"w": torch.ones(2), "x": [1, 2]})
        with pytest.raises(TypeError):
            c.publish("bad", {"c": torch.ones(2, dtype=torch.complex64)})

        def boom(client, p, i, key, t):
            raise RuntimeError("interrupted")
        monkeypatch.setattr(wbroker.publish, "_write", boom)
        with pytest.raises(RuntimeError, match="interrupted"):
            c.publish("bad", {"w": torch.ones(2)})
        monkeypatch.undo()
        assert c.models() == []
        assert c.publish("bad", {"w": torch.ones(2)}) == 1


# models(), drop() and KeyError for what is gone.
def test_python_models_and_drop(daemon):
    with wbroker.connect(daemon.socket) as c:
        c.publish("a", {"w": torch.ones(4)})
        c.publish("a", {"w": torch.ones(4), "b": torch.ones(2)})
        c.publish("z", {"w": torch.ones(1, dtype=torch.float64)})
        info = {m.name: m for m in c.models()}
        assert set(info) == {"a", "z"}
        a = info["a"]
        assert (a.version, a.versions, a.tensors, a.bytes) == (2, 2, 2, 24)
        # The digest of the latest version: 32 hex digits, its own.
        assert len(a.digest) == 32 and int(a.digest, 16) >= 0
        assert a.digest != info["z"].digest
        c.drop("a", version=1)
        assert {m.name: m.versions for m in c.models()}["a"] == 1
        with pytest.raises(KeyError):
            c.state_dict("a", version=1)
        c.drop("a")
        assert [m.name for m in c.models()] == ["z"]
        with pytest.raises(KeyError):
            c.drop("a")
        with pytest.raises(KeyError) as err:
            c.state_dict("nope")
        assert isinstance(err.value, wbroker.Error)
        assert err.value.name == "ENOMODEL" and "nope" in str(err.value)
        with pytest.raises(KeyError):
            c.load_into(torch.nn.Linear(1, 1), "nope")
        with pytest.raises(KeyError):
            c.state_dict("z", version=9)
        assert c.status().models == 1


# watch() yields each version committed after the call.
def test_python_watch(daemon):
    with wbroker.connect(daemon.socket) as pub, \
            wbroker.connect(daemon.socket) as c:
        pub.publish("w", {"x": torch.ones(1)})
        it = c.watch("w", timeout=20)
        got = []
        step = threading.Event()

        def publisher():
            for _ in range(2):
                step.wait(20)
                step.clear()
                pub.publish("w", {"x": torch.ones(1)})
        t = threading.Thread(target=publisher)
        t.start()
        for _ in range(2):
            step.set()
            got.append(next(it))
        t.join()
        assert got == [2, 3]
        assert list(c.watch("w", timeout=0.2)) == []
        # A model that does not exist yet.
        it = c.watch("later", timeout=20)
        pub.publish("later", {"x": torch.ones(1)})
        assert next(it) == 1


# publish_file() and export() round-trip through an independent reader.
def test_python_safetensors_round_trip(daemon, tmp_path):
    src = sample_tensors()
    path = tmp_path / "in.safetensors"
    write_st(path, src, metadata={"format": "pt", "who": "test"})
    out = tmp_path / "out.safetensors"
    with wbroker.connect(daemon.socket) as c:
        assert c.publish_file(str(path), "st") == 1
        sd = c.state_dict("st")
        for k, t in src.items():
            assert sd[k].dtype == t.dtype and torch.equal(sd[k], t), k
        assert c.metadata("st") == {"format": "pt", "who": "test"}
        c.publish("st", {"only": torch.arange(3)})
        assert c.export("st", out, version=1) == 1
        files = os.listdir(tmp_path)
        assert not [f for f in files if f.endswith(".tmp")]
        got, meta = read_st(out)
        assert meta == {"format": "pt", "who": "test"}
        assert sorted(got) == sorted(src)
        for k, t in src.items():
            dtype, shape, raw = got[k]
            assert dtype == DTYPES[t.dtype] and shape == list(t.shape), k
            assert raw == tensor_bytes(t), k
        # The latest version, published from tensors; over an old file.
        assert c.export("st", str(out)) == 2
        got, _ = read_st(out)
        assert got == {"only": ("I64", [3], tensor_bytes(torch.arange(3)))}
        # An exported file imports again.
        assert c.publish_file(out, "again") == 1
        assert torch.equal(c.state_dict("again")["only"], torch.arange(3))
        with pytest.raises(KeyError):
            c.export("nope", tmp_path / "x.safetensors")
        assert not os.path.exists(tmp_path / "x.safetensors")


# export() replaces only regular files: a fifo, a directory or a symlink
# where the file should go is left as it was.
def test_python_export_refuses_non_regular_targets(daemon, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "link"
    os.symlink(victim, link)
    sub = tmp_path / "dir"
    sub.mkdir()
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", {"w": torch.arange(4)})
        for target in (fifo, link, sub):
            with pytest.raises(wbroker.Error, match="not a regular file") \
                    as err:
                c.export("m", target)
            assert err.value.name == "EINVAL"
    assert os.path.islink(link) and victim.read_bytes() == b"precious"
    assert os.path.isdir(sub) and not os.listdir(sub)
    import stat
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def header_file(path, header, data=b""):
    h = json.dumps(header).encode() if not isinstance(header, bytes) \
        else header
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


BAD_FILES = {
    "duplicate": (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                  b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
                  b"\0" * 8, "duplicate"),
    "dtype": ({"a": {"dtype": "F128", "shape": [1],
                     "data_offsets": [0, 4]}}, b"\0" * 4, "dtype"),
    "size": ({"a": {"dtype": "F32", "shape": [2],
                    "data_offsets": [0, 4]}}, b"\0" * 4, "needs 8"),
    "hole": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
             b"\0" * 8, "hole"),
    "overlap": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
                b"\0" * 8, "overlaps"),
    "trailing": ({"a": {"dtype": "F32", "shape": [1],
                        "data_offsets": [0, 4]}}, b"\0" * 6, "cover"),
    "short": ({"a": {"dtype": "F32", "shape": [1],
                     "data_offsets": [0, 4]}}, b"\0" * 2, "cover"),
    "json": (b'{"a": ', b"", "JSON"),
    "negative": ({"a": {"dtype": "F32", "shape": [-1],
                        "data_offsets": [0, 0]}}, b"", "shape"),
    "metadata": ({"__metadata__": {"k": 1}}, b"", "metadata"),
    "not_object": (b"[1, 2]      ", b"", "'{'"),
    "tie_unknown": ({"__metadata__": {"wbroker.tied": '{"b": "nope"}'},
                     "a": {"dtype": "F32", "shape": [1],
                           "data_offsets": [0, 4]}}, b"\0" * 4, "tie"),
    "tie_json": ({"__metadata__": {"wbroker.tied": "[1]"},
                  "a": {"dtype": "F32", "shape": [1],
                        "data_offsets": [0, 4]}}, b"\0" * 4, "tied"),
}


# Invalid safetensors files are refused before anything is published.
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_python_publish_file_rejects(daemon, tmp_path, case):
    header, data, why = BAD_FILES[case]
    path = tmp_path / "bad.safetensors"
    header_file(path, header, data)
    with wbroker.connect(daemon.socket) as c:
        with pytest.raises(wbroker.FormatError, match=why):
            c.publish_file(path, "bad")
        assert c.models() == []


HOSTILE_FILES = {
    "deep": (b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}", b"",
             "maximum parsing depth"),
    "huge_int": (b'{"a": {"dtype": "U8", "shape": [' + b"9" * 5000 +
                 b'], "data_offsets": [0, 0]}}', b"", "too big integer"),
    "over_int64": (b'{"a": {"dtype": "U8", "shape": [9223372036854775808, '
                   b'0], "data_offsets": [0, 0]}}', b"", "too big integer"),
    "nan": (b'{"a": {"dtype": "F32", "shape": [NaN], '
            b'"data_offsets": [0, 4]}}', b"\0" * 4, "NaN"),
    "not_utf8": (b'{"\xff": {"dtype": "F32", "shape": [1], '
                 b'"data_offsets": [0, 4]}}', b"\0" * 4, "unable to decode"),
    "lone_surrogate": (b'{"\\ud800": {"dtype": "F32", "shape": [1], '
                       b'"data_offsets": [0, 4]}}', b"\0" * 4,
                       "invalid Unicode"),
    "overflow": (b'{"a": {"dtype": "F64", "shape": [4294967296, 4294967296],'
                 b' "data_offsets": [0, 0]}}', b"", "overflows"),
    "tie_list": ({"__metadata__": {"wbroker.tied": '{"b": ["a"]}'},
                  "a": {"dtype": "F32", "shape": [1],
                        "data_offsets": [0, 4]}}, b"\0" * 4, "tie"),
    "tie_deep": ({"__metadata__": {"wbroker.tied": "[" * 100000},
                  "a": {"dtype": "F32", "shape": [1],
                        "data_offsets": [0, 4]}}, b"\0" * 4, "wbroker.tied"),
}


# Hostile headers (deep nesting, numbers beyond 64 bits, non-JSON literals,
# bad text) are a FormatError from publish_file, never another exception,
# with the library parser's reason, and nothing is published.
# tests/python/test_safetensors_hostile.py has the full table.
@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_python_publish_file_rejects_hostile_headers(daemon, tmp_path, case):
    header, data, why = HOSTILE_FILES[case]
    path = tmp_path / "hostile.safetensors"
    header_file(path, header, data)
    with wbroker.connect(daemon.socket) as c:
        with pytest.raises(wbroker.FormatError, match=why) as err:
            c.publish_file(path, "hostile")
        assert type(err.value) is wbroker.FormatError
        assert c.models() == []


# A header length beyond the cap or the file is refused without reading.
def test_python_publish_file_header_length(daemon, tmp_path):
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 200 << 20) + b"{}")
    with wbroker.connect(daemon.socket) as c:
        with pytest.raises(ValueError, match="limit"):
            c.publish_file(path, "big")
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", 100) + b"{}")
        with pytest.raises(ValueError, match="past the end"):
            c.publish_file(path, "big")
        with open(path, "wb") as f:
            f.write(b"\1\0")
        with pytest.raises(ValueError, match="shorter"):
            c.publish_file(path, "big")


# An unreachable daemon is a ConnectionError naming the socket path.
def test_python_connect_errors(daemon, tmp_path, monkeypatch):
    missing = str(tmp_path / "no-such.sock")
    with pytest.raises(ConnectionError) as err:
        wbroker.connect(missing)
    e = err.value
    assert missing in str(e) and e.socket == missing
    assert isinstance(e, wbroker.Error) and e.name == "ECONNECT"
    not_socket = tmp_path / "file"
    not_socket.write_text("")
    with pytest.raises(ConnectionError, match=str(not_socket)):
        wbroker.connect(not_socket)
    # No argument: $WBROKER_SOCKET.
    monkeypatch.setenv("WBROKER_SOCKET", daemon.socket)
    with wbroker.connect() as c:
        assert c.socket == daemon.socket
        assert c.models() == []
    with pytest.raises(wbroker.Error, match="closed"):
        c.models()


# A stopped daemon surfaces as a ConnectionError on the next call.
def test_python_daemon_gone(make_daemon):
    d = make_daemon()
    c = wbroker.connect(d.socket)
    d.stop()
    with pytest.raises(ConnectionError):
        c.models()
    c.close()


# LoadError carries the code, the name and the report.
def test_python_load_error_attributes(daemon):
    with wbroker.connect(daemon.socket) as c:
        c.publish("lin", torch.nn.Linear(4, 2))
        with pytest.raises(wbroker.LoadError) as err:
            c.load_into(torch.nn.Linear(4, 3), "lin")
    e = err.value
    assert isinstance(e, RuntimeError) and isinstance(e, wbroker.Error)
    assert (e.code, e.name) == (-20, "ELOAD")
    assert e.result.mismatched_keys == ["weight", "bias"]
    assert e.result.version == 1
    assert str(e).startswith("Error(s) in loading state_dict for Linear:")


# ignore_mismatched_sizes skips and reports size mismatches.
def test_python_ignore_mismatched_sizes(daemon):
    src = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with wbroker.connect(daemon.socket) as c:
        c.publish("seq", src)
        target = torch.nn.Sequential(torch.nn.Linear(4, 3),
                                     torch.nn.Linear(3, 5))
        keep = target[1].weight.detach().clone()
        with pytest.raises(wbroker.LoadError):
            c.load_into(target, "seq", strict=False)
        r = c.load_into(target, "seq", ignore_mismatched_sizes=True)
    assert r.mismatched_keys == ["1.weight", "1.bias"]
    assert r.missing_keys == [] and r.unexpected_keys == []
    assert torch.equal(target[0].weight, src[0].weight)
    assert torch.equal(target[1].weight, keep)


class TiedLM(torch.nn.Module):
    """A small language model whose output layer shares the embedding."""

    def __init__(self, tie=True):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.body = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 50, bias=False)
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(torch.tanh(self.body(self.emb(x))))


# Tied weights are stored once and published under both names; a tied
# target stays tied, an untied one gets its own copy of the second; export
# lists the stored tensor once and records the tie, which both importers
# (Python and the CLI) restore.
def test_python_tied_weights(daemon, tmp_path):
    torch.manual_seed(3)
    src = TiedLM()
    x = torch.arange(10)
    out = tmp_path / "lm.safetensors"
    with wbroker.connect(daemon.socket) as c:
        c.publish("lm", src)
        (info,) = [m for m in c.models() if m.name == "lm"]
        assert info.tensors == 4
        assert info.bytes == (50 * 16 + 16 * 16 + 16) * 4
        sd = c.state_dict("lm")
        assert sd["emb.weight"].data_ptr() == sd["head.weight"].data_ptr()

        torch.manual_seed(4)
        dst = TiedLM()
        r = c.load_into(dst, "lm")
        assert r.aliased_keys == ["head.weight"] and r.copied_keys == []
        assert dst.head.weight is dst.emb.weight
        assert torch.equal(dst(x), src(x))

        untied = TiedLM(tie=False)
        r = c.load_into(untied, "lm")
        assert r.copied_keys == ["head.weight"]
        assert untied.head.weight.data_ptr() != untied.emb.weight.data_ptr()
        with torch.no_grad():
            untied.head.weight.add_(1)
        assert torch.equal(untied.emb.weight, src.emb.weight)

        c.export("lm", out)
        got, meta = read_st(out)
        assert sorted(got) == ["body.bias", "body.weight", "emb.weight"]
        assert json.loads(meta["wbroker.tied"]) == {"head.weight":
                                                    "emb.weight"}
        assert c.publish_file(out, "lm2") == 1
        subprocess.run([daemon.cli, "--socket", daemon.socket, "import",
                        str(out), "lm3"], check=True, capture_output=True)
        for name in ("lm2", "lm3"):
            sd = c.state_dict(name)
            assert sd["head.weight"].data_ptr() == sd["emb.weight"].data_ptr()
            assert torch.equal(sd["head.weight"], src.emb.weight.detach())
            assert c.metadata(name) == {}
        with pytest.raises(wbroker.Error) as err:
            c.publish("bad", {"w": torch.ones(2)},
                      metadata={"wbroker.tied": "{}"})
        assert "reserved" in str(err.value)
