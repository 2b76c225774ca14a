"""Tests of the load rules as Python passes them: prefix=, the rules that
matched nothing (LoadResult.unused_rules and UnusedRuleWarning), and the
hint that a failing load's message ends with when a prefix would fix it."""
import warnings

import pytest
import torch

import wbroker


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(),
                               torch.nn.Linear(3, 2))


def prefixed(p, model):
    return {p + k: v for k, v in model.state_dict().items()}


def same_output(a, b):
    x = torch.randn(5, 4)
    return torch.equal(a(x), b(x))


# prefix=(old, new) strips a DataParallel checkpoint's "module." as a rules
# file's prefix line would; the weights are the source's, zero-copy.
def test_prefix_pair_strips(daemon):
    src, dst = net(), torch.nn.Sequential(torch.nn.Linear(4, 3),
                                          torch.nn.ReLU(),
                                          torch.nn.Linear(3, 2))
    with wbroker.connect(daemon.socket) as c:
        c.publish("dp", prefixed("module.", src))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r = c.load_into(dst, "dp", prefix=("module.", ""))
        assert (r.missing_keys, r.unexpected_keys, r.unused_rules) == \
            ([], [], [])
        assert r.copied_keys == []
    assert same_output(src, dst)


# The reverse: a plain checkpoint into a model whose keys carry the prefix
# (a DataParallel wrapper), with ("", "module.").
def test_prefix_pair_adds(daemon):
    src = net()
    dst = torch.nn.DataParallel(torch.nn.Sequential(
        torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)))
    with wbroker.connect(daemon.socket) as c:
        c.publish("plain", src)
        r = c.load_into(dst, "plain", prefix=("", "module."))
        assert (r.missing_keys, r.unexpected_keys) == ([], [])
    assert same_output(src, dst.module)


# A list of pairs applies in order, each to the result of the one before;
# prefix= comes after the rules file, include and exclude and before
# rename.
def test_prefix_list_in_order(daemon):
    src, dst = net(), net()
    torch.nn.init.zeros_(dst[0].weight)
    with wbroker.connect(daemon.socket) as c:
        c.publish("deep", prefixed("_orig_mod.module.", src))
        r = c.load_into(dst, "deep", prefix=[("_orig_mod.", ""),
                                             ("module.", "")])
        assert (r.missing_keys, r.unexpected_keys) == ([], [])
        assert same_output(src, dst)
        # include sees the source names; rename sees the prefixed ones.
        r = c.plan(dst, "deep", include=["_orig_mod.module.0.*"],
                   prefix=("_orig_mod.module.", "x."),
                   rename={"x.0.weight": "0.weight", "x.0.bias": "0.bias"},
                   strict=False)
        assert r.missing_keys == ["2.weight", "2.bias"]
        assert (r.unexpected_keys, r.unused_rules) == ([], [])
        # In the other order the second pair finds nothing to strip.
        with pytest.warns(wbroker.UnusedRuleWarning):
            r = c.plan(dst, "deep", prefix=[("module.", ""),
                                            ("_orig_mod.", "")])
        assert not r.ok
        assert r.unused_rules == ['rule 1: prefix "module." -> ""']


# Anything but a pair or a list of pairs is refused before a request.
@pytest.mark.parametrize("bad", ["module.", ("module.",), ("a", "b", "c"),
                                 [("a", "b"), "c"], 7, [("a", 1)]])
def test_prefix_bad_arguments(daemon, bad):
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", net())
        with pytest.raises(TypeError, match="prefix"):
            c.load_into(net(), "m", prefix=bad)


# A prefix operand the library refuses (over the name limit) is an Error
# naming the rule.
def test_prefix_too_long(daemon):
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", net())
        with pytest.raises(wbroker.Error, match="prefix") as e:
            c.load_into(net(), "m", prefix=("x" * 2000, ""))
        assert e.value.name == "ENAME"


# The case: a rename= dict names whole keys, so {"layer1.": "fc1."}
# renames nothing.  The report lists the rule, and Python warns, pointing
# at the caller's line and saying what to write instead.
def test_unused_rule_reported_and_warned(daemon):
    src = {"layer1.weight": torch.ones(3, 4), "layer1.bias": torch.ones(3)}
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", src)
        dst = torch.nn.Module()
        dst.fc1 = torch.nn.Linear(4, 3)
        with pytest.warns(wbroker.UnusedRuleWarning) as w:
            r = c.load_into(dst, "m", rename={"layer1.": "fc1."},
                            strict=False)
        assert r.unused_rules == ['rule 1: rename "layer1." -> "fc1."']
        assert r.missing_keys == ["fc1.weight", "fc1.bias"]
        assert len(w) == 1
        msg = str(w[0].message)
        assert msg.startswith('rule matched no key: rename "layer1." -> '
                              '"fc1."'), msg
        assert 'prefix=("layer1.", "fc1.")' in msg
        assert w[0].filename == __file__
        # What the warning says works.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            r = c.load_into(dst, "m", prefix=("layer1.", "fc1."))
        assert r.ok and r.missing_keys == [] and r.unused_rules == []
        assert torch.equal(dst.fc1.weight, src["layer1.weight"])


# A rules file's unused line is named by its number; plan() reports and
# warns the same; a strict failure carries them in LoadError.result.
def test_unused_rules_file_plan_and_failure(daemon, tmp_path):
    rules = tmp_path / "rules.txt"
    rules.write_text("# comment\ninclude 0.*\nexclude nothing.*\n"
                     "cast 9.* F16\n")
    with wbroker.connect(daemon.socket) as c:
        c.publish("m", net())
        with pytest.warns(wbroker.UnusedRuleWarning) as w:
            r = c.plan(net(), "m", rules=str(rules), strict=False,
                       include=["nothing"])
        assert r.unused_rules == ['line 3: exclude "nothing.*"',
                                  'line 4: cast "9.*" F16',
                                  'rule 4: include "nothing"']
        assert [str(x.message) for x in w] == [
            'rule matched no key: line 3: exclude "nothing.*"',
            'rule matched no key: line 4: cast "9.*" F16',
            'rule matched no key: include "nothing"']
        with pytest.warns(wbroker.UnusedRuleWarning):
            with pytest.raises(wbroker.LoadError) as e:
                c.load_into(net(), "m", rules=rules)
        assert e.value.result.unused_rules == r.unused_rules[:2]
        # Every rule used: no warning at all.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert c.plan(net(), "m", include=["*"]).unused_rules == []


# A failing strict load whose unexpected keys are its missing keys with a
# "module." prefix ends its message with the prefix= that fixes it, and
# plan()'s error text ends the same; the reverse names the reverse pair.
def test_prefix_hint(daemon):
    with wbroker.connect(daemon.socket) as c:
        c.publish("dp", prefixed("module.", net()))
        with pytest.raises(wbroker.LoadError) as e:
            c.load_into(net(), "dp")
        text = str(e.value)
        assert text.startswith("Error(s) in loading state_dict for "
                               "Sequential:\n\tMissing key(s)")
        last = text.splitlines()[-1]
        assert last == ('\tHint: 4 of the unexpected keys match missing keys '
                        'without the prefix "module.": load with '
                        'prefix=("module.", "").')
        p = c.plan(net(), "dp")
        assert p.error == text
        c.publish("plain", net())
        wrapped = torch.nn.DataParallel(net())
        with pytest.raises(wbroker.LoadError) as e:
            c.load_into(wrapped, "plain")
        assert str(e.value).endswith('load with prefix=("", "module.").')
        # Keys that no prefix explains get no hint.
        c.publish("other", {"a.weight": torch.ones(3, 4)})
        with pytest.raises(wbroker.LoadError) as e:
            c.load_into(net(), "other")
        assert "Hint" not in str(e.value)
