"""server.py -- an inference server that follows what trainer.py publishes.

    python3 examples/server.py [--socket PATH] [--model NAME]
                               [--until VERSION] [--seconds 60]

Builds trainer.py's Net and keeps it on the newest version of --model
(default trainer) with c.follow(): a background thread loads each new
version completely, then switches all the weights inside the same lock
that the serving loop below holds for each batch, so that no batch is ever
answered by a mix of two versions; the version left behind is released.
The loop answers batches of random inputs and prints a line each time the
version it serves changes, then stops once it serves --until (or after
--seconds).  Run it beside `python3 examples/trainer.py --every 50`.
"""
import argparse
import os
import sys
import threading
import time

import torch

import wbroker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer import D_IN, Net  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", help="wbrokerd's socket (default: "
                    "$WBROKER_SOCKET, else the default path)")
    ap.add_argument("--model", default="trainer", help="model to follow")
    ap.add_argument("--until", type=int, default=0,
                    help="stop once serving this version (0: never)")
    ap.add_argument("--seconds", type=float, default=60.0,
                    help="stop after this long")
    args = ap.parse_args()

    net = Net().eval()
    lock = threading.Lock()
    try:
        client = wbroker.connect(args.socket)
    except ConnectionError as e:
        sys.exit("server: %s" % e)
    with client as c, c.follow(net, args.model, lock=lock) as f:
        print("following %s" % args.model, flush=True)
        serving, batches = None, 0
        deadline = time.monotonic() + args.seconds
        x = torch.randn(16, D_IN)
        while time.monotonic() < deadline:
            with lock, torch.no_grad():     # One version for the batch.
                version = f.version
                classes = net(x).argmax(dim=1)
            batches += 1
            if version != serving:
                serving = version
                print("serving %s@%d (batch %d, classes %s)"
                      % (args.model, version, batches,
                         classes[:4].tolist()), flush=True)
            if args.until and version >= args.until:
                break
            if not version:     # Nothing published yet: wait for it.
                f.wait(timeout=max(0.0, deadline - time.monotonic()))
        print("answered %d batches, last on %s@%d"
              % (batches, args.model, serving or 0), flush=True)
        if args.until and (serving or 0) < args.until:
            sys.exit("server: %s@%d never came" % (args.model, args.until))


if __name__ == "__main__":
    main()
