"""wb_models.py -- Models shared by the Python tests and their helper
processes, built the same way (same seed, same layers) on both sides."""
import torch
from torch import nn

INPUT_SEED = 1234


class Net(nn.Module):
    """Two linear layers with a batch norm between them (buffers too)."""

    def __init__(self, hidden=16, out=4):
        super().__init__()
        self.linear1 = nn.Linear(8, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.linear2 = nn.Linear(hidden, out)

    def forward(self, x):
        return self.linear2(torch.relu(self.bn(self.linear1(x))))


class PartialNet(nn.Module):
    """Shares only linear1 with Net; its head has another name and shape."""

    def __init__(self):
        super().__init__()
        self.linear1 = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.relu(self.linear1(x)))


class LayerNet(nn.Module):
    """Net's architecture under the names layer1, layer2."""

    def __init__(self):
        super().__init__()
        self.layer1 = nn.Linear(8, 16)
        self.layer2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.layer2(torch.relu(self.layer1(x)))


class FcNet(nn.Module):
    """LayerNet with the layers called fc1, fc2."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class TiedNet(nn.Module):
    """An embedding whose weight is also the output head's (tied)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.proj = nn.Linear(6, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx):
        return self.head(torch.tanh(self.proj(self.embed(idx))))


class Block(nn.Module):
    """A residual block: conv, batch norm, relu, conv, batch norm, plus
    the input."""

    def __init__(self, ch):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class SmallResNet(nn.Module):
    """A ResNet-style model: a stem, two residual blocks, a linear head;
    five batch norms."""

    def __init__(self, ch=8, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.layer1 = nn.Sequential(Block(ch), Block(ch))
        self.fc = nn.Linear(ch, classes)

    def forward(self, x):
        x = self.layer1(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def build(kind, seed):
    """The model `kind` with weights from `seed`, in eval mode."""
    torch.manual_seed(seed)
    if kind == "net":
        m = Net()
        # Non-trivial running statistics for the batch norm buffers.
        m.train()
        m(torch.randn(32, 8))
    elif kind == "net_wide":
        m = Net(hidden=24)
    elif kind == "partial":
        m = PartialNet()
    elif kind == "layer":
        m = LayerNet()
    elif kind == "fc":
        m = FcNet()
    elif kind == "dp":
        torch.manual_seed(seed)
        m = nn.DataParallel(Net())
        m.train()
        m(torch.randn(32, 8))
    elif kind == "tied":
        m = TiedNet()
    elif kind == "smallresnet":
        m = SmallResNet()
        # Running statistics and num_batches_tracked other than the defaults.
        m.train()
        for _ in range(3):
            m(torch.randn(4, 3, 8, 8))
    elif kind == "resnet18":
        import torchvision
        m = torchvision.models.resnet18(weights=None)
    else:
        raise ValueError(kind)
    return m.eval()


def fixed_input(kind):
    """The input every test feeds a model of `kind`."""
    g = torch.Generator().manual_seed(INPUT_SEED)
    if kind == "tied":
        return torch.randint(0, 10, (7,), generator=g)
    if kind == "resnet18":
        return torch.randn(2, 3, 64, 64, generator=g)
    if kind == "smallresnet":
        return torch.randn(2, 3, 8, 8, generator=g)
    return torch.randn(5, 8, generator=g)
