"""bench_follow.py -- A trainer publishing a ~1 GiB model every few seconds
to four servers that follow it: the shared memory resident meanwhile, and
the time from commit to "every follower serves the new version", next to
the publish time of the same run.

    WB_BUILD=build /usr/bin/python3 bench/bench_follow.py [--quick]
        [--versions 12] [--every 4] [--followers 4]

The daemon runs with --keep 2.  The model is a stack of float32 4096 x 4096
layers (16 of them, 1 GiB; 4 with --quick, 256 MiB, and fewer versions
closer together), every weight of version v equal to v.  This process is
the trainer: it sets the weights to the next version (not timed), then
publishes (timed: publish() until the commit returned) every --every
seconds.  Each follower is a process of its own whose model is made
without touching its memory (torch.nn.utils.skip_init) and which runs
c.follow(model, NAME, lock=lock) while a serving thread runs a small matrix
product on every layer under the same lock and checks that every layer it
read holds one version (what the follower's .version says).  The follower's
main thread notes the moment each version is served (f.wait() returned with
it, CLOCK_MONOTONIC, which all processes share).

Figures: per version, the latency from its commit to the moment the last
of the followers serves it (or a newer one); median and worst, next to the
median and worst publish time, and the median per follower.  Memory: the
most the daemon's segments held (status memory_shmem, sampled every 20 ms)
and the most /proc/meminfo Shmem grew over its value at the start, against
the bound (keep + 2) x model size: the kept versions, one being published,
one just left by the followers.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, os.environ.get("WB_BUILD", "build"))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
os.environ.setdefault("WBROKER_LIB", os.path.join(BUILD, "libwbroker.so"))

import wbroker  # noqa: E402
from wbt_daemon import Daemon  # noqa: E402

WIDTH = 4096                    # Layers of WIDTH x WIDTH float32: 64 MiB.
LAYERS, QUICK_LAYERS = 16, 4
KEEP = 2
NAME = "big"
MIB = 1 << 20


def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class Stack(torch.nn.Module):
    """`layers` bias-free WIDTH x WIDTH linear layers."""

    def __init__(self, layers, init=True):
        super().__init__()
        make = (torch.nn.Linear if init else
                lambda *a, **k: torch.nn.utils.skip_init(torch.nn.Linear,
                                                         *a, **k))
        self.layers = torch.nn.ModuleList(
            make(WIDTH, WIDTH, bias=False) for _ in range(layers))


def shmem_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    return 0


# ------------------------------------------------------------------ follower

def follower_main(sock, layers):
    """One follower process: prints "ready", then "served V T" per version
    served, "mixed V" if a serving pass saw two versions; ends when its
    standard input closes."""
    model = Stack(layers, init=False).eval()
    lock = threading.Lock()
    done = threading.Event()
    c = wbroker.connect(sock)
    f = c.follow(model, NAME, lock=lock)
    out = threading.Lock()

    def say(line):
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def serve():
        x = torch.ones(1, 64)
        while not done.is_set():
            with lock, torch.no_grad():
                v = f.version
                seen = {float(layer.weight[0, 0]) for layer in model.layers}
                for layer in model.layers:      # A little work per layer.
                    x @ layer.weight[:64, :64]
            if v and seen != {float(v)}:
                say("mixed %d %s" % (v, sorted(seen)))
            time.sleep(0.001)

    def stdin_closed():
        sys.stdin.read()
        done.set()
        f.stop()            # Wakes the watch at once.

    server = threading.Thread(target=serve)
    server.start()
    threading.Thread(target=stdin_closed, daemon=True).start()
    say("ready")
    last = 0
    while not done.is_set():
        if f.wait(last + 1, timeout=1.0):
            last = f.version
            say("served %d %.6f" % (last, now()))
    server.join()       # Not torn down inside a torch call at exit.
    c.close()


class Follower:
    def __init__(self, sock, layers):
        self.p = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--follower", sock,
             str(layers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=os.environ)
        self.served = {}        # version -> time served
        self.mixed = []
        self.thread = threading.Thread(target=self._read, daemon=True)

    def wait_ready(self):
        line = self.p.stdout.readline()
        if line != "ready\n":
            raise RuntimeError("follower did not start: %r" % line)
        self.thread.start()

    def _read(self):
        for line in self.p.stdout:
            w = line.split()
            if w[0] == "served":
                self.served[int(w[1])] = float(w[2])
            elif w[0] == "mixed":
                self.mixed.append(line.strip())

    def first_serving(self, v):
        """When this follower first served v or a newer version."""
        ts = [t for u, t in self.served.items() if u >= v]
        return min(ts) if ts else None

    def stop(self):
        self.p.stdin.close()
        self.p.wait(60)
        self.thread.join(10)


# ------------------------------------------------------------------ trainer

def run(args):
    layers = QUICK_LAYERS if args.quick else LAYERS
    size = layers * WIDTH * WIDTH * 4
    tmp = tempfile.mkdtemp(prefix="wb-bench-follow-")
    daemon = Daemon(tmp, ("--keep", str(KEEP), "--memory-limit", "16G"),
                    "info")
    followers = []
    try:
        shmem0 = shmem_bytes()
        print("model: %d layers of %dx%d float32, %.0f MiB; %d versions every "
              "%.1f s; %d followers; --keep %d" % (
                  layers, WIDTH, WIDTH, size / MIB, args.versions, args.every,
                  args.followers, KEEP), flush=True)
        model = Stack(layers, init=False)
        followers = [Follower(daemon.socket, layers)
                     for _ in range(args.followers)]
        for f in followers:
            f.wait_ready()
        peak = {"daemon": 0, "shmem": 0}
        sampling = threading.Event()

        def sample():
            with wbroker.connect(daemon.socket) as c:
                while not sampling.is_set():
                    peak["daemon"] = max(peak["daemon"],
                                         c.status().memory_shmem)
                    peak["shmem"] = max(peak["shmem"],
                                        shmem_bytes() - shmem0)
                    time.sleep(0.02)
        sampler = threading.Thread(target=sample)
        sampler.start()
        commits, publish = {}, []
        with wbroker.connect(daemon.socket) as c:
            next_at = now()
            for i in range(1, args.versions + 1):
                with torch.no_grad():
                    for layer in model.layers:
                        layer.weight.fill_(float(i))
                delay = next_at - now()
                if delay > 0:
                    time.sleep(delay)
                t0 = now()
                v = c.publish(NAME, model)
                t1 = now()
                assert v == i, (v, i)
                commits[v] = t1
                publish.append(t1 - t0)
                print("  published %s@%d in %.0f ms" % (NAME, v,
                                                        (t1 - t0) * 1e3),
                      flush=True)
                next_at = t0 + args.every
            deadline = now() + 60
            while (any(f.first_serving(args.versions) is None
                       for f in followers) and now() < deadline):
                time.sleep(0.05)
        time.sleep(0.2)
        sampling.set()
        sampler.join()
        report(args, size, commits, publish, followers, peak)
    finally:
        for f in followers:
            f.stop()
        rc = daemon.stop()
        if rc != 0:
            with open(daemon.log) as f:
                print("wbrokerd exited with %r:\n%s" % (rc, f.read()[-4000:]),
                      file=sys.stderr)
    return 0 if rc == 0 else 1


def ms(x):
    return "%.0f ms" % (x * 1e3)


def report(args, size, commits, publish, followers, peak):
    all_served, per_follower, missing = [], [[] for _ in followers], 0
    for v, t in sorted(commits.items()):
        ts = [f.first_serving(v) for f in followers]
        if None in ts:
            missing += 1
            continue
        all_served.append(max(ts) - t)
        for k, s in enumerate(ts):
            per_follower[k].append(s - t)
    skipped = sum(len(commits) - len([u for u in f.served if u in commits])
                  for f in followers)
    print()
    print("| %d versions of %.0f MiB, %d followers | median | worst |"
          % (len(commits), size / MIB, len(followers)))
    print("| --- | --- | --- |")
    print("| publish (publish() until committed) | %s | %s |"
          % (ms(statistics.median(publish)), ms(max(publish))))
    if all_served:
        print("| commit -> every follower serves it | %s | %s |"
              % (ms(statistics.median(all_served)), ms(max(all_served))))
    for k, lat in enumerate(per_follower):
        if lat:
            print("| commit -> follower %d serves it | %s | %s |"
                  % (k + 1, ms(statistics.median(lat)), ms(max(lat))))
    bound = (KEEP + 2) * size
    print()
    print("| resident shared memory | peak | bound (keep + 2) x size "
          "| within |")
    print("| --- | --- | --- | --- |")
    for what, key in (("daemon's segments (status shmem)", "daemon"),
                      ("/proc/meminfo Shmem growth", "shmem")):
        print("| %s | %.0f MiB = %.2f x size | %.0f MiB | %s |"
              % (what, peak[key] / MIB, peak[key] / size, bound / MIB,
                 "yes" if peak[key] <= bound else "NO"))
    mixed = [m for f in followers for m in f.mixed]
    print()
    print("versions never served: %d; (follower, version) pairs skipped "
          "for a newer one: %d; serving passes that saw two versions: %d"
          % (missing, skipped, len(mixed)))
    for m in mixed[:5]:
        print("  " + m)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--follower":
        follower_main(sys.argv[2], int(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="256 MiB, 6 versions every 1.5 s")
    ap.add_argument("--versions", type=int)
    ap.add_argument("--every", type=float, help="seconds between publishes")
    ap.add_argument("--followers", type=int, default=4)
    args = ap.parse_args()
    if args.versions is None:
        args.versions = 6 if args.quick else 12
    if args.every is None:
        args.every = 1.5 if args.quick else 4.0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
