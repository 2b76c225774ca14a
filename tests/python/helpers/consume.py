"""consume.py -- Loads a published test model in its own process and checks
it against a saved state_dict.

    consume.py KIND NAME SEED EXPECTED.pt

Builds wb_models.build(KIND, SEED), loads NAME from the daemon at
$WBROKER_SOCKET into it and exits 0 if every tensor equals the one in
EXPECTED.pt, 1 (naming the keys) otherwise."""
import sys

import torch

import wb_models
import wbroker


def main():
    kind, name, seed, expected = sys.argv[1:5]
    model = wb_models.build(kind, int(seed))
    with wbroker.connect() as c:
        c.load_into(model, name)
    want = torch.load(expected)
    bad = [k for k, v in model.state_dict().items()
           if not torch.equal(v, want[k])]
    if bad:
        print("differ: " + ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
