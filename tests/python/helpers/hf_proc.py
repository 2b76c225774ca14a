"""hf_proc.py -- Test-side helpers of the Hugging Face tests: run
hf_publish.py in its own process, run the wbroker CLI, and check a loaded
model (zero-copy, ties, the report against torch's load_state_dict)."""
import copy
import json
import os
import subprocess

import hf_models
import torch
import wb_proc


class Saved:
    """What hf_publish.py left behind: the version it published (0 if
    none), the state_dict it handed on, the logits on the fixed input and
    its output directory."""

    def __init__(self, version, source, output, dir):
        self.version = version
        self.source = source
        self.output = output
        self.dir = dir


def publish(daemon, tmp_path, kind, name, seed=1, mode="publish"):
    """Runs hf_publish.py KIND NAME SEED OUTDIR MODE in another process."""
    out = tmp_path / ("hf-%s-%s-%s" % (name, seed, mode.replace(":", "-")))
    out.mkdir(exist_ok=True)
    p = wb_proc.run_helper(daemon, "hf_publish.py", kind, name, seed, out,
                           mode)
    return Saved(int(p.stdout.split()[-1]), torch.load(out / "source.pt"),
                 torch.load(out / "output.pt"), out)


def cli(daemon, *args, check=True, json_out=False):
    """Runs build/wbroker against daemon; returns the CompletedProcess
    (stdout bytes), or the parsed JSON document with json_out."""
    argv = [daemon.cli, "--socket", daemon.socket]
    argv += ["--json"] if json_out else []
    p = subprocess.run(argv + [str(a) for a in args], capture_output=True,
                       timeout=120)
    if check and p.returncode != 0:
        raise AssertionError("wbroker %s failed (%d): %s%s" % (
            " ".join(map(str, args)), p.returncode, p.stdout.decode(
                errors="replace"), p.stderr.decode(errors="replace")))
    return json.loads(p.stdout) if json_out and p.returncode == 0 else p


def torch_report(fresh, source, strict=False):
    """What torch's load_state_dict(source, strict) gives on a copy of
    fresh: the _IncompatibleKeys, or the RuntimeError it raises."""
    try:
        return copy.deepcopy(fresh).load_state_dict(source, strict=strict)
    except RuntimeError as e:
        return e


def assert_report_like_torch(r, fresh, source):
    """r lists exactly the keys, in the order, that torch's
    load_state_dict(strict=False) lists for the same pair."""
    want = torch_report(fresh, source)
    assert r.missing_keys == want.missing_keys
    assert r.unexpected_keys == want.unexpected_keys
    assert r.mismatched_keys == []


def assert_zero_copy(model):
    """Every tensor of model's state_dict views a wbroker segment."""
    ranges = wb_proc.memfd_ranges()
    assert ranges
    for k, t in model.state_dict().items():
        if t.numel():
            assert wb_proc.in_memfd(t.data_ptr(), ranges), k


def assert_ties(model, groups):
    """Every group of keys still names one Parameter (one data_ptr)."""
    sd = model.state_dict(keep_vars=True)
    for g in groups:
        assert all(sd[k] is sd[g[0]] for k in g), g
        assert len({sd[k].data_ptr() for k in g}) == 1, g


def non_persistent(model):
    """Copies of the buffers that model's state_dict leaves out."""
    keys = set(model.state_dict())
    return {n: b.detach().clone() for n, b in model.named_buffers()
            if n not in keys}


def assert_non_persistent_kept(model, before):
    """The buffers of before are model's own still: same values, private
    memory."""
    now = dict(model.named_buffers())
    for n, b in before.items():
        assert torch.equal(now[n], b), n
        assert not wb_proc.in_memfd(now[n].data_ptr()), n


def hf_env_ok():
    """The offline environment hf_models sets up, checked."""
    return os.environ.get("HF_HUB_OFFLINE") == "1"


KINDS = hf_models.KINDS
