"""finetune.py -- takes the backbone of a published model into another
model under other names, then fine-tunes it.

    python3 examples/finetune.py [--socket PATH] [--source trainer]
                                 [--version N] [--steps 20]
                                 [--publish NAME]

The source is examples/trainer.py's model: backbone.0 and backbone.2 (two
Linear layers with a ReLU between them) and a 10-class head.  The target
is another architecture: its feature extractor is encoder.fc1 and
encoder.fc2, and it has a new 3-class head, classifier.  The rules move
the backbone across:

    prefix backbone. -> encoder.                  backbone.0.weight -> encoder.0.weight
    regex encoder\\.0\\.(.*) -> encoder.fc1.\\1      encoder.0.weight -> encoder.fc1.weight
    regex encoder\\.2\\.(.*) -> encoder.fc2.\\1

and strict=False lets the old head stay behind (unexpected keys) and the
new one keep its own initialisation (missing keys); the report says so.
The encoder then views the daemon's shared copy (copy-on-write: the
fine-tuning below changes only this process's pages, never the published
version), a few steps train it with the new head on a 3-class task, and
--publish NAME publishes the result.  Without --socket the socket is
$WBROKER_SOCKET, else the default path.
"""
import argparse
import sys

import torch

import wbroker

D_IN, HIDDEN, CLASSES = 32, 64, 3

RULES = r"""
# trainer.py's backbone is our encoder
prefix backbone. -> encoder.
regex encoder\.0\.(.*) -> encoder.fc1.\1
regex encoder\.2\.(.*) -> encoder.fc2.\1
"""


class Classifier(torch.nn.Module):
    """Keys: encoder.fc1.*, encoder.fc2.*, classifier.*."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.ModuleDict({
            "fc1": torch.nn.Linear(D_IN, HIDDEN),
            "fc2": torch.nn.Linear(HIDDEN, HIDDEN)})
        self.classifier = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):
        x = torch.relu(self.encoder["fc1"](x))
        x = torch.relu(self.encoder["fc2"](x))
        return self.classifier(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", help="wbrokerd's socket (default: "
                    "$WBROKER_SOCKET, else the default path)")
    ap.add_argument("--source", default="trainer",
                    help="the published model to take the backbone from")
    ap.add_argument("--version", type=int, default=None,
                    help="its version (default: the latest)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--publish", metavar="NAME",
                    help="publish the fine-tuned model as NAME")
    args = ap.parse_args()

    torch.manual_seed(1)
    net = Classifier()
    try:
        client = wbroker.connect(args.socket)
    except ConnectionError as e:
        sys.exit("finetune: %s" % e)
    with client as c:
        try:
            r = c.load_into(net, args.source, version=args.version,
                            rules=RULES, strict=False)
        except KeyError:
            sys.exit("finetune: no model %r (or no such version): run "
                     "examples/trainer.py first" % args.source)
        except wbroker.LoadError as e:
            sys.exit("finetune: %s" % e)
        print("loaded %s@%d into %s" % (args.source, r.version,
                                         type(net).__name__))
        print("  missing_keys:    %s" % r.missing_keys)
        print("  unexpected_keys: %s" % r.unexpected_keys)
        print("  mismatched_keys: %s" % r.mismatched_keys)
        print("  cast_keys:       %s" % r.cast_keys)
        print("  copied_keys:     %s" % r.copied_keys)

        # The encoder now holds exactly the source's backbone.
        source = c.state_dict(args.source, version=r.version)
        pairs = {"encoder.fc1.": "backbone.0.", "encoder.fc2.": "backbone.2."}
        taken = 0
        for key, t in net.state_dict().items():
            for new, old in pairs.items():
                if key.startswith(new):
                    same = torch.equal(t, source[old + key[len(new):]])
                    if not same:
                        sys.exit("finetune: %s differs from the source" % key)
                    taken += 1
        print("encoder: %d tensors taken from %s@%d"
              % (taken, args.source, r.version))

        # Fine-tune on a 3-class task: writes stay in this process.
        before = source["backbone.0.weight"].clone()
        data = torch.randn(256, D_IN)
        labels = (data[:, 0] > 0).long() + (data[:, 1] > 0).long()
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        for step in range(1, args.steps + 1):
            loss = torch.nn.functional.cross_entropy(net(data), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if args.steps:
            print("fine-tuned %d steps: loss %.4f" % (args.steps, loss.item()))
        # Copy-on-write: this process's encoder moved, the published
        # version (which source still views) did not.
        source = c.state_dict(args.source, version=r.version)
        print("encoder changed here: %s; %s@%d unchanged: %s"
              % (not torch.equal(net.encoder["fc1"].weight.detach(), before),
                 args.source, r.version,
                 torch.equal(source["backbone.0.weight"], before)))
        if args.publish:
            v = c.publish(args.publish, net, metadata={
                "from": "%s@%d" % (args.source, r.version)})
            print("published %s@%d" % (args.publish, v))


if __name__ == "__main__":
    main()
