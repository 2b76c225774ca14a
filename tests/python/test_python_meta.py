"""load_into() on models built on the meta device: every matched parameter
and buffer becomes a view of the shared memory without being allocated
first (as load_state_dict(assign=True) would make it), Parameters and their
subclasses keep their class and requires_grad, ties stay ties, a target left
on meta is reported missing, and a forward pass then works.  Models are
built with device="meta" arguments (torch 1.13 and 2.x) and, on 2.x, under
`with torch.device("meta")`."""
import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "helpers"))
import wb_proc  # noqa: E402
import wbroker  # noqa: E402

HAS_DEVICE_CONTEXT = hasattr(torch.device, "__enter__")


class Tagged(torch.nn.Parameter):
    """A Parameter subclass, as quantization and sharding libraries make."""


class Net(torch.nn.Module):
    """Embedding, a Linear, a BatchNorm and a head tied to the embedding."""

    def __init__(self, device=None):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 6, device=device)
        self.fc = torch.nn.Linear(6, 6, device=device)
        self.norm = torch.nn.BatchNorm1d(6, device=device)
        self.head = torch.nn.Linear(6, 10, bias=False, device=device)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.norm(self.fc(self.embed(ids))))


IDS = torch.tensor([1, 2, 3, 4])


def source():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.norm.running_mean.uniform_()
        net.norm.running_var.uniform_(0.5, 2)
    return net.eval()


def builders():
    out = [("device-argument", lambda: Net(device="meta"))]
    if HAS_DEVICE_CONTEXT:
        def under_context():
            with torch.device("meta"):
                return Net()
        out.append(("device-context", under_context))
    return out


BUILDERS = builders()


def assert_mapped(model):
    ranges = wb_proc.memfd_ranges()
    for k, t in model.state_dict().items():
        assert t.device.type == "cpu", k
        assert wb_proc.in_memfd(t.data_ptr(), ranges), k


# Every tensor of a meta model becomes a zero-copy view; the forward pass
# is the source's bit for bit; classes, requires_grad and ties are kept.
@pytest.mark.parametrize("build", [b for _, b in BUILDERS],
                         ids=[n for n, _ in BUILDERS])
def test_meta_model_load_into(daemon, build):
    src = source()
    dst = build()
    dst.fc.weight = Tagged(dst.fc.weight.detach())
    dst.fc.bias.requires_grad_(False)
    assert dst.fc.weight.device.type == "meta"
    with wbroker.connect(daemon.socket) as c, warnings.catch_warnings():
        warnings.simplefilter("error")
        c.publish("net", src)
        r = c.load_into(dst, "net")
    assert (r.missing_keys, r.unexpected_keys, r.copied_keys) == ([], [], [])
    assert_mapped(dst)
    assert type(dst.fc.weight) is Tagged and dst.fc.weight.requires_grad
    assert type(dst.fc.bias) is torch.nn.Parameter
    assert not dst.fc.bias.requires_grad
    assert dst.embed.weight.requires_grad
    assert dst.head.weight is dst.embed.weight
    assert type(dst.norm.running_mean) is torch.Tensor
    assert torch.equal(dst.norm.num_batches_tracked,
                       src.norm.num_batches_tracked)
    assert [n for n, _ in dst.named_parameters()] == \
        [n for n, _ in src.named_parameters()]
    with torch.no_grad():
        assert torch.equal(dst.eval()(IDS), src(IDS))
    # Training works on the views: writes stay private (copy-on-write).
    loss = dst.train()(IDS).sum()
    loss.backward()
    assert dst.fc.weight.grad is not None
    with torch.no_grad():
        dst.fc.weight.add_(1)
    with wbroker.connect(daemon.socket) as c:
        fresh = c.state_dict("net")
    assert torch.equal(fresh["fc.weight"], src.fc.weight)


# strict=False: what the checkpoint lacks stays on meta and is reported
# missing; strict=True fails and leaves the model on meta, untouched.
def test_meta_model_partial(daemon):
    src = source()
    with wbroker.connect(daemon.socket) as c:
        c.publish("part", {k: v for k, v in src.state_dict().items()
                           if not k.startswith("fc.")})
        dst = Net(device="meta")
        with pytest.raises(wbroker.LoadError) as e:
            c.load_into(dst, "part")
        assert e.value.result.missing_keys == ["fc.weight", "fc.bias"]
        assert all(t.device.type == "meta"
                   for t in dst.state_dict().values())
        r = c.load_into(dst, "part", strict=False)
    assert r.missing_keys == ["fc.weight", "fc.bias"]
    assert dst.fc.weight.device.type == "meta"
    assert dst.embed.weight.device.type == "cpu"
    assert dst.head.weight is dst.embed.weight


# A BatchNorm's num_batches_tracked that the checkpoint lacks (and that
# torch would fill) is filled on a meta model too, without the mapping.
def test_meta_model_batchnorm_fill(daemon):
    src = source()
    sd = {k: v for k, v in src.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    with wbroker.connect(daemon.socket) as c:
        c.publish("nbt", sd)
        dst = Net(device="meta")
        r = c.load_into(dst, "nbt")
    want = Net().load_state_dict(sd, strict=False)
    assert r.missing_keys == list(want.missing_keys) == []
    assert dst.norm.num_batches_tracked.device.type == "cpu"
    assert int(dst.norm.num_batches_tracked) == 0
    with torch.no_grad():
        assert torch.equal(dst.eval()(IDS), src(IDS))


# A tied source into untied meta targets: each target gets the weights,
# the second a private copy, so the load ties nothing.
def test_meta_model_untied_targets(daemon):
    src = source()

    class Untied(Net):
        def __init__(self, device=None):
            super().__init__(device)
            self.head.weight = torch.nn.Parameter(
                torch.empty(10, 6, device=device))
    with wbroker.connect(daemon.socket) as c:
        c.publish("tied", src)
        dst = Untied(device="meta")
        r = c.load_into(dst, "tied")
    assert r.missing_keys == []
    assert dst.head.weight is not dst.embed.weight
    assert dst.head.weight.data_ptr() != dst.embed.weight.data_ptr()
    assert torch.equal(dst.head.weight, src.embed.weight)
    assert r.copied_keys in (["head.weight"], ["embed.weight"])


# A size mismatch skipped with ignore_mismatched_sizes leaves its target
# on meta: it is reported missing too (strict=True then fails, model
# untouched); a plan of a meta model touches nothing.
def test_meta_model_mismatch_left_on_meta(daemon):
    src = source()
    sd = dict(src.state_dict())
    sd["fc.bias"] = torch.zeros(7)
    with wbroker.connect(daemon.socket) as c:
        c.publish("mis", sd)
        dst = Net(device="meta")
        p = c.plan(dst, "mis", ignore_mismatched_sizes=True)
        assert p.mismatched_keys == ["fc.bias"] and p.ok
        assert all(t.device.type == "meta"
                   for t in dst.state_dict().values())
        with pytest.raises(wbroker.LoadError) as e:
            c.load_into(dst, "mis", ignore_mismatched_sizes=True)
        assert str(e.value) == ('Error(s) in loading state_dict for Net:\n\t'
                                'Missing key(s) in state_dict: "fc.bias". ')
        assert all(t.device.type == "meta"
                   for t in dst.state_dict().values())
        r = c.load_into(dst, "mis", ignore_mismatched_sizes=True,
                        strict=False)
    assert r.mismatched_keys == ["fc.bias"] and r.missing_keys == ["fc.bias"]
    assert dst.fc.bias.device.type == "meta"
    assert dst.fc.weight.device.type == "cpu"


# A checkpoint that omits a tied key (GPT-2's file has no lm_head.weight):
# the report is torch's, and the omitted target, tied to a loaded one, is
# that view, not left on meta.
def test_meta_model_omitted_tie_partner(daemon):
    src = source()
    sd = {k: v for k, v in src.state_dict().items() if k != "head.weight"}
    want = Net().load_state_dict(sd, strict=False)
    with wbroker.connect(daemon.socket) as c:
        c.publish("omit", sd)
        dst = Net(device="meta")
        r = c.load_into(dst, "omit", strict=False)
    assert r.missing_keys == list(want.missing_keys) == ["head.weight"]
    assert dst.head.weight is dst.embed.weight
    assert dst.head.weight.device.type == "cpu"
    with torch.no_grad():
        assert torch.equal(dst.eval()(IDS), src(IDS))


# torch 2.x's parameter-swap setting (module conversions swap tensors
# instead of assigning .data) works with loaded models, meta-built ones
# included, and with load_state_dict(assign=True) from state_dict() views.
@pytest.mark.skipif(not hasattr(torch.__future__,
                                "set_swap_module_params_on_conversion"),
                    reason="torch without the parameter-swap setting")
def test_swap_module_params_setting(daemon):
    src = source()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        with wbroker.connect(daemon.socket) as c, \
                warnings.catch_warnings():
            warnings.simplefilter("error")
            c.publish("net", src)
            dst = Net(device="meta")
            c.load_into(dst, "net")
            weight = dst.fc.weight
            dst.double()
            assert dst.fc.weight is weight
            assert dst.fc.weight.dtype == torch.float64
            assert dst.head.weight is dst.embed.weight
            r = c.load_into(dst, "net")
            assert "fc.weight" in r.cast_keys
            plain = Net()
            plain.load_state_dict(c.state_dict("net"), assign=True)
            with torch.no_grad():
                assert torch.equal(plain.eval()(IDS), src(IDS))
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
