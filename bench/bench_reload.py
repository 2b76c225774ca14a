"""bench_reload.py -- How long load_into() of version N+1 takes when it
lets go of version N, whose every page this process had resident.

    WB_BUILD=build /usr/bin/python3 bench/bench_reload.py [--layers 16]
        [--runs 9] [--populate]

wbrokerd --keep 2 holds two versions of a stack of float32 4096 x 4096
layers (16: 1 GiB).  The model loads them in turn, each load_into()
replacing the views of the other version, the model's only ones, after
reading a byte of each of its pages (so that the old version is resident
and mapped, as in a server); timed: the call, median of --runs.  With
--populate, load_into(populate=True): the new version resident too.  Then the time until the daemon saw the old version's hold end
(its holders() list empty of it), polled every millisecond: the release
that happens off the caller's path.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, os.environ.get("WB_BUILD", "build"))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
os.environ.setdefault("WBROKER_LIB", os.path.join(BUILD, "libwbroker.so"))

import wbroker  # noqa: E402
from wbt_daemon import Daemon  # noqa: E402

# The model, its width and its name are bench_follow's (same directory).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_follow import NAME, WIDTH, Stack  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--populate", action="store_true")
    a = ap.parse_args()
    size = a.layers * WIDTH * WIDTH * 4
    with tempfile.TemporaryDirectory() as tmp:
        d = Daemon(tmp, extra=("--keep", "2", "--huge-pages", "off"),
                   log_level="warn")
        try:
            c = wbroker.connect(d.socket)
            src = Stack(a.layers, init=False)
            with torch.no_grad():
                for v in (1, 2):
                    for layer in src.layers:
                        layer.weight.fill_(v)
                    c.publish(NAME, src)
            del src
            model = Stack(a.layers, init=False)
            c.load_into(model, NAME, 1, populate=a.populate)
            calls, released = [], []
            for r in range(a.runs):
                old, new = 1 + r % 2, 2 - r % 2
                for layer in model.layers:  # Every page of old resident.
                    layer.weight.view(-1)[::1024].sum()
                t0 = time.perf_counter()
                c.load_into(model, NAME, new, populate=a.populate)
                t1 = time.perf_counter()
                while any(h.version == old and h.pid == os.getpid()
                          for h in c.holders(NAME)):
                    time.sleep(0.001)
                t2 = time.perf_counter()
                assert float(model.layers[0].weight.detach()[0, 0]) == new
                calls.append(t1 - t0)
                released.append(t2 - t0)
            c.close()
        finally:
            d.stop()
    print("# load_into of version N+1 (populate=%s) dropping N's views, "
          "%d layers, %.2f GiB, median of %d" % (a.populate, a.layers,
                                                 size / 2**30, a.runs))
    print("load_into: %.1f ms (min %.1f)  old version's hold ended after: "
          "%.1f ms" % (statistics.median(calls) * 1e3, min(calls) * 1e3,
                       statistics.median(released) * 1e3))
    print("reproduce: WB_BUILD=%s %s bench/bench_reload.py --layers %d%s"
          % (os.path.relpath(BUILD, ROOT), sys.executable, a.layers,
             " --populate" if a.populate else ""))


if __name__ == "__main__":
    main()
