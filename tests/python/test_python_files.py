"""Client.publish_file() and Client.export() through the library's one
safetensors implementation (wb_import_file, wb_export_file): sharded
checkpoints by index and by directory, FormatError for a bad index, the
atomic export, and Ctrl-C in the middle of either, which aborts the
publish or removes the temporary file."""
import json
import os
import signal
import threading

import pytest
import torch

import wbroker
from st_bytes import write_st

S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


@pytest.fixture
def ckpt(tmp_path):
    g = torch.Generator().manual_seed(0)
    shards = {S1: {"emb": torch.randn(6, 4, generator=g)},
              S2: {"head": torch.randn(4, 2, generator=g).half(),
                   "step": torch.tensor(5)}}
    d = tmp_path / "ckpt"
    d.mkdir()
    wm = {}
    for name, sd in shards.items():
        write_st(d / name, sd, {"format": "pt"})
        wm.update((k, name) for k in sd)
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": wm}))
    return d, {k: t for sd in shards.values() for k, t in sd.items()}


def test_python_publish_file_sharded(daemon, ckpt):
    """An index or its directory is one version; metadata= wins over the
    shards'."""
    d, want = ckpt
    with wbroker.connect(daemon.socket) as c:
        assert c.publish_file(d / "model.safetensors.index.json", "m") == 1
        assert c.publish_file(str(d), "m", metadata={"format": "mine",
                                                      "run": "7"}) == 2
        sd = c.state_dict("m", version=1)
        assert list(sd) == ["emb", "head", "step"]
        for k, t in want.items():
            assert torch.equal(sd[k], t), k
        assert c.metadata("m", 1) == {"format": "pt"}
        assert c.metadata("m") == {"format": "mine", "run": "7"}


def test_python_publish_file_bad_index(daemon, ckpt):
    """A bad index is a FormatError naming the file and the tensor;
    nothing is published."""
    d, _ = ckpt
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["ghost"] = S1
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with wbroker.connect(daemon.socket) as c:
        with pytest.raises(wbroker.FormatError) as err:
            c.publish_file(d, "m")
        assert "'ghost'" in str(err.value) and S1 in str(err.value)
        with pytest.raises(FileNotFoundError) as err:
            c.publish_file(d / "absent.safetensors", "m")
        assert isinstance(err.value, wbroker.SystemCallError)
        assert err.value.errno == 2 and err.value.name == "ESYS"
        assert c.models() == []


def big_file(tmp_path):
    """A 256 MiB file of one U8 tensor (sparse on disk)."""
    n = 256 << 20
    path = tmp_path / "big.safetensors"
    h = json.dumps({"a": {"dtype": "U8", "shape": [n],
                          "data_offsets": [0, n]}}).encode()
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        f.truncate(8 + len(h) + n)
    return path


def interrupt_when(ready):
    """SIGINT to this process from another thread as soon as ready() is
    true (polled), so that it lands in the middle of a transfer."""
    def run():
        for _ in range(20000):
            if ready():
                os.kill(os.getpid(), signal.SIGINT)
                return
    t = threading.Thread(target=run)
    t.start()
    return t


def test_python_transfers_stop_on_ctrl_c(daemon, tmp_path):
    """Ctrl-C during publish_file aborts the publish, during export leaves
    no temporary file and the target as it was; KeyboardInterrupt either
    way, and the handler is Python's again afterwards."""
    path = big_file(tmp_path)
    with wbroker.connect(daemon.socket) as c, \
            wbroker.connect(daemon.socket) as watcher:
        # The daemon charges the segment at the publish's start.
        t = interrupt_when(lambda: watcher.status().memory_used > 0)
        with pytest.raises(KeyboardInterrupt):
            c.publish_file(path, "big")
        t.join()
        assert c.models() == []
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert c.publish_file(path, "big") == 1
        out = tmp_path / "out.safetensors"
        out.write_bytes(b"old")

        def writing():
            return any(f.endswith(".tmp") for f in os.listdir(tmp_path))
        t = interrupt_when(writing)
        with pytest.raises(KeyboardInterrupt):
            c.export("big", out)
        t.join()
        assert out.read_bytes() == b"old"
        assert not writing()
        assert c.export("big", out) == 1
        assert out.stat().st_size > 256 << 20
