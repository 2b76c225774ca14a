"""load_into() against torch's own load_state_dict() for models with
BatchNorm: torch fills a missing num_batches_tracked itself when the
checkpoint's metadata gives the module no version 2 (a dict rebuilt with a
comprehension, an old checkpoint), and so must load_into(), with the value
torch would put there (0 on torch 1.13, the module's own on torch 2.x)."""
import copy
import os
import re
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "helpers"))
import wb_models  # noqa: E402
import wbroker  # noqa: E402

NBT = "num_batches_tracked"


def source(kind="smallresnet", seed=1):
    m = wb_models.build(kind, seed)
    return m, m.state_dict()


def without_nbt(sd, keep_metadata):
    """sd without its num_batches_tracked keys: with its _metadata (keys
    deleted from torch's own state_dict), or without (a comprehension)."""
    if not keep_metadata:
        return {k: v for k, v in sd.items() if not k.endswith(NBT)}
    out = copy.copy(sd)
    out._metadata = sd._metadata
    for k in [k for k in out if k.endswith(NBT)]:
        del out[k]
    return out


def target(kind="smallresnet"):
    t = wb_models.build(kind, seed=2)
    for mod in t.modules():     # Values that tell torch's fill from ours.
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.num_batches_tracked.fill_(11)
    return t


def torch_load(t, sd, strict):
    """(report or None, error text or None, model) of torch's own load."""
    ref = copy.deepcopy(t)
    try:
        return ref.load_state_dict(sd, strict=strict), None, ref
    except RuntimeError as e:
        return None, str(e), ref


def same_text(got, want):
    """The error texts are equal but for the order of the keys listed."""
    assert sorted(re.findall(r'"[^"]*"', got)) == \
        sorted(re.findall(r'"[^"]*"', want))
    assert re.sub(r'"[^"]*"', '""', got) == re.sub(r'"[^"]*"', '""', want)


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


CASES = [
    # (name, keep num_batches_tracked, keep metadata)
    ("full", True, True),
    ("full_nometa", True, False),
    ("nonbt_nometa", False, False),
    ("nonbt_meta", False, True),
]


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("case,nbt,meta", CASES)
def test_batchnorm_fill_matches_torch(daemon, case, nbt, meta, strict):
    _, sd = source()
    if not nbt:
        sd = without_nbt(sd, meta)
    elif not meta:
        sd = dict(sd)
    t = target()
    want, want_err, ref = torch_load(t, sd, strict)
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", sd)
        p = c.plan(t, "m", strict=strict)
        if want_err is not None:
            assert p.error is not None
            same_text(p.error, want_err)
            with pytest.raises(wbroker.LoadError) as e:
                c.load_into(t, "m", strict=strict)
            same_text(str(e.value), want_err)
            assert sorted(e.value.result.missing_keys) == sorted(
                re.findall(r'"([^"]*)"', want_err))
            return
        assert p.error is None
        r = c.load_into(t, "m", strict=strict)
    assert sorted(r.missing_keys) == sorted(want.missing_keys)
    assert sorted(r.unexpected_keys) == sorted(want.unexpected_keys)
    assert sorted(p.missing_keys) == sorted(want.missing_keys)
    assert_same_state(t, ref)
    x = wb_models.fixed_input("smallresnet")
    with torch.no_grad():
        assert torch.equal(t(x), ref(x))


def test_batchnorm_fill_with_other_missing_keys(daemon):
    """A strict load missing fc.weight besides the filled keys fails with
    fc.weight alone, as torch's does, and touches nothing."""
    _, sd = source()
    sd = without_nbt(sd, keep_metadata=False)
    del sd["fc.weight"]
    t = target()
    before = copy.deepcopy(t)
    _, want_err, _ = torch_load(t, sd, True)
    assert want_err is not None and NBT not in want_err
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", sd)
        with pytest.raises(wbroker.LoadError) as e:
            c.load_into(t, "m")
        assert e.value.result.missing_keys == ["fc.weight"]
        same_text(str(e.value), want_err)
        r = c.load_into(t, "m", strict=False)
    assert r.missing_keys == ["fc.weight"]
    ref = copy.deepcopy(before)
    ref.load_state_dict(sd, strict=False)
    assert_same_state(t, ref)


def test_batchnorm_state_dict_round_trip_keeps_metadata(daemon):
    """state_dict() gives back the module versions publish() recorded, so
    that torch's own load_state_dict() of it decides as load_into() does;
    metadata() does not show them."""
    _, sd = source()
    sd = without_nbt(sd, keep_metadata=True)
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", sd, metadata={"step": "3"})
        got = c.state_dict("m")
        assert c.metadata("m") == {"step": "3"}
    assert got._metadata == sd._metadata
    with pytest.raises(RuntimeError, match=NBT):
        target().load_state_dict(got)


def test_batchnorm_dataparallel_report_matches_torch(daemon):
    """A DataParallel checkpoint loaded into a plain resnet18 without
    renaming: torch fills the 20 num_batches_tracked keys (its metadata
    names module.bn1, not bn1), so they are not missing."""
    m = wb_models.build("resnet18", seed=1)
    sd = torch.nn.DataParallel(m).state_dict()
    t = wb_models.build("resnet18", seed=2)
    want = copy.deepcopy(t).load_state_dict(sd, strict=False)
    assert not [k for k in want.missing_keys if k.endswith(NBT)]
    with wbroker.connect(daemon.socket) as c:
        c.publish("dp", sd)
        r = c.load_into(t, "dp", strict=False)
        assert sorted(r.missing_keys) == sorted(want.missing_keys)
        assert sorted(r.unexpected_keys) == sorted(want.unexpected_keys)
        # Stripping the prefix matches everything.
        r = c.load_into(t, "dp", rename=[(r"module\.(.*)", r"\1")])
        assert r.missing_keys == [] and r.unexpected_keys == []
    assert_same_state(t, m)


def test_batchnorm_dataparallel_without_nbt(daemon):
    """An old DataParallel checkpoint without num_batches_tracked, its
    prefix stripped by a comprehension for torch and by a rule for
    load_into: both load strict."""
    m, sd = source()
    dp = {"module." + k: v for k, v in sd.items() if not k.endswith(NBT)}
    t = target()
    ref = copy.deepcopy(t)
    ref.load_state_dict({k[len("module."):]: v for k, v in dp.items()})
    with wbroker.connect(daemon.socket) as c:
        c.publish("dp", dp)
        r = c.load_into(t, "dp", rename=[(r"module\.(.*)", r"\1")])
    assert r.missing_keys == [] and r.unexpected_keys == []
    assert_same_state(t, ref)
