"""The programs in examples/, run as the README says, against a real daemon.

Each runs with small arguments in a process of its own; the socket comes
from --socket for some runs and from $WBROKER_SOCKET for others, as the
examples promise.  The C example is built by `make examples`.
"""
import os
import re
import subprocess
import sys

import pytest
import torch

from wbt_daemon import BUILD, ROOT

EXAMPLES = os.path.join(ROOT, "examples")


def run(daemon, argv, socket_arg=True, check=True):
    env = daemon.env()  # PYTHONPATH and WBROKER_SOCKET for this daemon
    env.setdefault("WBROKER_LIB", os.path.join(BUILD, "libwbroker.so"))
    if socket_arg:
        argv = argv + ["--socket", daemon.socket]
        env.pop("WBROKER_SOCKET")
    r = subprocess.run(argv, env=env, capture_output=True, text=True,
                       timeout=300)
    if check:
        assert r.returncode == 0, "%s failed (%d):\n%s\n%s" % (
            argv, r.returncode, r.stdout, r.stderr)
    return r


def python(daemon, script, *args, **kw):
    return run(daemon, [sys.executable, os.path.join(EXAMPLES, script)]
               + list(args), **kw)


def test_trainer_publishes_every_n_steps(daemon):
    r = python(daemon, "trainer.py", "--model", "tr", "--steps", "7",
               "--every", "3")
    published = re.findall(r"^step (\d+): loss [\d.]+, published tr@(\d+) "
                           r"\(6 tensors\)$", r.stdout, re.M)
    assert published == [("3", "1"), ("6", "2"), ("7", "3")], r.stdout
    import wbroker
    with wbroker.connect(daemon.socket) as c:
        info = {m.name: m for m in c.models()}
        assert info["tr"].version == 3 and info["tr"].tensors == 6
        assert c.metadata("tr")["step"] == "7"
        sd = c.state_dict("tr")
        assert sorted(sd) == sorted(["backbone.0.weight", "backbone.0.bias",
                                     "backbone.2.weight", "backbone.2.bias",
                                     "head.weight", "head.bias"])


def test_finetune_takes_the_backbone_under_other_names(daemon):
    python(daemon, "trainer.py", "--steps", "2", "--every", "1",
           socket_arg=False)  # model "trainer", socket from the environment
    r = python(daemon, "finetune.py", "--steps", "3", "--publish", "tuned")
    out = r.stdout
    assert "loaded trainer@2 into Classifier" in out
    assert "missing_keys:    ['classifier.weight', 'classifier.bias']" in out
    assert "unexpected_keys: ['head.weight', 'head.bias']" in out
    assert "mismatched_keys: []" in out
    assert "encoder: 4 tensors taken from trainer@2" in out
    assert "encoder changed here: True; trainer@2 unchanged: True" in out
    assert "published tuned@1" in out
    import wbroker
    with wbroker.connect(daemon.socket) as c:
        tuned = c.state_dict("tuned")
        assert sorted(tuned) == sorted(
            ["encoder.fc1.weight", "encoder.fc1.bias", "encoder.fc2.weight",
             "encoder.fc2.bias", "classifier.weight", "classifier.bias"])
        assert tuned["classifier.weight"].shape == (3, 64)
        assert c.metadata("tuned")["from"] == "trainer@2"
        # Fine-tuning moved the encoder away from the source's backbone.
        assert not torch.equal(tuned["encoder.fc1.weight"],
                               c.state_dict("trainer")["backbone.0.weight"])


def test_finetune_of_an_older_version(daemon):
    python(daemon, "trainer.py", "--model", "src", "--steps", "4",
           "--every", "2")
    r = python(daemon, "finetune.py", "--source", "src", "--version", "1",
               "--steps", "0")
    assert "loaded src@1 into Classifier" in r.stdout
    assert "encoder: 4 tensors taken from src@1" in r.stdout


def test_finetune_without_its_source(daemon):
    r = python(daemon, "finetune.py", "--source", "absent", check=False)
    assert r.returncode == 1
    assert "no model 'absent'" in r.stderr
    assert "examples/trainer.py" in r.stderr


def test_examples_without_a_daemon(tmp_path):
    env = dict(os.environ, WBROKER_SOCKET=str(tmp_path / "none.sock"),
               PYTHONPATH=os.path.join(ROOT, "client", "python"))
    env.setdefault("WBROKER_LIB", os.path.join(BUILD, "libwbroker.so"))
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, "trainer.py"),
                        "--steps", "1"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1
    assert "none.sock" in r.stderr


@pytest.fixture(scope="module")
def c_example():
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(["make", "-C", ROOT, "--no-print-directory",
                        "BUILD=" + os.environ.get("WB_BUILD", "build"),
                        "examples"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return os.path.join(BUILD, "examples", "publish_map")


def test_c_example_publishes_and_maps_back(daemon, c_example):
    r = run(daemon, [c_example, "--model", "cm"])
    assert "published cm@1: 3 tensors" in r.stdout
    assert re.search(r"fc\.weight\s+F32\s+\[4, 3\] 48 bytes ok", r.stdout)
    assert re.search(r"fc\.bias\s+F32\s+\[4\] 16 bytes ok", r.stdout)
    assert re.search(r"step\s+I64\s+\[\] 8 bytes ok", r.stdout)
    assert "metadata producer=publish_map.c" in r.stdout
    assert "ok: cm@1 maps back byte for byte" in r.stdout
    # Again, with the socket from the environment: the next version.
    r = run(daemon, [c_example, "--model", "cm"], socket_arg=False)
    assert "ok: cm@2 maps back byte for byte" in r.stdout
    import wbroker
    with wbroker.connect(daemon.socket) as c:
        sd = c.state_dict("cm")
        assert torch.equal(sd["fc.weight"],
                           0.25 * torch.arange(12, dtype=torch.float32)
                           .reshape(4, 3))
        assert torch.equal(sd["fc.bias"], -torch.arange(4.0))
        assert sd["step"].item() == 1000


def test_c_example_usage_and_errors(tmp_path, daemon, c_example):
    r = subprocess.run([c_example, "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr
    r = subprocess.run([c_example, "--socket", str(tmp_path / "none.sock")],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "connect" in r.stderr and "none.sock" in r.stderr
