"""bench_torch.py -- Time for a second process to get a model's weights, and
the memory of four consumers: wbroker's load_into() next to torch.save() +
torch.load() through /dev/shm and next to a torch.multiprocessing queue,
measured in the same run.

    WB_BUILD=build /usr/bin/python3 bench/bench_torch.py [--quick]
        [--models resnet50,transformer1g]

Models: torchvision's ResNet-50 and a transformer-like stack of about 1 GiB
of float32 (256 MiB with --quick), with seeded random weights; nothing is
downloaded.  This process is the producer.  Every consumer is a process of
its own (spawned), whose model is built, with other weights, before any
timing starts: model construction is excluded for every route alike.
Times are CLOCK_MONOTONIC, which all processes share, from the moment the
consumer is asked to load to the moment its load call has returned with
the weights in its model and what the call let go of is freed:

  wbroker  publish() (timed apart), then the consumer's load_into() over the
           connection it opened at start-up.  The tensors then view the
           daemon's shared memory, their pages not read yet; the call
           unmaps the previous version (on the first load, frees the
           model's own parameters).
  file     torch.save() to /dev/shm (timed apart), then the consumer's
           torch.load() + load_state_dict(), which frees the loaded
           state_dict; also shown with the save.
  queue    model.share_memory() once (timed apart), then from put() of the
           state_dict on a torch.multiprocessing queue to the consumer's
           get() + load_state_dict() having returned and dropped what it
           got.

Each route has one consumer per model that loads several times, a new
version (file) each time; the versions stay until the route's last run, as
a publisher keeps its recent ones.  Tables give the median and range.  A
second table goes on until the consumer has also read every weight once
(an exact checksum of every tensor's bits, which must equal the
producer's); the consumer's output on a fixed input must equal the
producer's bit for bit on each route's first load.  As a baseline, the
header gives this machine's cost of first touching fresh memory (what
torch.load() pays for its result) and of copying between touched buffers.

Memory: per route, four fresh consumers load the model one after another
and read every weight, then collect garbage; the table gives the sum of
their Pss (/proc/PID/smaps_rollup), that sum net of four idle consumers
(torch imported, connected, no model) measured the same way, and the net
sum as a multiple of the model's bytes; then the same after each process
called malloc_trim(0), which leaves out what was freed but kept in glibc's
heap.  load_state_dict() copies into each consumer's own parameters, so
the file and queue routes hold one copy per consumer.  A last line checks
the requirement's goals for the transformer: file/wbroker at least 50x,
four wbroker consumers one copy.

The daemon (from $WB_BUILD, default build) runs on a socket in a temporary
directory; it keeps versions in memfd segments, not in /dev/shm.  The
bench removes its torch.save() files and stops the daemon at the end.
"""
import argparse
import contextlib
import ctypes
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, os.environ.get("WB_BUILD", "build"))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
os.environ.setdefault("WBROKER_LIB", os.path.join(BUILD, "libwbroker.so"))

import wbroker  # noqa: E402
from wbt_daemon import Daemon  # noqa: E402

MODELS = ("resnet50", "transformer1g")
ROUTES = ("wbroker", "file", "queue")
RUNS = {"resnet50": 5, "transformer1g": 3}
QUICK_RUNS = {"resnet50": 3, "transformer1g": 2}
LAYERS, QUICK_LAYERS = 20, 4    # Transformer blocks of 48 MiB each.
WIDTH, VOCAB = 1024, 16384
PRODUCER_SEED, CONSUMER_SEED, INPUT_SEED = 1, 2, 1234
CONSUMERS = 4
MEMORY_LIMIT = "8G"             # Daemon: the runs' versions of 1 GiB.
GIB = 1 << 30
CTX = torch.multiprocessing.get_context("spawn")


def now():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# ------------------------------------------------------------------ models

class Block(nn.Module):
    """A pre-norm transformer block: single-head attention, an MLP of
    mlp x d (4 by default)."""

    def __init__(self, d, mlp=4):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.up = nn.Linear(d, mlp * d)
        self.down = nn.Linear(mlp * d, d)

    def forward(self, x):
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -1)
        x = x + self.out(att @ v)
        return x + self.down(torch.relu(self.up(self.ln2(x))))


class TransformerLike(nn.Module):
    """Token embedding, `layers` blocks of WIDTH (MLPs of mlp x WIDTH), a
    final norm."""

    def __init__(self, layers, mlp=4):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.Sequential(*(Block(WIDTH, mlp)
                                      for _ in range(layers)))
        self.norm = nn.LayerNorm(WIDTH)

    def forward(self, tokens):
        return self.norm(self.blocks(self.embed(tokens)))


def build(kind, quick, seed):
    """The model `kind` with weights from `seed`, in eval mode."""
    torch.manual_seed(seed)
    if kind == "resnet50":
        m = torchvision.models.resnet50(weights=None)
    elif kind == "transformer1g":
        m = TransformerLike(QUICK_LAYERS if quick else LAYERS)
    else:
        raise ValueError(kind)
    return m.eval()


def forward(model, kind):
    """The model's output on the fixed input of `kind`, as bytes."""
    g = torch.Generator().manual_seed(INPUT_SEED)
    if kind == "resnet50":
        x = torch.randn(1, 3, 64, 64, generator=g)
    else:
        x = torch.randint(0, VOCAB, (1, 16), generator=g)
    with torch.no_grad():
        return model(x).numpy().tobytes()


def checksums(model):
    """Per tensor, the sum modulo 2**32 of its bytes read as uint32 (as
    uint8 if their number is not a multiple of 4): exact, independent of
    summation order, and as fast as reading.  Reads every weight."""
    out = {}
    for k, t in model.state_dict().items():
        a = t.detach().reshape(-1).numpy()
        a = a.view(np.uint32 if a.nbytes % 4 == 0 else np.uint8)
        out[k] = int(a.sum(dtype=np.uint32))
    return out


# ------------------------------------------------------------------ consumer

class Consumer:
    """The consumer side: a model built at start-up, a connection to the
    daemon, a queue, one load method per route, and the requests the
    producer sends (load, trim)."""

    def __init__(self, kind, quick, sock, queue):
        self.kind = kind
        self.model = build(kind, quick, CONSUMER_SEED) if kind else None
        self.client = wbroker.connect(sock)
        self.queue = queue

    def load_wbroker(self, name):
        r = self.client.load_into(self.model, name)
        if r.copied_keys:
            raise AssertionError("load_into copied %s" % r.copied_keys)

    def load_file(self, path):
        self.model.load_state_dict(torch.load(path))

    def load_queue(self, _):
        self.model.load_state_dict(self.queue.get())

    def load(self, route, arg, want_output):
        """Loads by route, then reads every weight.  Returns the times the
        load returned and the reading ended, the checksums, and the output
        on the fixed input if wanted."""
        getattr(self, "load_" + route)(arg)
        loaded = now()
        sums = checksums(self.model)
        read = now()
        output = forward(self.model, self.kind) if want_output else None
        gc.collect()
        return loaded, read, sums, output

    def trim(self):
        """Gives the heap's free memory back to the kernel."""
        gc.collect()
        ctypes.CDLL(None).malloc_trim(0)


def consumer_main(kind, quick, sock, queue, conn):
    """A consumer process: builds its model (none for kind None), says it
    is ready, then answers (method, *args) requests until None."""
    c = Consumer(kind, quick, sock, queue)
    conn.send("ready")
    for method, *args in iter(conn.recv, None):
        conn.send(getattr(c, method)(*args))


class Worker:
    """A consumer process seen from the producer: its pipe and queue."""

    def __init__(self, kind, quick, sock):
        self.queue = CTX.Queue()
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=consumer_main, daemon=True,
                                args=(kind, quick, sock, self.queue, child))
        self.proc.start()
        child.close()

    def wait_ready(self):
        if self.conn.recv() != "ready":
            raise RuntimeError("consumer %d did not start" % self.proc.pid)

    def ask(self, route, arg, want_output):
        """Asks for a load; returns the time of asking."""
        t = now()
        self.conn.send(("load", route, arg, want_output))
        return t

    def answer(self):
        """The answer to the last request."""
        return self.conn.recv()

    def trim(self):
        self.conn.send(("trim",))
        self.answer()

    def pss(self):
        """Pss of the process, in bytes."""
        with open("/proc/%d/smaps_rollup" % self.proc.pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no Pss in smaps_rollup")

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
        self.queue.cancel_join_thread()     # Nobody reads it any more.
        self.queue.close()


@contextlib.contextmanager
def workers(n, kind, quick, sock):
    """n consumer processes, started together, ready, stopped on exit."""
    ws = []
    try:
        for _ in range(n):
            ws.append(Worker(kind, quick, sock))
        for w in ws:
            w.wait_ready()
        yield ws
    finally:
        for w in ws:
            w.stop()


# ------------------------------------------------------------------ producer

class Producer:
    """The producer's model, its checksums and output, its state_dict
    moved into shared memory for the queue route (timed)."""

    def __init__(self, kind, quick):
        self.kind = kind
        self.model = build(kind, quick, PRODUCER_SEED)
        t = now()
        self.model.share_memory()
        self.share_s = now() - t
        self.sd = self.model.state_dict()
        self.bytes = sum(v.numel() * v.element_size()
                         for v in self.sd.values())
        self.tensors = len(self.sd)
        self.sums = checksums(self.model)
        self.output = forward(self.model, kind)
        self.path = os.path.join("/dev/shm", "wb-bench-torch-%d-%s.pt"
                                 % (os.getpid(), kind))

    def offer(self, route, client):
        """Makes the weights available by route (publish, save; nothing
        for the queue).  Returns the consumer's argument and the seconds
        it took."""
        t = now()
        if route == "wbroker":
            client.publish(self.kind, self.sd)
            arg = self.kind
        elif route == "file":
            torch.save(self.sd, self.path)
            arg = self.path
        else:
            arg = None
        return arg, now() - t

    def withdraw(self, route, client):
        """Undoes offer(): drops the versions, removes the file."""
        if route == "wbroker":
            client.drop(self.kind)
        elif route == "file":
            os.unlink(self.path)

    def fetch(self, w, route, arg, first):
        """Has consumer w load by route and checks what it got.  Returns
        the seconds from asking (queue: from put) to the weights being in
        its model, and to every weight having been read."""
        if route == "queue":
            start = now()
            w.queue.put(self.sd)
            w.ask(route, arg, first)
        else:
            start = w.ask(route, arg, first)
        loaded, read, sums, output = w.answer()
        if sums != self.sums:
            bad = [k for k in sums if sums[k] != self.sums.get(k)]
            raise AssertionError("%s: %s: consumer's weights differ: %s"
                                 % (self.kind, route, bad[:5]))
        if first and output != self.output:
            raise AssertionError("%s: %s: consumer's output differs"
                                 % (self.kind, route))
        return loaded - start, read - start


# ------------------------------------------------------------------ runs

def time_routes(p, client, sock, quick, runs):
    """Per route, `runs` loads by one consumer: a list per route of
    {offer, load, read} seconds (offer: publish or save).  The versions
    (the file) stay until the route's last run, as a publisher keeps its
    recent versions."""
    out = {}
    for route in ROUTES:
        out[route] = []
        with workers(1, p.kind, quick, sock) as (w,):
            try:
                for i in range(runs):
                    arg, offer_s = p.offer(route, client)
                    load_s, read_s = p.fetch(w, route, arg, i == 0)
                    out[route].append({"offer": offer_s, "load": load_s,
                                       "read": read_s})
                    print("  %-13s %-7s run %d/%d: load %s, read %s" % (
                        p.kind, route, i + 1, runs, fmt_s(load_s),
                        fmt_s(read_s)), flush=True)
            finally:
                p.withdraw(route, client)
    return out


def pss_sums(ws):
    """The sum of the workers' Pss as they are, and after malloc_trim()."""
    raw = sum(w.pss() for w in ws)
    for w in ws:
        w.trim()
    return raw, sum(w.pss() for w in ws)


def idle_pss(sock, quick):
    """pss_sums() of CONSUMERS idle consumers (no model)."""
    with workers(CONSUMERS, None, quick, sock) as ws:
        return pss_sums(ws)


def route_pss(p, client, sock, quick):
    """Per route, pss_sums() of CONSUMERS consumers that each loaded the
    model and read every weight."""
    out = {}
    for route in ROUTES:
        with workers(CONSUMERS, p.kind, quick, sock) as ws:
            arg, _ = p.offer(route, client)
            try:
                for w in ws:
                    p.fetch(w, route, arg, False)
            finally:
                p.withdraw(route, client)
            out[route] = pss_sums(ws)
        print("  %-13s %-7s %d consumers: sum of Pss %s, after malloc_trim "
              "%s" % (p.kind, route, CONSUMERS, fmt_gib(out[route][0]),
                      fmt_gib(out[route][1])), flush=True)
    return out


def page_baseline():
    """Seconds per GiB to allocate and first touch anonymous memory, and
    to copy between buffers already touched, in this process (256 MiB)."""
    n = 64 << 20                # float32 elements
    t = now()
    a = torch.ones(n)
    fresh = now() - t
    b = torch.ones(n)
    t = now()
    b.copy_(a)
    copy = now() - t
    scale = GIB / (4 * n)
    return fresh * scale, copy * scale


# ------------------------------------------------------------------ report

def fmt_s(s):
    return "%.1f ms" % (s * 1e3) if s < 1 else "%.2f s" % s


def fmt_gib(n):
    return "%.2f GiB" % (n / GIB)


def fmt_bytes(n):
    return fmt_gib(n) if n >= GIB else "%.1f MiB" % (n / 2**20)


def fmt_runs(values):
    """Median, then the range: "21.9 ms (19.6 ms-22.4 ms)"."""
    return "%s (%s-%s)" % (fmt_s(statistics.median(values)),
                           fmt_s(min(values)), fmt_s(max(values)))


def column(runs, key):
    return [r[key] for r in runs]


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


def report(producers, times, memory, idle, baseline):
    print("\nConsumers are separate spawned processes whose models were "
          "built before timing (construction excluded for every route); "
          "%s runs per route; median (min-max); CLOCK_MONOTONIC.  Baseline "
          "in this run: first touch of fresh anonymous memory %s per GiB, "
          "copy between touched buffers %s per GiB.\n" % (
              ", ".join("%d (%s)" % (len(times[k]["wbroker"]), k)
                        for k in times),
              fmt_s(baseline[0]), fmt_s(baseline[1])))
    print("Time from asking the consumer (queue: from put) until the weights "
          "are in its model:\n")
    rows = []
    for k, p in producers.items():
        t = times[k]
        wb, fl, q = (column(t[r], "load") for r in ROUTES)
        full = [r["offer"] + r["load"] for r in t["file"]]
        med = [statistics.median(v) for v in (wb, fl, full, q)]
        rows.append([k, fmt_bytes(p.bytes), str(p.tensors), fmt_runs(wb),
                     fmt_runs(fl), fmt_runs(full), fmt_runs(q)] +
                    ["%.0fx" % (m / med[0]) for m in med[1:]])
    table(["model", "bytes", "tensors", "wbroker load_into",
           "torch.load+load_state_dict (/dev/shm)",
           "torch.save+load+load_state_dict", "mp queue put→loaded",
           "file/wbroker", "file incl. save/wbroker", "queue/wbroker"], rows)

    print("Same, until the consumer has also read every weight once "
          "(checksum of all tensors):\n")
    rows = []
    for k in producers:
        wb, fl, q = (column(times[k][r], "read") for r in ROUTES)
        med = [statistics.median(v) for v in (wb, fl, q)]
        rows.append([k, fmt_runs(wb), fmt_runs(fl), fmt_runs(q)] +
                    ["%.1fx" % (m / med[0]) for m in med[1:]])
    table(["model", "wbroker", "file", "mp queue", "file/wbroker",
           "queue/wbroker"], rows)

    print("Producer side (not in the times above):\n")
    table(["model", "wbroker publish", "torch.save to /dev/shm",
           "share_memory() (once)"],
          [[k, fmt_runs(column(times[k]["wbroker"], "offer")),
            fmt_runs(column(times[k]["file"], "offer")), fmt_s(p.share_s)]
           for k, p in producers.items()])

    print("Memory of %d consumers that loaded the model and read every weight "
          "(sum of Pss; net: less that of %d idle consumers with torch "
          "imported, %s, or %s after malloc_trim; copies: net / model bytes)."
          "  The columns after malloc_trim(0) leave out memory the consumers "
          "freed (their models' own parameters, load temporaries) but glibc "
          "kept in the heap:\n" % (CONSUMERS, CONSUMERS, fmt_gib(idle[0]),
                                     fmt_gib(idle[1])))
    rows = []
    for k, p in producers.items():
        for route in ROUTES:
            row = [k, route]
            for pss, base in zip(memory[k][route], idle):
                row += [fmt_gib(pss), fmt_gib(pss - base),
                        "%.2f" % ((pss - base) / p.bytes)]
            rows.append(row)
    table(["model", "route", "%d consumers sum PSS" % CONSUMERS, "net",
           "copies", "sum PSS after malloc_trim", "net", "copies"], rows)
    if "transformer1g" in producers:
        goals(producers["transformer1g"], times["transformer1g"],
              memory["transformer1g"], idle)


def goals(p, t, memory, idle):
    """The requirement's goals for the transformer: wbroker at least 50
    times faster than the file route, four consumers costing one copy
    (taken as at most 1.05 copies net)."""
    ratio = (statistics.median(column(t["file"], "load")) /
             statistics.median(column(t["wbroker"], "load")))
    copies = (memory["wbroker"][0] - idle[0]) / p.bytes
    print("Goals (transformer1g, %s): file/wbroker %.0fx, goal 50x: %s; "
          "%d wbroker consumers %.2f copies, goal 1: %s." % (
              fmt_bytes(p.bytes), ratio, "met" if ratio >= 50 else "NOT met",
              CONSUMERS, copies, "met" if copies <= 1.05 else "NOT met"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="256 MiB transformer, fewer runs")
    ap.add_argument("--models", default=",".join(MODELS),
                    help="comma-separated subset of " + ",".join(MODELS))
    args = ap.parse_args()
    kinds = args.models.split(",")
    for k in kinds:
        if k not in MODELS:
            ap.error("unknown model %r" % k)
    runs = QUICK_RUNS if args.quick else RUNS
    tmpdir = tempfile.mkdtemp(prefix="wb-bench-torch-")
    daemon = Daemon(tmpdir, ("--memory-limit", MEMORY_LIMIT), "info")
    producers, times, memory = {}, {}, {}
    try:
        with wbroker.connect(daemon.socket) as client:
            baseline = page_baseline()
            idle = idle_pss(daemon.socket, args.quick)
            for k in kinds:
                print("%s: building the producer's model" % k, flush=True)
                p = producers[k] = Producer(k, args.quick)
                times[k] = time_routes(p, client, daemon.socket, args.quick,
                                       runs[k])
                memory[k] = route_pss(p, client, daemon.socket, args.quick)
                p.model = p.sd = None       # Free before the next model.
                gc.collect()
        report(producers, times, memory, idle, baseline)
    finally:
        rc = daemon.stop()
        if rc != 0:
            with open(daemon.log) as f:
                print("wbrokerd exited with %r:\n%s" % (rc, f.read()[-4000:]),
                      file=sys.stderr)
        for p in producers.values():
            if os.path.exists(p.path):
                os.unlink(p.path)
        shutil.rmtree(tmpdir, ignore_errors=True)
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
