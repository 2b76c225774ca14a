"""test_resolve_torch.py -- wb__resolve() against real torch load_state_dict.

Generates random cases with gen_resolve_cases.py (the expected results are
what torch 1.13 itself reports), runs them through
$WB_BUILD/tests/test_resolve_vectors (WB_BUILD defaults to "build") and
compares every result field by field: key lists in order, resolved tensors,
and the error text byte for byte.

    /usr/bin/python3 -m pytest tests/python/test_resolve_torch.py
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

torch = pytest.importorskip("torch")
import gen_resolve_cases  # noqa: E402

CASES = int(os.environ.get("WB_RESOLVE_CASES", "600"))


def driver():
    build = os.environ.get("WB_BUILD", "build")
    path = os.path.join(build if os.path.isabs(build) else
                        os.path.join(ROOT, build), "tests", "test_resolve_vectors")
    if not os.path.exists(path):
        pytest.fail("%s is missing: run `make %s` first" % (
            path, os.path.relpath(path, ROOT)))
    return path


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_resolve_matches_torch(tmp_path, seed):
    cases, expected = gen_resolve_cases.generate(CASES // 3, seed)
    f = tmp_path / "cases.jsonl"
    f.write_text("".join(json.dumps(c) + "\n" for c in cases))
    out = subprocess.run([driver(), str(f)], check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert len(out) == len(cases)
    for case, exp, line in zip(cases, expected, out):
        got = json.loads(line)
        if exp["rc"] == "ECOLLISION":
            got = {k: got[k] for k in ("id", "rc", "errmsg")}
        assert got == exp, "case %d:\n%s" % (case["id"], json.dumps(case))


def test_resolve_error_text_example():
    """The product page's example, loaded into a real torch module."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(20, 10)
            self.fc2 = torch.nn.Linear(30, 10)
    src = {"layer1.weight": torch.zeros(10, 20), "layer1.bias": torch.zeros(10),
           "fc2.weight": torch.zeros(10, 20), "fc2.bias": torch.zeros(10)}
    with pytest.raises(RuntimeError) as e:
        Net().load_state_dict(src)
    case = {"id": 0, "target": "Net", "strict": True, "ignore": False,
            "rules": [],
            "source": [[k, "F32", list(v.shape)] for k, v in src.items()],
            "schema": [[k, "F32", list(v.shape)]
                       for k, v in Net().state_dict().items()]}
    f = os.path.join(os.environ.get("TMPDIR", "/tmp"),
                     "wb-resolve-example-%d.jsonl" % os.getpid())
    with open(f, "w") as fh:
        fh.write(json.dumps(case) + "\n")
    try:
        out = subprocess.run([driver(), f], check=True, capture_output=True,
                             text=True).stdout
    finally:
        os.unlink(f)
    assert json.loads(out)["error_text"] == str(e.value)
