"""bench_peers.py -- wbroker next to what users would pick instead to hand
a model's weights to a second, already running process, in one run:

  wbroker      publish(), then the consumer's load_into() (views of the
               daemon's segment, pages faulted on first use)
  wb-populate  the same with load_into(populate=True) (resident on return)
  torch-mmap   torch.save() into a new file in /dev/shm per version, then torch.load(mmap=True,
               weights_only=True) + load_state_dict(assign=True)
  safetensors  save_file() into a new file in /dev/shm per version, then load_file() (which is
               safe_open() + get_tensor() per key) + load_state_dict(
               assign=True)
  ray          ray.put() of a dict of numpy arrays into a local object store
               (ray.init with a 2.5 GiB store), then ray.get() (zero-copy,
               read-only views of the store) + torch.from_numpy +
               load_state_dict(assign=True)
  mp-queue     model.share_memory() (counted as publish), then put() of the
               state_dict on a torch.multiprocessing queue, the consumer's
               get() + load_state_dict(assign=True)

    ~/.cache/wbroker/venv-torch2/bin/python bench/bench_peers.py [--quick]
        [--huge-pages thp] [--models resnet50,transformer1g]

Runs on the torch 2.x venv; installs ray and torchvision into it with pip
(cache ~/.cache/wbroker/pip) if they are missing.  Models: torchvision's
ResNet-50 and a transformer-like stack of 25 blocks (303 tensors, 1.04 GiB
of float32), seeded random weights, nothing downloaded.  --quick: ResNet-50
only, one run.

Per route and model, four consumer processes are spawned, each builds its
model (other weights) before any timing; consumer 0 loads `runs` times (a
new publish each time, publish timed in the producer), consumers 1-3 once.
Times are CLOCK_MONOTONIC, shared by all processes:
  usable    from asking the consumer (mp-queue: from put) until its load
            call returned with the weights in its model;
  resident  until, in addition, every page of every weight was touched
            once (a byte per 4 KiB page), i.e. all resident in the consumer.
After the timing (untimed) every consumer computes an exact checksum of
every tensor's bits, which must equal the producer's: bit-exactness per
route.  Memory: the sum of the four consumers' Pss (/proc/PID/smaps_rollup)
after loading, touching, gc and malloc_trim(0), net of the same four
processes' Pss measured at start-up before they built a model (torch, and
for ray the ray client, imported and connected); `copies` is net / model
bytes.  Pss splits a shared page among the processes mapping it, so four
consumers of one shared copy add up to 1.00; the producer's copy (daemon
segment, /dev/shm file, object store) is not in it.

--huge-pages thp runs the daemon with --huge-pages thp; when
/sys/kernel/mm/transparent_hugepage/shmem_enabled says never/deny and this
runs as root, it is set to within_size for the run and restored after.
"""
import argparse
import contextlib
import ctypes
import gc
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, os.environ.get("WB_BUILD", "build"))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
os.environ.setdefault("WBROKER_LIB", os.path.join(BUILD, "libwbroker.so"))
PIP_CACHE = os.path.expanduser("~/.cache/wbroker/pip")


def ensure(*pkgs):
    """pip-installs the packages that do not import, into this venv."""
    missing = []
    for p in pkgs:
        try:
            importlib.import_module(p)
        except ImportError:
            missing.append(p)
    if missing:
        print("installing %s with pip" % " ".join(missing), flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                               "--cache-dir", PIP_CACHE, *missing])


if __name__ == "__main__":
    ensure("torchvision", "ray", "safetensors")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

import wbroker  # noqa: E402
from wbt_daemon import Daemon  # noqa: E402

# The model, clock and checksums of the file-route benchmark, so that both
# measure the same things (its WIDTH and VOCAB are this model's too).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import TransformerLike, checksums, now  # noqa: E402

MODELS = ("resnet50", "transformer1g")
ROUTES = ("wbroker", "wb-populate", "torch-mmap", "safetensors", "ray",
          "mp-queue")
RUNS = 3
LAYERS, MLP = 25, 3             # Blocks of WIDTH 1024 (bench_torch.py).
PRODUCER_SEED, CONSUMER_SEED = 1, 2
CONSUMERS = 4
MEMORY_LIMIT = "6G"
RAY_STORE = 2560 << 20
GIB = 1 << 30
PAGE = 4096
THP = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
CTX = torch.multiprocessing.get_context("spawn")


def build(kind, seed):
    torch.manual_seed(seed)
    if kind == "resnet50":
        return torchvision.models.resnet50(weights=None).eval()
    return TransformerLike(LAYERS, MLP).eval()


def touch(model):
    """Reads a byte of every 4 KiB page of every weight (and the last
    byte), which makes every page resident."""
    s = 0
    for t in model.state_dict().values():
        a = t.detach().reshape(-1).numpy().view(np.uint8)
        if a.size:
            s += int(a[::PAGE].sum()) + int(a[-1])
    return s


def own_pss():
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Pss")


def ray_ref_out(ref):
    """What another process needs to get the object of `ref`: its id and
    owner.  Pickling a reference out of band (cloudpickle) would pin the
    object for the store's life; this leaves it to the owner's reference
    count, which the producer keeps until the consumer has loaded."""
    import ray
    w = ray._private.worker.global_worker
    ref, owner, status = w.core_worker.serialize_object_ref(ref)
    return (ref.binary(), owner, status, ref.tensor_transport())


def ray_ref_in(arg):
    """The ObjectRef of ray_ref_out()'s answer, registered as a borrower."""
    from ray._private.serialization import _object_ref_deserializer
    binary, owner, status, transport = arg
    return _object_ref_deserializer(binary, "", owner, status, transport)


# ------------------------------------------------------------------ consumer

class Consumer:
    def __init__(self, kind, route, sock, ray_addr, queue):
        self.route, self.queue = route, queue
        self.client = wbroker.connect(sock)
        if route == "ray":
            import ray
            ray.init(address=ray_addr, log_to_driver=False,
                     logging_level="ERROR")
        gc.collect()
        self.idle_pss = own_pss()
        self.model = build(kind, CONSUMER_SEED)

    def _load(self, arg):
        r, m = self.route, self.model
        if r in ("wbroker", "wb-populate"):
            res = self.client.load_into(m, arg, populate=(r == "wb-populate"))
            if res.copied_keys:
                raise AssertionError("load_into copied %s" % res.copied_keys)
        elif r == "torch-mmap":
            m.load_state_dict(torch.load(arg, mmap=True, weights_only=True),
                              assign=True)
        elif r == "safetensors":
            from safetensors.torch import load_file
            m.load_state_dict(load_file(arg), assign=True)
        elif r == "ray":
            import ray
            d = ray.get(ray_ref_in(arg))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")     # read-only arrays
                sd = {k: torch.from_numpy(v) for k, v in d.items()}
            m.load_state_dict(sd, assign=True)
        else:
            m.load_state_dict(self.queue.get(), assign=True)

    def load(self, arg):
        self._load(arg)
        usable = now()
        touch(self.model)
        resident = now()
        gc.collect()
        return usable, resident

    def sums(self):
        return checksums(self.model)

    def pss(self):
        gc.collect()
        ctypes.CDLL(None).malloc_trim(0)
        return self.idle_pss, own_pss()


def consumer_main(kind, route, sock, ray_addr, queue, conn):
    c = Consumer(kind, route, sock, ray_addr, queue)
    conn.send("ready")
    for method, *args in iter(conn.recv, None):
        conn.send(getattr(c, method)(*args))


class Worker:
    def __init__(self, kind, route, sock, ray_addr):
        self.queue = CTX.Queue()
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=consumer_main, daemon=True, args=(
            kind, route, sock, ray_addr, self.queue, child))
        self.proc.start()
        child.close()

    def call(self, method, *args):
        self.conn.send((method, *args))
        return self.conn.recv()

    def stop(self):
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()
        self.queue.cancel_join_thread()
        self.queue.close()


@contextlib.contextmanager
def workers(kind, route, sock, ray_addr):
    ws = []
    try:
        for _ in range(CONSUMERS):
            ws.append(Worker(kind, route, sock, ray_addr))
        for w in ws:
            if w.conn.recv() != "ready":
                raise RuntimeError("consumer did not start")
        yield ws
    finally:
        for w in ws:
            w.stop()


# ------------------------------------------------------------------ producer

class Producer:
    def __init__(self, kind):
        self.kind = kind
        self.model = build(kind, PRODUCER_SEED)
        self.sd = self.model.state_dict()
        self.bytes = sum(v.numel() * v.element_size()
                         for v in self.sd.values())
        self.tensors = len(self.sd)
        self.sums = checksums(self.model)
        self.np = {k: v.numpy() for k, v in self.sd.items()}
        self.path = "/dev/shm/wb-bench-peers-%d-%s" % (os.getpid(), kind)
        self.paths = []
        self.ref = None
        self.shared = False

    def publish(self, route, client, run):
        """Makes a new version available by route; returns the consumer's
        argument and the seconds it took."""
        t = now()
        if route in ("wbroker", "wb-populate"):
            client.publish(self.kind, self.sd)
            arg = self.kind
        elif route == "torch-mmap":
            arg = self.new_path(run)
            torch.save(self.sd, arg)
        elif route == "safetensors":
            from safetensors.torch import save_file
            arg = self.new_path(run)
            save_file(self.sd, arg)
        elif route == "ray":
            import ray
            self.ref = None
            self.ref = ray.put(self.np)
            t1 = now()
            return ray_ref_out(self.ref), t1 - t
        else:
            if not self.shared:
                self.model.share_memory()
                self.shared = True
                return None, now() - t
            return None, None
        return arg, now() - t

    def new_path(self, run):
        """A new file per version: saving over the file a consumer maps
        would truncate it under the consumer (its old weights then fault
        with SIGBUS) and move the consumer's unmapping into the save."""
        path = "%s.%d" % (self.path, run)
        self.paths.append(path)
        return path

    def withdraw(self, route, client):
        if route in ("wbroker", "wb-populate"):
            client.drop(self.kind)
        elif route in ("torch-mmap", "safetensors"):
            self.remove_files()
        elif route == "ray":
            self.ref = None

    def remove_files(self):
        for path in self.paths:
            if os.path.exists(path):
                os.unlink(path)
        self.paths = []

    def fetch(self, w, route, arg):
        if route == "mp-queue":
            start = now()
            w.queue.put(self.sd)
            w.conn.send(("load", arg))
        else:
            start = now()
            w.conn.send(("load", arg))
        usable, resident = w.conn.recv()
        return usable - start, resident - start


def run_route(p, route, client, sock, ray_addr, runs):
    pub, usable, resident = [], [], []
    with workers(p.kind, route, sock, ray_addr) as ws:
        try:
            for i in range(runs):
                arg, s = p.publish(route, client, i)
                if s is not None:
                    pub.append(s)
                u, r = p.fetch(ws[0], route, arg)
                usable.append(u)
                resident.append(r if route != "wb-populate" else u)
                print("  %-13s %-11s run %d/%d: usable %s, resident %s" % (
                    p.kind, route, i + 1, runs, fmt_s(u), fmt_s(r)),
                    flush=True)
            for w in ws[1:]:
                p.fetch(w, route, arg)
            exact = all(w.call("sums") == p.sums for w in ws)
            if not exact:
                raise AssertionError("%s %s: weights differ" % (p.kind, route))
            pss = [w.call("pss") for w in ws]
        finally:
            p.withdraw(route, client)
    net = sum(after - idle for idle, after in pss)
    return {"publish": pub, "usable": usable, "resident": resident,
            "net": net, "exact": exact}


# ------------------------------------------------------------------ report

def fmt_s(s):
    return "%.1f ms" % (s * 1e3) if s < 1 else "%.2f s" % s


def fmt_bytes(n):
    return "%.2f GiB" % (n / GIB) if n >= GIB else "%.0f MiB" % (n / 2**20)


def med(v):
    return statistics.median(v)


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


def report(producers, res, runs, pages):
    print("\nSecond, already running process (model built before timing), "
          "median of %d (range); ratios: route / wbroker (load_into); "
          "memory: sum of Pss of %d consumers net of their start-up Pss; "
          "segments: %s.\n" % (runs, CONSUMERS, pages))
    for k, p in producers.items():
        r = res[k]
        base = r["wbroker"]
        print("%s: %s, %d tensors\n" % (k, fmt_bytes(p.bytes), p.tensors))
        rows = []
        for route in ROUTES:
            x = r[route]
            rows.append([
                route,
                "%s (%.1fx)" % (fmt_s(med(x["usable"])),
                                med(x["usable"]) / med(base["usable"])),
                "%s (%.1fx)" % (fmt_s(med(x["resident"])),
                                med(x["resident"]) / med(base["resident"])),
                "%s (%.1fx)" % (fmt_s(med(x["publish"])),
                                med(x["publish"]) / med(base["publish"])),
                "%s = %.2f copies" % (fmt_bytes(max(x["net"], 0)),
                                      x["net"] / p.bytes),
                "yes" if x["exact"] else "NO"])
        table(["route", "usable", "resident", "publish",
               "%d consumers (Pss net)" % CONSUMERS, "bit-exact"], rows)
        peers = [rt for rt in ROUTES if not rt.startswith("w")]
        best = min(peers, key=lambda rt: med(r[rt]["resident"]))
        wbr = min(med(r["wbroker"]["resident"]),
                  med(r["wb-populate"]["resident"]))
        print("%s: best peer to resident %s %s = %.1fx wbroker's best %s; "
              "torch.save / wbroker publish %.1fx; wbroker %d consumers %.2f "
              "copies.\n" % (
                  k, best, fmt_s(med(r[best]["resident"])),
                  med(r[best]["resident"]) / wbr, fmt_s(wbr),
                  med(r["torch-mmap"]["publish"]) /
                  med(r["wbroker"]["publish"]), CONSUMERS,
                  r["wbroker"]["net"] / p.bytes))


@contextlib.contextmanager
def thp_setting(wanted):
    """Sets shmem THP to within_size for the run if it is off, as root."""
    if not wanted:
        yield "4 KiB (--huge-pages off)"
        return
    with open(THP) as f:
        old = f.read().split("[")[1].split("]")[0]
    changed = False
    if old in ("never", "deny"):
        if os.geteuid() != 0:
            raise SystemExit("shmem THP is %s and this is not root" % old)
        with open(THP, "w") as f:
            f.write("within_size")
        changed = True
    try:
        yield "THP (--huge-pages thp, shmem_enabled %s)" % (
            "within_size" if changed else old)
    finally:
        if changed:
            with open(THP, "w") as f:
                f.write(old)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="ResNet-50 only, one run")
    ap.add_argument("--models", default=None,
                    help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument("--huge-pages", choices=("off", "thp"), default="off")
    args = ap.parse_args()
    kinds = (args.models or ("resnet50" if args.quick else
                             ",".join(MODELS))).split(",")
    for k in kinds:
        if k not in MODELS:
            ap.error("unknown model %r" % k)
    runs = 1 if args.quick else RUNS
    import ray
    tmpdir = tempfile.mkdtemp(prefix="wb-bench-peers-")
    producers, res = {}, {}
    t0 = now()
    with thp_setting(args.huge_pages == "thp") as pages:
        daemon = Daemon(tmpdir, ("--memory-limit", MEMORY_LIMIT,
                                 "--huge-pages", args.huge_pages), "info")
        rc = None
        try:
            ctx = ray.init(num_cpus=1, object_store_memory=RAY_STORE,
                           include_dashboard=False, log_to_driver=False,
                           logging_level="ERROR")
            ray_addr = ctx.address_info["address"]
            with wbroker.connect(daemon.socket) as client:
                for k in kinds:
                    print("%s: building the producer's model" % k, flush=True)
                    p = producers[k] = Producer(k)
                    res[k] = {}
                    for route in ROUTES:
                        res[k][route] = run_route(p, route, client,
                                                  daemon.socket, ray_addr,
                                                  runs)
                    p.model = p.sd = p.np = None
                    gc.collect()
            report(producers, res, runs, pages)
            print("whole run %s" % fmt_s(now() - t0))
        finally:
            ray.shutdown()
            rc = daemon.stop()
            for p in producers.values():
                p.remove_files()
            shutil.rmtree(tmpdir, ignore_errors=True)
    if rc != 0:
        print("wbrokerd exited with %r" % rc, file=sys.stderr)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
