"""wb_proc.py -- Test-side helpers: run the helper scripts in their own
processes against a daemon, and inspect this process's mappings."""
import os
import subprocess
import sys
import time

import torch

HELPERS = os.path.dirname(os.path.abspath(__file__))
MEMFD_PREFIX = "/memfd:wbroker:"


class Published:
    """What a publisher process left behind: version, source state_dict
    and the source's output on the fixed input."""

    def __init__(self, version, source, output):
        self.version = version
        self.source = source
        self.output = output


def run_helper(daemon, script, *args, check=True):
    """Runs helpers/script with args in a new process using daemon."""
    p = subprocess.run([sys.executable, os.path.join(HELPERS, script),
                        *map(str, args)], env=daemon.env(),
                       capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError("%s %s failed (%d):\n%s%s" % (
            script, args, p.returncode, p.stdout, p.stderr))
    return p


def publish(daemon, tmp_path, kind, name, seed=1, dtype=None):
    """Publishes wb_models.build(kind, seed) from another process."""
    out = tmp_path / ("pub-%s-%s" % (name, seed))
    out.mkdir(exist_ok=True)
    args = [kind, name, seed, out] + ([dtype] if dtype else [])
    p = run_helper(daemon, "publish.py", *args)
    return Published(int(p.stdout.split()[-1]), torch.load(out / "source.pt"),
                     torch.load(out / "output.pt"))


def memfd_ranges():
    """[(start, end)] of this process's mappings of wbroker segments."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            if MEMFD_PREFIX in line:
                lo, hi = line.split()[0].split("-")
                out.append((int(lo, 16), int(hi, 16)))
    return out


def in_memfd(ptr, ranges=None):
    """True if address ptr lies inside a wbroker segment mapping."""
    for lo, hi in ranges if ranges is not None else memfd_ranges():
        if lo <= ptr < hi:
            return True
    return False


def assert_same_output(got, want):
    """A forward pass here gives what the publisher's gave.  The weights
    are compared bit for bit elsewhere; outputs computed in two processes
    may round differently (the kernel a matmul picks can depend on the
    alignment of its operands and the threads free), so they are compared
    within float32's rounding, as torch.testing does by default."""
    torch.testing.assert_close(got, want)


def wait_for(cond, timeout=10.0):
    """cond()'s first true value within timeout seconds, else its last."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    return cond()
