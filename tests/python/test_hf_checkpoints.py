"""Checkpoints as users have them, through wbroker: files written by
transformers' save_pretrained and imported with `wbroker import`, the
state_dict of a torch.compile'd model ("_orig_mod." keys) and of a
DistributedDataParallel one ("module." keys), each loaded into a plain
model with load_into.  The reports are checked against torch's
load_state_dict on the same pair, key for key and in order.  Runs on torch
2.x only.
"""
import copy
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "helpers"))
pytest.importorskip("transformers", reason="transformers is installed only "
                    "in the torch 2.x environment (make venv)")
st_torch = pytest.importorskip("safetensors.torch")

import hf_models  # noqa: E402
import hf_proc  # noqa: E402
import wb_proc  # noqa: E402
import torch  # noqa: E402
import wbroker  # noqa: E402

# What save_pretrained leaves out of model.safetensors: the tie partners
# that from_pretrained ties again (the keys torch then reports missing).
OMITTED = {
    "gpt2": ["lm_head.weight"],
    "t5": ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
           "lm_head.weight"],
    "bert": ["cls.predictions.decoder.weight",
             "cls.predictions.decoder.bias"],
    "llama": [],
}


def saved_file(daemon, tmp_path, kind, seed=1):
    """save_pretrained(safe_serialization=True) of kind in another process:
    the Saved record and the path of its model.safetensors."""
    pub = hf_proc.publish(daemon, tmp_path, kind, kind, seed=seed,
                          mode="save")
    path = pub.dir / "hf" / "model.safetensors"
    assert path.is_file()
    return pub, path


# save_pretrained's file, imported by the CLI and loaded: strict fails with
# torch's message exactly when torch's does; non-strict reports exactly
# what torch reports for the file's state dict (GPT-2: lm_head.weight
# missing), every tensor views the segment, the tie partner the file
# omits stays tied and so the logits equal the source's bit for bit.
@pytest.mark.parametrize("kind", sorted(OMITTED))
def test_hf_save_pretrained_import_load(daemon, tmp_path, kind):
    pub, path = saved_file(daemon, tmp_path, kind)
    file_sd = st_torch.load_file(str(path))
    assert sorted(set(pub.source) - set(file_sd)) == sorted(OMITTED[kind])
    doc = hf_proc.cli(daemon, "import", path, kind, json_out=True)
    assert doc["version"] == 1 and doc["tensors"] == len(file_sd)
    target = hf_models.build(kind, seed=2)
    fresh = copy.deepcopy(target)
    ties = hf_models.tie_groups(target)
    want_strict = hf_proc.torch_report(fresh, file_sd, strict=True)
    with wbroker.connect(daemon.socket) as c:
        if isinstance(want_strict, RuntimeError):
            with pytest.raises(wbroker.LoadError) as err:
                c.load_into(target, kind)
            assert str(err.value) == str(want_strict)
            assert err.value.result.missing_keys == OMITTED[kind]
        r = c.load_into(target, kind, strict=False)
    assert r.missing_keys == OMITTED[kind]
    hf_proc.assert_report_like_torch(r, fresh, file_sd)
    assert r.cast_keys == [] and r.copied_keys == []
    hf_proc.assert_ties(target, ties)
    hf_proc.assert_zero_copy(target)
    for k, v in target.state_dict().items():
        assert torch.equal(v, pub.source[k]), k
    wb_proc.assert_same_output(hf_models.forward(target, kind), pub.output)


# The metadata save_pretrained writes ({"format": "pt"}) survives the
# import.
def test_hf_save_pretrained_metadata_kept(daemon, tmp_path):
    _, path = saved_file(daemon, tmp_path, "gpt2")
    hf_proc.cli(daemon, "import", path, "gpt2")
    with wbroker.connect(daemon.socket) as c:
        assert c.metadata("gpt2") == {"format": "pt"}


def strip(sd, prefix):
    return {k[len(prefix):] if k.startswith(prefix) else k: v
            for k, v in sd.items()}


WRAPPERS = [("compile", "_orig_mod."), ("ddp", "module.")]


# A torch.compile'd model's and a DDP model's state_dicts, published as they
# are, loaded into a plain model: a regex rename and a rules file's prefix
# line both strip the wrapper's prefix; the report is torch's for the
# renamed pair, ties hold, every tensor is zero-copy, logits bit-equal.
@pytest.mark.parametrize("mode,prefix", WRAPPERS)
@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_hf_wrapped_state_dict_into_plain(daemon, tmp_path, mode, prefix,
                                          kind):
    pub = hf_proc.publish(daemon, tmp_path, kind, "wrapped", seed=1,
                          mode=mode)
    assert pub.source and all(k.startswith(prefix) for k in pub.source)
    plain = strip(pub.source, prefix)
    ways = [{"rename": [(r"%s(.*)" % prefix.replace(".", r"\."), r"\1")]},
            {"rules": "prefix %s ->\n" % prefix},
            {"rename": {k: k[len(prefix):]
                        for k in pub.source}}]
    with wbroker.connect(daemon.socket) as c:
        for seed, way in enumerate(ways, start=2):
            target = hf_models.build(kind, seed=seed)
            fresh = copy.deepcopy(target)
            ties = hf_models.tie_groups(target)
            r = c.load_into(target, "wrapped", **way)
            hf_proc.assert_report_like_torch(r, fresh, plain)
            assert r.missing_keys == [] and r.unexpected_keys == []
            hf_proc.assert_ties(target, ties)
            hf_proc.assert_zero_copy(target)
            wb_proc.assert_same_output(hf_models.forward(target, kind), pub.output)


# The same without a rename: strict fails with torch's message (every key
# missing, every key unexpected); non-strict reports what torch reports.
@pytest.mark.parametrize("mode,prefix", WRAPPERS)
def test_hf_wrapped_state_dict_without_rename(daemon, tmp_path, mode,
                                              prefix):
    pub = hf_proc.publish(daemon, tmp_path, "gpt2", "wrapped", seed=1,
                          mode=mode)
    target = hf_models.build("gpt2", seed=2)
    fresh = copy.deepcopy(target)
    want = hf_proc.torch_report(fresh, pub.source, strict=True)
    with wbroker.connect(daemon.socket) as c:
        with pytest.raises(wbroker.LoadError) as err:
            c.load_into(target, "wrapped")
        r = c.load_into(target, "wrapped", strict=False)
    assert sorted(r.missing_keys) == sorted(fresh.state_dict())
    assert sorted(r.unexpected_keys) == sorted(pub.source)
    # torch's text, then the prefix= that would make the keys match.
    text = str(err.value)
    assert text.startswith(str(want))
    assert text[len(str(want)):] == (
        '\n\tHint: %d of the unexpected keys match missing keys without the '
        'prefix "%s": load with prefix=("%s", "").'
        % (len(pub.source), prefix, prefix))
    hf_proc.assert_report_like_torch(r, fresh, pub.source)


# The product's load_into(prefix=(old, new)) keyword, the spelling the
# contract gives for stripping a wrapper's prefix.
def test_hf_compiled_prefix_keyword(daemon, tmp_path):
    pub = hf_proc.publish(daemon, tmp_path, "gpt2", "compiled", seed=1,
                          mode="compile")
    target = hf_models.build("gpt2", seed=2)
    fresh = copy.deepcopy(target)
    with wbroker.connect(daemon.socket) as c:
        p = c.plan(target, "compiled", prefix=[("_orig_mod.", "")])
        r = c.load_into(target, "compiled", prefix=("_orig_mod.", ""))
    assert p.missing_keys == r.missing_keys == []
    hf_proc.assert_report_like_torch(r, fresh, strip(pub.source,
                                                     "_orig_mod."))
    hf_proc.assert_zero_copy(target)
    wb_proc.assert_same_output(hf_models.forward(target, "gpt2"), pub.output)
