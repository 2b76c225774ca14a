"""`wbroker import` of sharded checkpoints (an index and its shards, or a
directory holding them) against a real daemon, with files written here by
hand, so that it runs on every torch (test_hf_safetensors.py does the same
with Hugging Face's own writer where it is installed)."""
import json
import os
import subprocess

import pytest
import torch

from st_bytes import tensor_bytes, write_st

S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"


def shards():
    g = torch.Generator().manual_seed(0)
    return {S1: {"emb": torch.randn(6, 4, generator=g),
                 "step": torch.tensor(3)},
            S2: {"head": torch.randn(4, 2, generator=g).half()}}


@pytest.fixture
def ckpt(tmp_path):
    """A good sharded checkpoint in tmp_path/ckpt: (directory, shards)."""
    d = tmp_path / "ckpt"
    d.mkdir()
    sh = shards()
    wm = {}
    for name, sd in sh.items():
        write_st(d / name, sd, {"format": "pt"})
        wm.update((k, name) for k in sd)
    (d / INDEX).write_text(json.dumps({"metadata": {"total_size": 66},
                                       "weight_map": wm}))
    return d, sh


def cli(daemon, *args, check=0):
    p = subprocess.run([daemon.cli, "--socket", daemon.socket,
                        *map(str, args)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def cli_json(daemon, *args, check=0):
    return json.loads(cli(daemon, "--json", *args, check=check).stdout)


def test_cli_sharded_import_is_one_version(daemon, ckpt):
    """The index, or its directory, imports every shard as one version;
    info lists every tensor once and the shards' metadata."""
    d, sh = ckpt
    doc = cli_json(daemon, "import", d / INDEX, "m")
    assert doc["version"] == 1 and doc["files"] == 2 and doc["tensors"] == 3
    p = cli(daemon, "import", d, "m")
    assert p.stdout.startswith("imported %s as m@2 (3 tensors" % d)
    assert "from 2 files" in p.stdout
    [m] = cli_json(daemon, "ls")
    assert m["name"] == "m" and m["latest"] == 2 and m["tensors"] == 3
    info = cli_json(daemon, "info", "m@1")
    assert [t["name"] for t in info["tensors"]] == ["emb", "step", "head"]
    assert info["metadata"] == {"format": "pt"}
    out = d.parent / "out.safetensors"
    cli(daemon, "export", "m", out)
    raw = out.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    for name, sd in sh.items():
        for k, t in sd.items():
            b, e = header[k]["data_offsets"]
            assert raw[8 + n + b:8 + n + e] == tensor_bytes(t), k


def test_cli_sharded_refusals(daemon, ckpt):
    """A broken index, a missing shard and a directory without a
    checkpoint fail with exit 1 and a message naming the file; nothing is
    published."""
    d, _ = ckpt
    index = json.loads((d / INDEX).read_text())
    index["weight_map"]["head"] = "../" + S2
    (d / "bad.index.json").write_text(json.dumps(index))
    j = cli_json(daemon, "import", d / "bad.index.json", "m", check=1)
    assert j["error"] == "EFORMAT" and "../" + S2 in j["message"]
    os.unlink(d / S2)
    j = cli_json(daemon, "import", d, "m", check=1)
    assert j["error"] == "ESYS" and S2 in j["message"]
    empty = d.parent / "empty"
    empty.mkdir()
    p = cli(daemon, "import", empty, "m", check=1)
    assert "neither model.safetensors.index.json nor model.safetensors" in \
        p.stderr
    assert cli_json(daemon, "ls") == []


def test_cli_sharded_metadata_conflict_and_meta(daemon, ckpt):
    """Shards that disagree on a metadata key are refused (before any
    daemon is asked) unless --meta gives the key a value; --meta entries
    replace the files' and add to them."""
    d, _ = ckpt
    sh = shards()
    write_st(d / S2, sh[S2], {"format": "np"})
    j = cli_json(daemon, "import", d, "m", check=1)
    assert j["error"] == "EFORMAT"
    assert "metadata 'format'" in j["message"] and S1 in j["message"]
    p = subprocess.run([daemon.cli, "--socket", str(d / "none.sock"),
                        "import", str(d), "m"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1 and "metadata 'format'" in p.stderr
    doc = cli_json(daemon, "import", "--meta", "format=pt", "--meta=run=a=b",
                   d, "m")
    assert doc["version"] == 1
    assert cli_json(daemon, "info", "m")["metadata"] == {"format": "pt",
                                                          "run": "a=b"}
    for bad in (["--meta"], ["--meta", "novalue"], ["--meta", "=x"]):
        p = cli(daemon, "import", *bad, d, "m", check=2)
        assert "--meta needs KEY=VALUE" in p.stderr
    j = cli_json(daemon, "import", "--meta", "format=pt", "--meta",
                 "wbroker.tied=x", d, "m", check=1)
    assert j["error"] == "EINVAL"
