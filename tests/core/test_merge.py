"""The ARL merge op: the memory-lean path equals the straightforward composition."""

from __future__ import annotations

import copy
import os

import pytest
import timm
import torch
from timm.layers import DropPath
from torch import nn

import attnblocks as ab
from attnblocks.merge import (
    arl_merge,
    arl_merge_bn,
    arl_merge_reference,
    fusable_norm,
    get_merge_backend,
    lean_merge_active,
    list_merge_backends,
    set_merge_backend,
)
from attnblocks.normalize import get_normalization

OP_BACKWARD = "attnblocks_arl_merge_defaultBackward"  # the registered operator's grad_fn
NORMS = ["spatial", "channel", "sigmoid"]


@pytest.fixture
def backend():
    """Restore the merge backend after a test that changes it."""
    previous = get_merge_backend()
    yield set_merge_backend
    set_merge_backend(previous)


def _randomized_bn(c: int, *, train: bool, dtype=torch.float32) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, dtype=dtype)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return bn.train(train)


def _grads(out: torch.Tensor, tensors: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return list(torch.autograd.grad(out, tensors, g.to(out.device)))


def _leaf(*shape: int, dtype=torch.float64, **kw) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, **kw).requires_grad_(True)


# --- backends --------------------------------------------------------------------------------------


def test_backend_registry(backend):
    assert list_merge_backends() == ["eager", "native", "reference"]
    default = get_merge_backend()
    assert default == os.environ.get("ATTNBLOCKS_MERGE_BACKEND", "native")
    assert backend("reference") == default
    assert get_merge_backend() == "reference"
    assert not lean_merge_active()
    with pytest.raises(ValueError, match="unknown merge backend 'triton'.*eager"):
        set_merge_backend("triton")
    # re-exported at the package level
    assert ab.set_merge_backend is set_merge_backend and ab.get_merge_backend() == "reference"
    assert ab.list_merge_backends() == list_merge_backends()


def test_lean_merge_inactive_when_tap_is_hooked():
    tap = nn.Identity()
    assert lean_merge_active(tap)
    handle = tap.register_forward_hook(lambda *_: None)
    assert not lean_merge_active(tap)
    handle.remove()
    assert lean_merge_active(tap)


def test_fusable_norm():
    assert fusable_norm(nn.BatchNorm2d(4))
    assert not fusable_norm(nn.GroupNorm(2, 4))
    assert not fusable_norm(nn.SyncBatchNorm(4))
    assert not fusable_norm(None)
    hooked = nn.BatchNorm2d(4)
    hooked.register_forward_hook(lambda *_: None)
    assert not fusable_norm(hooked)  # a fused norm is never called: its hooks would not run


# --- arl_merge (F given) -----------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("act", [nn.ReLU(inplace=True), nn.Identity()], ids=["relu", "identity"])
def test_merge_matches_reference(norm, act):
    f, s, alpha = _leaf(2, 5, 7, 6), _leaf(2, 5, 7, 6), torch.tensor(0.7, dtype=torch.float64)
    alpha.requires_grad_(True)
    ref = arl_merge_reference(f, s, alpha, get_normalization(norm)(f), act)
    out = arl_merge(f, s, alpha, norm, act)
    assert out.grad_fn.name().endswith(OP_BACKWARD)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for a, b in zip(_grads(out, [f, s, alpha]), _grads(ref, [f, s, alpha]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_merge_gradcheck_float64(norm):
    f, s = _leaf(2, 3, 4, 5), _leaf(2, 3, 4, 5)
    alpha = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: arl_merge(*a, norm), (f, s, alpha))


def test_merge_custom_normalization_uses_autograd_vjp():
    def softplus_mask(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(x) / 3

    f, s = _leaf(2, 3, 4, 5), _leaf(2, 3, 4, 5)
    alpha = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: arl_merge(*a, softplus_mask), (f, s, alpha))
    ref = arl_merge_reference(f, s, alpha, softplus_mask(f), torch.relu)
    torch.testing.assert_close(arl_merge(f, s, alpha, softplus_mask), ref)


def test_merge_drop_path_draws_the_same_mask():
    f, s = _leaf(8, 3, 4, 5), _leaf(8, 3, 4, 5)
    alpha = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    dp = DropPath(0.5).train()
    torch.manual_seed(3)
    ref = arl_merge_reference(f, s, alpha, get_normalization("spatial")(f), torch.relu, dp)
    torch.manual_seed(3)
    out = arl_merge(f, s, alpha, "spatial", torch.relu, dp)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for a, b in zip(_grads(out, [f, s, alpha]), _grads(ref, [f, s, alpha]), strict=True):
        torch.testing.assert_close(a, b)
    # some samples dropped, some kept (x2): the branch scale really varied
    kept = ~torch.isclose(out, torch.relu(s)).flatten(1).all(1)
    assert 0 < kept.sum() < 8


def test_merge_unsupported_activation_falls_back_to_reference():
    f, s, alpha = _leaf(1, 2, 3, 3), _leaf(1, 2, 3, 3), torch.tensor(0.3, dtype=torch.float64)
    out = arl_merge(f, s, alpha, "sigmoid", nn.SiLU())
    ref = arl_merge_reference(f, s, alpha, torch.sigmoid(f), nn.SiLU())
    assert not out.grad_fn.name().endswith(OP_BACKWARD)
    torch.testing.assert_close(out, ref)


def test_merge_tap_sees_the_mask_when_hooked():
    f, s, alpha = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), torch.tensor(0.3)
    tap, seen = nn.Identity(), []
    tap.register_forward_hook(lambda _m, _i, o: seen.append(o))
    arl_merge(f, s, alpha, "spatial", torch.relu, tap=tap)
    torch.testing.assert_close(seen[0], get_normalization("spatial")(f))


@pytest.mark.parametrize(
    ("args", "err", "match"),
    [
        ((torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4)), ValueError, r"\(1, 2, 3, 3\)"),
        ((torch.zeros(2, 3, 3), torch.zeros(2, 3, 3)), ValueError, "4D"),
        ((torch.zeros(1, 2, 3, 3), [0.0]), TypeError, "shortcut must be a Tensor"),
    ],
)
def test_merge_bad_inputs(args, err, match):
    with pytest.raises(err, match=match):
        arl_merge(*args, torch.tensor(0.1))
    with pytest.raises(ValueError, match="alpha must be a scalar"):
        arl_merge(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), torch.zeros(2))


# --- arl_merge_bn (norms fused) -----------------------------------------------------------------


def _bn_case(train: bool, projected: bool, dtype=torch.float64, channels_last=False):
    torch.manual_seed(0)
    c = 6
    t, u = _leaf(3, c, 5, 7, dtype=dtype), _leaf(3, c, 5, 7, dtype=dtype)
    if channels_last:
        t = t.detach().to(memory_format=torch.channels_last).requires_grad_(True)
        u = u.detach().to(memory_format=torch.channels_last).requires_grad_(True)
    bn = _randomized_bn(c, train=train, dtype=dtype)
    sbn = _randomized_bn(c, train=train, dtype=dtype) if projected else None
    alpha = torch.tensor(0.8, dtype=dtype, requires_grad=True)
    return t, u, bn, sbn, alpha


def _run_bn(t, u, bn, sbn, alpha, norm, lean: bool, drop_path=None):
    if lean:
        return arl_merge_bn(t, bn, u, alpha, norm, torch.relu, drop_path, shortcut_norm=sbn)
    f = bn(t)
    s = u if sbn is None else sbn(u)
    return arl_merge_reference(f, s, alpha, get_normalization(norm)(f), torch.relu, drop_path)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("projected", [False, True], ids=["identity", "projection"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_merge_bn_matches_modules(norm, train, projected, channels_last):
    t, u, bn, sbn, alpha = _bn_case(train, projected, channels_last=channels_last)
    bn_ref, sbn_ref = copy.deepcopy(bn), copy.deepcopy(sbn)
    out = _run_bn(t, u, bn, sbn, alpha, norm, lean=True)
    ref = _run_bn(t, u, bn_ref, sbn_ref, alpha, norm, lean=False)
    assert out.grad_fn.name().endswith(OP_BACKWARD)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    params = [t, u, alpha, bn.weight, bn.bias] + ([sbn.weight, sbn.bias] if sbn else [])
    params_ref = [t, u, alpha, bn_ref.weight, bn_ref.bias]
    params_ref += [sbn_ref.weight, sbn_ref.bias] if sbn else []
    for a, b in zip(_grads(out, params), _grads(ref, params_ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    for m, m_ref in ((bn, bn_ref), (sbn, sbn_ref)):  # running statistics updated identically
        if m is not None:
            for key, value in m.state_dict().items():
                torch.testing.assert_close(value, m_ref.state_dict()[key], rtol=1e-12, atol=0)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_merge_bn_gradcheck_float64(norm, train):
    bn = _randomized_bn(3, train=train, dtype=torch.float64)
    sbn = _randomized_bn(3, train=train, dtype=torch.float64)
    params = [m.weight.detach().clone().requires_grad_() for m in (bn, sbn)]
    params += [m.bias.detach().clone().requires_grad_() for m in (bn, sbn)]
    for m in (bn, sbn):  # the norms' affine parameters become gradcheck inputs
        del m.weight, m.bias

    def fn(t, u, alpha, w, sw, b, sb):
        bn.weight, sbn.weight, bn.bias, sbn.bias = w, sw, b, sb
        return arl_merge_bn(t, bn, u, alpha, norm, shortcut_norm=sbn)

    t, u = _leaf(2, 3, 4, 5), _leaf(2, 3, 4, 5)
    alpha = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    assert fn(t, u, alpha, *params).grad_fn.name().endswith(OP_BACKWARD)
    assert torch.autograd.gradcheck(fn, (t, u, alpha, *params))


def test_merge_bn_drop_path_and_momentum_none():
    t, u, bn, sbn, alpha = _bn_case(True, projected=True)
    bn.momentum = None  # cumulative moving average
    bn_ref, sbn_ref = copy.deepcopy(bn), copy.deepcopy(sbn)
    dp = DropPath(0.4).train()
    for _ in range(2):
        torch.manual_seed(5)
        out = _run_bn(t, u, bn, sbn, alpha, "spatial", lean=True, drop_path=dp)
        torch.manual_seed(5)
        ref = _run_bn(t, u, bn_ref, sbn_ref, alpha, "spatial", lean=False, drop_path=dp)
        torch.testing.assert_close(out, ref)
        for a, b in zip(_grads(out, [t, u, alpha]), _grads(ref, [t, u, alpha]), strict=True):
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var, rtol=1e-12, atol=0)
    assert int(bn.num_batches_tracked) == int(bn_ref.num_batches_tracked) == 2


def test_merge_bn_unfusable_norm_falls_back():
    t, u, alpha = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.tensor(0.5)
    gn = nn.GroupNorm(2, 4)
    out = arl_merge_bn(t, gn, u, alpha, "channel")
    f = gn(t)
    ref = arl_merge_reference(f, u, alpha, get_normalization("channel")(f), torch.relu)
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(5\) got 4 channels"):
        arl_merge_bn(t, nn.BatchNorm2d(5), u, alpha)
    with pytest.raises(TypeError, match="norm must be an nn.Module"):
        arl_merge_bn(t, torch.relu, u, alpha)
    with pytest.raises(TypeError, match="arl_merge_bn: shortcut must be a Tensor, got list"):
        arl_merge_bn(t, nn.BatchNorm2d(4), [0.0], alpha)


def test_merge_bn_float32_within_1e5():
    torch.manual_seed(0)
    t, u = torch.randn(4, 32, 14, 14, requires_grad=True), torch.randn(4, 32, 14, 14)
    u.requires_grad_(True)
    bn, sbn = _randomized_bn(32, train=True), _randomized_bn(32, train=True)
    alpha = torch.tensor(0.5, requires_grad=True)
    bn_ref, sbn_ref = copy.deepcopy(bn), copy.deepcopy(sbn)
    out = _run_bn(t, u, bn, sbn, alpha, "spatial", lean=True)
    ref = _run_bn(t, u, bn_ref, sbn_ref, alpha, "spatial", lean=False)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(out, [t, u, alpha]), _grads(ref, [t, u, alpha]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --- whole networks: lean backend vs reference backend ---------------------------------------------


def _model_grads(model, x, backend_name, set_backend, seed=7):
    set_backend(backend_name)
    torch.manual_seed(seed)
    out = model(x)
    out.float().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out.detach(), grads


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [("resnet26", {"drop_path_rate": 0.2}), ("resnet18", {}), ("resnet26d", {})],
)
def test_network_lean_equals_reference(arch, kwargs, backend):
    torch.manual_seed(0)
    src = timm.create_model(arch, num_classes=3, **kwargs)
    arl = ab.ARLWrapper(src, alpha_init=0.5).train()
    ref_model = copy.deepcopy(arl)
    x = torch.randn(2, 3, 48, 40)
    out, grads = _model_grads(arl, x, "eager", backend)
    ref, ref_grads = _model_grads(ref_model, x, "reference", backend)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-5, msg=k)
    for (k, b), b_ref in zip(arl.named_buffers(), ref_model.buffers(), strict=True):
        torch.testing.assert_close(b, b_ref, rtol=1e-5, atol=1e-6, msg=k)


def test_network_autocast_bf16_and_channels_last(backend):
    """Under bf16 autocast the lean path is at least as close to float32 as the reference path."""
    torch.manual_seed(0)
    arl = ab.ARLWrapper(timm.create_model("resnet26", num_classes=2), alpha_init=0.5)
    arl = arl.to(memory_format=torch.channels_last)
    models = [copy.deepcopy(arl) for _ in range(3)]
    x = torch.randn(2, 3, 40, 40).to(memory_format=torch.channels_last)
    truth, truth_grads = _model_grads(models[0], x, "reference", backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grads = _model_grads(models[1], x, "eager", backend)
        ref, ref_grads = _model_grads(models[2], x, "reference", backend)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), truth, rtol=0.05, atol=0.05)

    def flat(gs):
        return torch.cat([gs[k].flatten().float() for k in sorted(truth_grads)])

    err = (flat(grads) - flat(truth_grads)).norm()
    err_ref = (flat(ref_grads) - flat(truth_grads)).norm()
    assert err <= 1.5 * err_ref + 1e-3 * flat(truth_grads).norm()
    cosine = torch.nn.functional.cosine_similarity
    for k, g in truth_grads.items():
        if g.numel() > 1 and g.norm() > 0:
            cos = cosine(grads[k].flatten().float(), g.flatten(), dim=0)
            cos_ref = cosine(ref_grads[k].flatten().float(), g.flatten(), dim=0)
            assert cos > min(0.98, cos_ref - 0.05), (k, cos, cos_ref)


def test_network_record_attention_still_sees_masks():
    arl = ab.ARLWrapper(timm.create_model("resnet26", num_classes=2)).eval()
    x = torch.randn(1, 3, 64, 48)
    with ab.record_attention(arl) as maps:
        out = arl(x)
    torch.testing.assert_close(arl(x), out)
    assert len(maps) == 8
    torch.testing.assert_close(maps["layer1.0"].sum((2, 3)), torch.ones(1, 256))


def _is_lean(out: torch.Tensor) -> bool:
    """True if ``out`` came from the lean op (eager kernels or the fused native ones)."""
    return out.grad_fn.name().endswith(OP_BACKWARD)


@pytest.mark.parametrize("hooked", ["bn3", "downsample", "downsample.1"])
def test_block_hooks_on_fused_modules_still_run(hooked, backend):
    """A hook on the last norm or the shortcut projection sees the same output as without fusion."""
    torch.manual_seed(0)
    block = ab.convert_block(
        timm.create_model("resnet26", num_classes=2).layer2[0], alpha_init=0.5
    ).train()
    x = torch.randn(2, 256, 12, 10)
    seen = []
    block.get_submodule(hooked).register_forward_hook(lambda _m, _i, o: seen.append(o))
    out = block(x)
    assert _is_lean(out)  # still the lean op
    backend("reference")
    ref = block(x)
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], seen[1])
    torch.testing.assert_close(out, ref)


def test_network_saves_no_more_than_plain(backend):
    from benchmarks.saved_tensors import saved_tensor_bytes

    src = timm.create_model("resnet26", num_classes=2)
    x = torch.randn(2, 3, 64, 64)
    plain = saved_tensor_bytes(src, x)
    arl = ab.ARLWrapper(src)
    assert saved_tensor_bytes(arl, x) == plain
    backend("reference")
    assert saved_tensor_bytes(arl, x) > 1.4 * plain
