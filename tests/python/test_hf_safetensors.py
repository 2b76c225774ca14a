"""Hugging Face's safetensors as the independent reader and writer of what
wbroker moves: `wbroker export` read by safetensors.torch.load_file, files
written by save_file imported with `wbroker import`, the bytes of a
version's image (wb_map_image, called through ctypes on the library)
loaded by safetensors.torch.load, and a transformers model saved in shards
by save_pretrained imported as one version.  Every dtype both sides know,
0-d and empty tensors, and metadata.  Runs where safetensors is installed
(the torch 2.x environment, make venv); skipped on Debian's torch.
"""
import ctypes
import json
import os
import shutil
import subprocess
import sys

import pytest

st_torch = pytest.importorskip(
    "safetensors.torch", reason="safetensors is installed only in the torch "
    "2.x environment (make venv)")
from safetensors import safe_open  # noqa: E402

import torch  # noqa: E402
import wbroker  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "helpers"))
import wb_proc  # noqa: E402

# Every dtype safetensors and wbroker share, by torch name; the ones this
# torch lacks are left out.
DTYPES = [getattr(torch, n) for n in (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16",
    "int8", "uint8", "bool", "float8_e4m3fn", "float8_e5m2", "uint16",
    "uint32", "uint64") if isinstance(getattr(torch, n, None), torch.dtype)]


def random_tensor(dtype, shape, g):
    """A tensor of random bits (NaNs and all) of dtype and shape."""
    n = 1
    for s in shape:
        n *= s
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    size = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (n * size,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


def bits(t):
    """t's bytes, for a comparison that NaNs do not spoil."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_same(got, want):
    """Two dicts of tensors with the same names, dtypes, shapes and bits."""
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        g = got[k]
        assert g.dtype == w.dtype and g.shape == w.shape, k
        assert torch.equal(bits(g), bits(w)), k


def sample(seed=0):
    """Every dtype as a matrix, a 0-d scalar and an empty tensor."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for dt in DTYPES:
        name = str(dt).replace("torch.", "")
        sd[name + ".matrix"] = random_tensor(dt, (3, 5), g)
        sd[name + ".scalar"] = random_tensor(dt, (), g)
        sd[name + ".empty"] = random_tensor(dt, (0, 4), g)
    return sd


META = {"format": "pt", "note": "h\u00e9llo", "step": "12"}


def cli(daemon, *args, check=0):
    p = subprocess.run([daemon.cli, "--socket", daemon.socket,
                        *map(str, args)],
                       capture_output=True, text=True, timeout=120)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def cli_json(daemon, *args, check=0):
    return json.loads(cli(daemon, "--json", *args, check=check).stdout)


# What `wbroker export` writes, safetensors reads as the published
# tensors: every dtype, 0-d and empty ones, and the metadata.
def test_hf_reads_wbroker_export(daemon, tmp_path):
    sd = sample()
    with wbroker.connect(daemon.socket) as c:
        assert c.publish("m", sd, metadata=META) == 1
    out = tmp_path / "out.safetensors"
    cli(daemon, "export", "m", out)
    assert_same(st_torch.load_file(str(out)), sd)
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == META


# What save_file writes, `wbroker import` takes: the same tensors and the
# same metadata come back through the daemon.
def test_hf_save_file_imported(daemon, tmp_path):
    sd = sample(1)
    path = tmp_path / "hf.safetensors"
    st_torch.save_file(sd, str(path), metadata=META)
    doc = cli_json(daemon, "import", path, "m")
    assert doc["version"] == 1 and doc["tensors"] == len(sd)
    assert doc["files"] == 1
    with wbroker.connect(daemon.socket) as c:
        assert_same(dict(c.state_dict("m")), sd)
        assert c.metadata("m") == META
    # And out again: safetensors reads what it wrote.
    out = tmp_path / "again.safetensors"
    cli(daemon, "export", "m", out)
    assert_same(st_torch.load_file(str(out)), sd)


def image_bytes(daemon, model):
    """The bytes of model's latest image, through wb_map_image() of the
    library the package loads."""
    lib = ctypes.CDLL(os.environ["WBROKER_LIB"])
    vp = ctypes.c_void_p
    lib.wb_connect.argtypes = [ctypes.c_char_p, ctypes.POINTER(vp)]
    lib.wb_map.argtypes = [vp, ctypes.c_char_p, ctypes.c_uint64,
                           ctypes.c_int, ctypes.POINTER(vp)]
    lib.wb_map_image.argtypes = [vp, ctypes.POINTER(vp),
                                 ctypes.POINTER(ctypes.c_size_t)]
    lib.wb_unmap.argtypes = [vp]
    lib.wb_close.argtypes = [vp]
    c, m = vp(), vp()
    assert lib.wb_connect(daemon.socket.encode(), ctypes.byref(c)) == 0
    try:
        assert lib.wb_map(c, model.encode(), 0, 1, ctypes.byref(m)) == 0
        data, size = vp(), ctypes.c_size_t()
        assert lib.wb_map_image(m, ctypes.byref(data), ctypes.byref(size)) == 0
        return ctypes.string_at(data, size.value)
    finally:
        lib.wb_unmap(m)
        lib.wb_close(c)


# The image wb_map_image() gives (not the segment, which is rounded up to
# 2 MiB) is a safetensors buffer that safetensors.torch.load takes.
def test_hf_loads_the_image_bytes(daemon):
    sd = sample(2)
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", sd, metadata=META)
    img = image_bytes(daemon, "m")
    assert_same(st_torch.load(img), sd)
    # The padding a segment has past the image is what safetensors refuses.
    with pytest.raises(Exception):
        st_torch.load(img + bytes(64))


# ---------------------------------------------------------------- shards

def saved_shards(daemon, tmp_path, kind, size="40KB"):
    """save_pretrained(max_shard_size=size) of kind in another process: the
    Saved record and the directory of the shards.  (The small test configs
    fit in one shard at 200KB: 40KB makes three.)"""
    pytest.importorskip("transformers", reason="transformers is installed "
                        "only in the torch 2.x environment (make venv)")
    import hf_proc
    pub = hf_proc.publish(daemon, tmp_path, kind, kind, seed=1,
                          mode="shard:" + size)
    d = pub.dir / "sharded"
    shards = sorted(p.name for p in d.glob("*.safetensors"))
    assert len(shards) >= 2, shards
    assert (d / "model.safetensors.index.json").is_file()
    return pub, d, shards


# A Llama saved in shards is imported as one version, through its index
# or its directory; the version holds exactly the shards' tensors, the
# metadata they agree on, and loads strict into a fresh model whose
# logits then equal the source's bit for bit, zero-copy.
def test_hf_sharded_llama_one_version(daemon, tmp_path):
    import hf_models
    import hf_proc
    pub, d, shards = saved_shards(daemon, tmp_path, "llama")
    want = {}
    for s in shards:
        want.update(st_torch.load_file(str(d / s)))
    doc = cli_json(daemon, "import", d / "model.safetensors.index.json",
                   "llama")
    assert doc == {"model": "llama", "version": 1,
                   "file": str(d / "model.safetensors.index.json"),
                   "tensors": len(want), "files": len(shards),
                   "bytes": sum(t.numel() * t.element_size()
                                for t in want.values())}
    assert cli_json(daemon, "import", d, "llama")["version"] == 2
    p = cli(daemon, "import", d, "llama")
    assert "from %d files" % len(shards) in p.stdout
    target = hf_models.build("llama", seed=2)
    with wbroker.connect(daemon.socket) as c:
        assert c.metadata("llama") == {"format": "pt"}
        assert_same(dict(c.state_dict("llama", version=3)), want)
        r = c.load_into(target, "llama", version=2)
    assert r.missing_keys == [] and r.unexpected_keys == []
    hf_proc.assert_zero_copy(target)
    wb_proc.assert_same_output(hf_models.forward(target, "llama"), pub.output)


# GPT-2 in shards: the tied lm_head the files omit is reported missing as
# torch reports it, stays tied to the loaded embedding, logits bit-equal.
def test_hf_sharded_gpt2_tied_head(daemon, tmp_path):
    import copy

    import hf_models
    import hf_proc
    pub, d, shards = saved_shards(daemon, tmp_path, "gpt2")
    file_sd = {}
    for s in shards:
        file_sd.update(st_torch.load_file(str(d / s)))
    cli(daemon, "import", d, "gpt2")
    target = hf_models.build("gpt2", seed=2)
    fresh = copy.deepcopy(target)
    ties = hf_models.tie_groups(target)
    with wbroker.connect(daemon.socket) as c:
        r = c.load_into(target, "gpt2", strict=False)
    assert r.missing_keys == ["lm_head.weight"]
    hf_proc.assert_report_like_torch(r, fresh, file_sd)
    hf_proc.assert_ties(target, ties)
    wb_proc.assert_same_output(hf_models.forward(target, "gpt2"), pub.output)


def write_shards(tmp_path, sd_by_shard, weight_map=None, meta=None):
    """Shards written by save_file (name -> state_dict) and their index;
    weight_map defaults to the true one.  Returns the index's path."""
    true_map = {}
    for shard, sd in sd_by_shard.items():
        st_torch.save_file(sd, str(tmp_path / shard),
                           metadata=(meta or {}).get(shard, {"format": "pt"}))
        true_map.update((k, shard) for k in sd)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0},
                                 "weight_map": weight_map or true_map}))
    return index


def two_shards(seed=3):
    g = torch.Generator().manual_seed(seed)
    return {"model-00001-of-00002.safetensors":
            {"a": torch.randn(4, 4, generator=g),
             "b": torch.randn(3, generator=g)},
            "model-00002-of-00002.safetensors":
            {"c": torch.randn(2, 2, generator=g).half()}}


S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


# Index files that do not describe their shards are refused before
# anything is published, each with an EFORMAT message naming the file and
# the tensor at fault.
@pytest.mark.parametrize("case,words", [
    ("dotdot", ["../" + S1, "'a'", "plain name"]),
    ("slash", ["sub/" + S1, "plain name"]),
    ("absent_entry", ["'zz'", S2, "no such tensor"]),
    ("unlisted", ["'b'", S1, "does not list"]),
    ("elsewhere", ["'b'", S1, "puts in " + S2]),
    ("two_shards", ["'c'", "in two shards", S1, S2]),
    ("metadata", ["metadata 'format'", S1, S2]),
    ("not_json", ["not valid JSON"]),
    ("no_weight_map", ["weight_map"]),
])
def test_hf_bad_index_refused(daemon, tmp_path, case, words):
    shards = two_shards()
    wm = {"a": S1, "b": S1, "c": S2}
    meta = None
    if case == "dotdot":
        wm["a"] = "../" + S1
    elif case == "slash":
        wm["a"] = "sub/" + S1
    elif case == "absent_entry":
        wm["zz"] = S2
    elif case == "unlisted":
        del wm["b"]
    elif case == "elsewhere":
        wm["b"] = S2
    elif case == "two_shards":
        shards[S1]["c"] = shards[S2]["c"]
    elif case == "metadata":
        meta = {S1: {"format": "pt"}, S2: {"format": "np"}}
    index = write_shards(tmp_path, shards, wm, meta)
    if case == "not_json":
        index.write_text('{"weight_map": {"a": ')
    elif case == "no_weight_map":
        index.write_text('{"metadata": {"total_size": 0}}')
    j = cli_json(daemon, "import", index, "bad", check=1)
    assert j["error"] == "EFORMAT", j
    for w in words:
        assert w in j["message"], (w, j["message"])
    # No daemon needed to refuse it.
    p = subprocess.run([daemon.cli, "--socket", str(tmp_path / "none.sock"),
                        "--json", "import", str(index), "bad"],
                       capture_output=True, text=True, timeout=60)
    assert json.loads(p.stdout)["error"] == "EFORMAT"
    assert cli_json(daemon, "ls") == []
    assert cli_json(daemon, "status")["versions"] == 0


# The same shards with a correct index import as one version, whose
# tensors safetensors reads back from the export.
def test_hf_good_index_round_trip(daemon, tmp_path):
    shards = two_shards()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    index = write_shards(ckpt, shards)
    doc = cli_json(daemon, "import", index, "m")
    assert doc["files"] == 2 and doc["tensors"] == 3
    out = tmp_path / "out.safetensors"
    cli(daemon, "export", "m", out)
    want = {**shards[S1], **shards[S2]}
    assert_same(st_torch.load_file(str(out)), want)
    # A copy of the directory elsewhere holds the same checkpoint.
    other = tmp_path / "copy"
    shutil.copytree(ckpt, other)
    assert cli_json(daemon, "import", other, "m")["version"] == 2
