"""follow_trainer.py -- Publishes versions of a small model whose every
tensor holds its version number, for the follow tests.

    follow_trainer.py NAME FIRST LAST [--every SECONDS] [--bad V]

Publishes NAME@FIRST..NAME@LAST to the daemon at $WBROKER_SOCKET (exits 1
if the daemon numbers a version otherwise), every tensor of version v
filled with v; --bad V gives version V another shape for fc1.weight, which
a follower of Net cannot load.  Prints one line per version.
"""
import argparse
import time

import torch

import wbroker


class Net(torch.nn.Module):
    """Two linear layers and a buffer: the follow tests' model."""

    def __init__(self, hidden=16):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, hidden)
        self.fc2 = torch.nn.Linear(hidden, 4)
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x):
        return self.fc2(self.fc1(x)) * self.scale


def filled(value, hidden=16):
    """A Net whose every tensor holds value."""
    net = Net(hidden)
    with torch.no_grad():
        for t in net.state_dict().values():
            t.fill_(value)
    return net


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("first", type=int)
    ap.add_argument("last", type=int)
    ap.add_argument("--every", type=float, default=0.0)
    ap.add_argument("--bad", type=int, default=0)
    args = ap.parse_args()
    with wbroker.connect() as c:
        for v in range(args.first, args.last + 1):
            net = filled(v, 24 if v == args.bad else 16)
            got = c.publish(args.name, net)
            print("published %s@%d" % (args.name, got), flush=True)
            if got != v:
                raise SystemExit("expected version %d, the daemon gave %d"
                                 % (v, got))
            if args.every:
                time.sleep(args.every)


if __name__ == "__main__":
    main()
