"""Real model families from Hugging Face transformers through wbroker.

Each model (GPT-2, Llama, BERT, T5, ViT, ResNet; small configs built in
code, nothing downloaded) is published by a process of its own
(helpers/hf_publish.py) and loaded here into a fresh model with other
weights.  Checked: logits on a fixed input equal to the source's (within float
rounding: two processes may sum in another order), weights bit for bit,
every state_dict tensor viewing a wbroker segment, ties still ties (one
Parameter, one data_ptr), buffers the state_dict leaves out untouched, and
the load report exactly what torch's load_state_dict gives on the same
pair.  Runs on torch 2.x only (transformers is not installed beside
Debian's torch 1.13).
"""
import copy
import os
import sys
import warnings

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "helpers"))
pytest.importorskip("transformers", reason="transformers is installed only "
                    "in the torch 2.x environment (make venv)")

import hf_models  # noqa: E402
import hf_proc  # noqa: E402
import wb_proc  # noqa: E402
import torch  # noqa: E402
import wbroker  # noqa: E402

# The ties each family must have, so that a change in transformers that
# unties them does not silently turn the tie checks into nothing.
EXPECTED_TIES = {
    "gpt2": [["lm_head.weight", "transformer.wte.weight"]],
    "llama": [],
    "bert": [["bert.embeddings.word_embeddings.weight",
              "cls.predictions.decoder.weight"],
             ["cls.predictions.bias", "cls.predictions.decoder.bias"]],
    "t5": [["decoder.embed_tokens.weight", "encoder.embed_tokens.weight",
            "lm_head.weight", "shared.weight"]],
    "vit": [],
    "resnet": [],
}


def sorted_groups(groups):
    return sorted(sorted(g) for g in groups)


# The offline environment is in force for this process and its helpers.
def test_hf_offline_environment():
    assert hf_proc.hf_env_ok()


# Each family, published in one process and loaded in another: outputs bit
# for bit, every tensor zero-copy, ties kept, report as torch's.
@pytest.mark.parametrize("kind", hf_models.KINDS)
def test_hf_family_load_into(daemon, tmp_path, kind):
    pub = hf_proc.publish(daemon, tmp_path, kind, kind, seed=1)
    target = hf_models.build(kind, seed=2)
    assert not torch.equal(hf_models.forward(target, kind), pub.output)
    fresh = copy.deepcopy(target)
    ties = hf_models.tie_groups(target)
    assert sorted_groups(ties) == EXPECTED_TIES[kind]
    hidden = hf_proc.non_persistent(target)
    params = {k: id(p) for k, p in target.named_parameters()}
    with wbroker.connect(daemon.socket) as c:
        r = c.load_into(target, kind)
    assert r.version == pub.version == 1
    wb_proc.assert_same_output(hf_models.forward(target, kind), pub.output)
    for k, v in target.state_dict().items():
        assert v.dtype == pub.source[k].dtype and torch.equal(
            v, pub.source[k]), k
    hf_proc.assert_zero_copy(target)
    hf_proc.assert_ties(target, ties)
    hf_proc.assert_non_persistent_kept(target, hidden)
    assert {k: id(p) for k, p in target.named_parameters()} == params
    assert all(p.requires_grad for p in target.parameters())
    assert r.cast_keys == [] and r.copied_keys == []
    hf_proc.assert_report_like_torch(r, fresh, pub.source)


# The families with buffers the state_dict leaves out, from a checkpoint of
# an older transformers that saved them (BERT's position_ids, Llama's
# rotary inv_freq): strict fails with torch's own message and touches
# nothing; non-strict reports them unexpected, as torch does, loads the
# rest zero-copy and keeps the target's own buffers.
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_hf_legacy_buffers_are_unexpected(daemon, tmp_path, kind):
    pub = hf_proc.publish(daemon, tmp_path, kind, kind, seed=1,
                          mode="legacy")
    target = hf_models.build(kind, seed=2)
    fresh = copy.deepcopy(target)
    hidden = hf_proc.non_persistent(target)
    assert hidden and set(hidden) <= set(pub.source)
    want = hf_proc.torch_report(fresh, pub.source, strict=True)
    assert isinstance(want, RuntimeError)
    before = {k: v.data_ptr() for k, v in target.state_dict().items()}
    with wbroker.connect(daemon.socket) as c:
        with pytest.raises(wbroker.LoadError) as err:
            c.load_into(target, kind)
        assert str(err.value) == str(want)
        assert {k: v.data_ptr() for k, v in
                target.state_dict().items()} == before
        r = c.load_into(target, kind, strict=False)
        assert sorted(r.unexpected_keys) == sorted(hidden)
        hf_proc.assert_report_like_torch(r, fresh, pub.source)
        wb_proc.assert_same_output(hf_models.forward(target, kind), pub.output)
        hf_proc.assert_zero_copy(target)
        hf_proc.assert_non_persistent_kept(target, hidden)
        # Leaving them out by a filter makes the load strict-clean.
        again = hf_models.build(kind, seed=3)
        leaves = sorted({"*." + k.rpartition(".")[2] for k in hidden})
        with warnings.catch_warnings():
            warnings.simplefilter("error")      # every exclude matches
            r = c.load_into(again, kind, exclude=leaves)
        assert r.unexpected_keys == [] and r.missing_keys == []
        assert r.unused_rules == []
        wb_proc.assert_same_output(hf_models.forward(again, kind), pub.output)


# Two consumers of one published model share its physical pages: both
# views of every tensor lie in wbroker segments, and the second load adds
# nothing to the daemon's memory.
def test_hf_two_consumers_share_one_copy(daemon, tmp_path):
    pub = hf_proc.publish(daemon, tmp_path, "llama", "llama", seed=1)
    with wbroker.connect(daemon.socket) as c:
        used = c.status().memory_used
        a = hf_models.build("llama", seed=2)
        b = hf_models.build("llama", seed=3)
        c.load_into(a, "llama")
        c.load_into(b, "llama")
        assert c.status().memory_used == used
    for m in (a, b):
        wb_proc.assert_same_output(hf_models.forward(m, "llama"), pub.output)
        hf_proc.assert_zero_copy(m)
