"""Tests of the wbroker package itself: its public names and modules, and
the two steps of a load (Client._prepare_load() and apply()) that following
a model builds on."""
import pytest
import torch

import wbroker


def small():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(),
                               torch.nn.Linear(3, 2))


# The package re-exports exactly its public API, and every name of it has a
# docstring that help() shows.
def test_package_public_names():
    for name in wbroker.__all__:
        obj = getattr(wbroker, name)
        assert obj.__doc__, name
    for mod in ("errors", "dtypes", "publish", "load", "client"):
        assert getattr(wbroker, mod).__doc__, mod
    assert issubclass(wbroker.LoadError, RuntimeError)
    assert issubclass(wbroker.NotFoundError, KeyError)
    assert issubclass(wbroker.ConnectError, ConnectionError)


# A prepared load has its final report before anything changes; apply()
# then switches every matched tensor at once, and a second apply() does
# nothing.
def test_prepare_load_then_apply(daemon):
    src = small()
    target = small()
    torch.nn.init.zeros_(target[0].weight)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    x = torch.randn(5, 4)
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", src)
        c.publish("m", {k: v + 1 for k, v in src.state_dict().items()})
        pending = c._prepare_load(target, "m", version=1)
        assert pending.result.version == 1
        assert pending.result.missing_keys == []
        for k, v in target.state_dict().items():
            assert torch.equal(v, before[k]), k
        weight = target[0].weight
        assert pending.apply() is pending.result
        assert target[0].weight is weight   # the same Parameter, repointed
        assert torch.equal(target(x), src(x))
        pending.apply()
        assert torch.equal(target(x), src(x))


# A strict failure raises LoadError from _prepare_load() itself, with the
# report, and the model stays as it was.
def test_prepare_load_strict_failure(daemon):
    target = small()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", {"0.weight": torch.ones(3, 4)})
        with pytest.raises(wbroker.LoadError) as e:
            c._prepare_load(target, "m", strict=True)
        assert "0.bias" in e.value.result.missing_keys
        r = c._prepare_load(target, "m", strict=False).result
        assert "0.bias" in r.missing_keys
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), k


# A prepared load that is never applied leaves the model alone and lets
# its version go when it is dropped.
def test_prepare_load_discarded(daemon):
    import gc
    target = small()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", small())
        pending = c._prepare_load(target, "m")
        del pending
        gc.collect()
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), k
