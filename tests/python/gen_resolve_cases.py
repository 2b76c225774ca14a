#!/usr/bin/python3
"""gen_resolve_cases.py -- Random resolver cases checked against real torch.

Builds random torch modules (nested submodules, parameters, persistent
buffers, several dtypes) and random source state_dicts derived from them
(dropped keys, extra keys, other shapes and dtypes, shuffled order, keys
disguised by a prefix, exact names or a regex that the case's rules undo,
junk keys that an exclude rule filters out).  The rules are applied here
with Python's fnmatch and re, then model.load_state_dict() is run for real:
the missing/unexpected lists come from a load_state_dict post-hook and the
error text from the RuntimeError, so the expected results are torch's own.

    gen_resolve_cases.py [-n N] [--seed S] CASES.jsonl EXPECTED.jsonl

writes the cases for build/tests/test_resolve_vectors and the results it
must print (see tests/unit/test_resolve_vectors.c for both formats).

Known departures avoided by construction: sources of shape [N] for a 0-dim
target (torch copies element 0, wbroker reports a size mismatch), keys that
torch's module walk silently ignores ("fc" naming a submodule, "fc.weight.x"),
and submodules without any tensor (invisible in a flat schema)."""

import argparse
import fnmatch
import json
import random
import re
import sys

import torch
from torch import nn

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.float64: "F64",
          torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32"}
FLOATS = [torch.float32, torch.float16, torch.float64, torch.bfloat16]
LOCAL_NAMES = ["weight", "bias", "running_mean", "scale", "w", "b0", "gamma"]
CHILD_NAMES = ["fc", "conv", "0", "1", "2", "blk", "head", "layers", "norm",
               "attn", "proj"]
CLASS_NAMES = ["Net", "ResNet", "Encoder", "MyModel", "Tiny"]


def rand_shape(rng, ndim=None):
    if ndim is None:
        ndim = rng.choice([0, 1, 1, 2, 2, 3])
    return [rng.randint(1, 4) for _ in range(ndim)]


def build_module(rng, depth, cls=nn.Module):
    """Returns a module whose every submodule holds at least one tensor."""
    m = cls()
    children = rng.randint(0, 3) if depth < 3 else 0
    nlocal = rng.randint(0 if children else 1, 3)
    for name in rng.sample(LOCAL_NAMES, nlocal):
        dt = rng.choice(FLOATS + [torch.int64])
        t = torch.zeros(rand_shape(rng), dtype=dt)
        if dt.is_floating_point and rng.random() < 0.7:
            m.register_parameter(name, nn.Parameter(t, requires_grad=False))
        else:
            m.register_buffer(name, t)
    for name in rng.sample(CHILD_NAMES, children):
        m.add_module(name, build_module(rng, depth + 1))
    return m


def other_shape(rng, shape):
    """A different shape, never [N] for a 0-dim target."""
    while True:
        s = rand_shape(rng, rng.choice([len(shape), len(shape), 2, 3]))
        if s != list(shape) and not (len(shape) == 0 and len(s) == 1):
            return s


def module_paths(keys):
    mods = set()
    for k in keys:
        parts = k.split(".")
        for i in range(1, len(parts)):
            mods.add(".".join(parts[:i]))
    return mods


def make_case(rng, idx):
    cls = type(rng.choice(CLASS_NAMES), (nn.Module,), {})
    model = build_module(rng, 0, cls)
    sd = model.state_dict()
    tkeys = list(sd.keys())
    mods = module_paths(tkeys)

    # The source, under target names first: (name, dtype, shape).
    src = []
    for k, v in sd.items():
        r = rng.random()
        if r < 0.12:
            continue  # missing
        shape = list(v.shape)
        dt = v.dtype
        if rng.random() < 0.12:
            shape = other_shape(rng, shape)
        if rng.random() < 0.2 and dt.is_floating_point:
            dt = rng.choice(FLOATS)
        src.append([k, dt, shape])
    prefixes = [""] + sorted(m + "." for m in mods)
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        p = rng.choice(prefixes)
        name = p + rng.choice(["extra", "zz", "num_batches", "weight2", "x"])
        if rng.random() < 0.3:
            name = p + "ghost.sub" + str(rng.randint(0, 9)) + ".w"
        # Keep away from keys the torch walk silently ignores.
        first = name[len(p):].split(".", 1)[0]
        if (p + first) in sd or (p + first) in mods:
            continue
        if name not in sd and all(name != s[0] for s in src):
            src.append([name, rng.choice(FLOATS), rand_shape(rng)])
    if rng.random() < 0.5:
        rng.shuffle(src)

    # Disguise the names and write the rules that undo it.
    rules = []
    style = rng.choice(["none", "prefix", "exact", "regex"])
    if style == "prefix":
        for s in src:
            s[0] = "module." + s[0]
        rules.append(["prefix", "module.", ""])
    elif style == "exact":
        for i, s in enumerate(src):
            if rng.random() < 0.5:
                old = "old%d_%d" % (idx, i)
                rules.append(["rename", old, s[0]])
                s[0] = old
    elif style == "regex":
        for s in src:
            s[0] = "m:" + s[0].replace(".", "/", 1)
        rules.append(["regex", r"m:(?P<head>[^/]*)/(.*)", r"\g<head>.\2"])
        rules.append(["regex", r"m:([^/]*)", r"\1"])
    if rng.random() < 0.3:
        for j in range(rng.randint(1, 3)):
            src.insert(rng.randint(0, len(src)),
                       ["junk.%d.state" % j, torch.float32, [2]])
        rules.insert(0, ["exclude", "junk.*", ""])
    if rng.random() < 0.15:
        rules.insert(0, ["include", "*", ""])
    collide = rng.random() < 0.05 and len(src) >= 2 and style == "prefix"
    if collide:
        src.append([src[0][0][len("module."):], torch.float32, [1]])

    strict = rng.random() < 0.6
    ignore = rng.random() < 0.3
    case = {"id": idx, "target": cls.__name__,
            "source": [[n, DTYPES[d], s] for n, d, s in src],
            "schema": [[k, DTYPES[v.dtype], list(v.shape)]
                       for k, v in sd.items()],
            "rules": rules, "strict": strict, "ignore": ignore}
    if rng.random() < 0.5 and all(" " not in r[1] + r[2] for r in rules):
        case["rules_text"] = rules_text(rules)
    return case, expected(case, model, src, rules, strict, ignore)


def rules_text(rules):
    lines = []
    for kind, a, b in rules:
        if kind in ("include", "exclude"):
            lines.append("%s %s" % (kind, a))
        else:
            lines.append("%s %s -> %s" % (kind, a, b))
    return "\n".join(lines) + "\n"


def apply_rules(name, rules):
    """Returns the renamed key, or None when the filters drop it."""
    inc = [r[1] for r in rules if r[0] == "include"]
    exc = [r[1] for r in rules if r[0] == "exclude"]
    if any(fnmatch.fnmatchcase(name, g) for g in exc):
        return None
    if inc and not any(fnmatch.fnmatchcase(name, g) for g in inc):
        return None
    for kind, a, b in rules:
        if kind == "rename" and name == a:
            name = b
        elif kind == "prefix" and name.startswith(a):
            name = b + name[len(a):]
        elif kind == "regex":
            m = re.fullmatch(a, name)
            if m:
                name = m.expand(b)
    return name


def torch_load(model, state, strict):
    """Runs load_state_dict; returns (missing, unexpected, error text)."""
    seen = {}

    def hook(module, keys):
        seen["missing"] = list(keys.missing_keys)
        seen["unexpected"] = list(keys.unexpected_keys)

    h = model.register_load_state_dict_post_hook(hook)
    text = None
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        text = str(e)
    h.remove()
    return seen["missing"], seen["unexpected"], text


def expected(case, model, src, rules, strict, ignore):
    res = {"id": case["id"]}
    renamed = {}
    origin = {}
    for n, d, s in src:
        r = apply_rules(n, rules)
        if r is None:
            continue
        if r in renamed:
            res["rc"] = "ECOLLISION"
            res["errmsg"] = 'source keys "%s" and "%s" both map to "%s"' % (
                origin[r], n, r)
            return res
        renamed[r] = (d, s)
        origin[r] = n
    sd = model.state_dict()
    state = {k: torch.zeros(s, dtype=d) for k, (d, s) in renamed.items()}
    missing, unexpected, text = torch_load(model, state, strict)
    mismatched = [k for k, v in sd.items()
                  if k in renamed and list(v.shape) != renamed[k][1]]
    if ignore and mismatched:
        fixed = dict(state)
        for k in mismatched:
            fixed[k] = torch.zeros(sd[k].shape, dtype=sd[k].dtype)
        missing, unexpected, text = torch_load(model, fixed, strict)
    res["aliased"] = []
    res["missing"] = missing
    res["unexpected"] = unexpected
    res["mismatched"] = mismatched
    res["cast"] = [k for k, v in sd.items() if k in renamed and
                   k not in mismatched and v.dtype != renamed[k][0]]
    res["error_text"] = text
    res["rc"] = "ELOAD" if text is not None else "OK"
    res["resolved"] = [] if text is not None else [
        [k, origin[k], DTYPES[v.dtype], v.dtype != renamed[k][0]]
        for k, v in sd.items() if k in renamed and k not in mismatched]
    return res


def generate(n, seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    cases, results = [], []
    for i in range(n):
        c, r = make_case(rng, i)
        cases.append(c)
        results.append(r)
    return cases, results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("cases")
    ap.add_argument("expected")
    a = ap.parse_args()
    cases, results = generate(a.n, a.seed)
    with open(a.cases, "w") as f:
        for c in cases:
            f.write(json.dumps(c) + "\n")
    with open(a.expected, "w") as f:
        for r in results:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
