"""publish.py -- Publishes a test model from its own process.

    publish.py KIND NAME SEED OUTDIR [DTYPE]

Builds wb_models.build(KIND, SEED) (cast to DTYPE if given), publishes it
as NAME to the daemon at $WBROKER_SOCKET, and saves into OUTDIR the source
state_dict (source.pt) and its output on the fixed input (output.pt).
Prints the version number."""
import os
import sys

import torch

import wb_models
import wbroker


def main():
    kind, name, seed, outdir = sys.argv[1:5]
    model = wb_models.build(kind, int(seed))
    if len(sys.argv) > 5:
        model = model.to(getattr(torch, sys.argv[5]))
    with torch.no_grad():
        x = wb_models.fixed_input(kind)
        if x.is_floating_point():
            x = x.to(next(model.parameters()).dtype)
        out = model(x)
    torch.save(model.state_dict(), os.path.join(outdir, "source.pt"))
    torch.save(out, os.path.join(outdir, "output.pt"))
    with wbroker.connect() as c:
        v = c.publish(name, model, metadata={"kind": kind, "seed": seed})
    print(v)


if __name__ == "__main__":
    main()
