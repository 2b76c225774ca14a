"""trainer.py -- trains a small model and publishes its weights every N steps.

    python3 examples/trainer.py [--socket PATH] [--model NAME]
                                [--steps 200] [--every 50] [--seed 0]

A classifier (a two-layer backbone and a head) learns a fixed labelling of
random inputs.  Every --every steps, and after the last one, its
state_dict goes to wbrokerd as the next version of --model, with the step
and the loss as metadata; inference servers on the host map each new
version without a copy (c.load_into(model, NAME), `wbroker watch NAME`),
and examples/finetune.py takes its backbone into another model.  Without
--socket the socket is $WBROKER_SOCKET, else the default path.

From a checkout: PYTHONPATH=client/python WBROKER_LIB=build/libwbroker.so;
with the wheel installed (`make wheel`, pip install), nothing.
"""
import argparse
import sys

import torch

import wbroker

D_IN, HIDDEN, CLASSES = 32, 64, 10


class Net(torch.nn.Module):
    """Keys: backbone.0.*, backbone.2.* (the features), head.*."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(
            torch.nn.Linear(D_IN, HIDDEN), torch.nn.ReLU(),
            torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU())
        self.head = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):
        return self.head(self.backbone(x))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", help="wbrokerd's socket (default: "
                    "$WBROKER_SOCKET, else the default path)")
    ap.add_argument("--model", default="trainer", help="model name")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=50,
                    help="publish every N steps")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.steps < 1 or args.every < 1:
        ap.error("--steps and --every must be at least 1")

    torch.manual_seed(args.seed)
    data = torch.randn(512, D_IN)
    labels = torch.randint(0, CLASSES, (512,))
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)

    try:
        client = wbroker.connect(args.socket)
    except ConnectionError as e:
        sys.exit("trainer: %s" % e)
    with client as c:
        for step in range(1, args.steps + 1):
            batch = torch.randint(0, len(data), (64,))
            loss = torch.nn.functional.cross_entropy(net(data[batch]),
                                                     labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % args.every == 0 or step == args.steps:
                version = c.publish(args.model, net, metadata={
                    "step": str(step), "loss": "%.4f" % loss.item()})
                print("step %d: loss %.4f, published %s@%d (%d tensors)"
                      % (step, loss.item(), args.model, version,
                         len(net.state_dict())), flush=True)


if __name__ == "__main__":
    main()
