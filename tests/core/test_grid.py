"""GridAttentionGate: the gate's equations (docs/grid_attention.md, "The gate"; AttnMel, Yan et al.,
IPMI 2019), normalizations, sizes, dtypes, compile, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnblocks as ab
from attnblocks.grid import list_gate_aggregations


def direct_gate(gate: ab.GridAttentionGate, local: torch.Tensor, global_: torch.Tensor):
    """R = psi(relu(W_l L + up(W_g G))); A = sigmoid(R) or softmax over H*W; mean/sum of A*L."""
    w_l = gate.W_l.weight[:, :, 0, 0]
    w_g = gate.W_g.weight[:, :, 0, 0]
    w_psi = gate.psi.weight[0, :, 0, 0]
    wl = torch.einsum("ic,nchw->nihw", w_l, local)
    wg = torch.einsum("ic,nchw->nihw", w_g, global_)
    up = F.interpolate(wg, size=local.shape[-2:], mode="bilinear", align_corners=False)
    r = torch.einsum("i,nihw->nhw", w_psi, torch.relu(wl + up)) + gate.psi.bias
    n, h, w = r.shape
    if gate.normalization == "sigmoid":
        a = torch.sigmoid(r)
        attended = torch.einsum("nhw,nchw->nc", a, local) / (h * w)
    else:
        a = torch.softmax(r.reshape(n, -1), dim=1).reshape(n, h, w)
        attended = torch.einsum("nhw,nchw->nc", a, local)
    return attended, a.unsqueeze(1)


SIZES = [  # (local H, W), (global h, w): square, odd, non-square, equal, global larger than local
    ((28, 28), (7, 7)),
    ((13, 17), (5, 3)),
    ((9, 9), (9, 9)),
    ((5, 7), (11, 13)),
    ((1, 1), (1, 1)),
]


@pytest.mark.parametrize("normalization", ["sigmoid", "softmax"])
@pytest.mark.parametrize(("local_hw", "global_hw"), SIZES)
def test_gate_equals_direct_computation(normalization, local_hw, global_hw):
    gate = ab.GridAttentionGate(6, 10, inter_channels=8, normalization=normalization).double()
    nn.init.normal_(gate.psi.bias)  # a non-zero bias so that the bias term is checked too
    local = torch.randn(3, 6, *local_hw, dtype=torch.float64)
    global_ = torch.randn(3, 10, *global_hw, dtype=torch.float64)
    attended, attn = gate(local, global_)
    ref_attended, ref_attn = direct_gate(gate, local, global_)
    assert attn.shape == (3, 1, *local_hw)
    assert attended.shape == (3, 6)
    torch.testing.assert_close(attn, ref_attn)
    torch.testing.assert_close(attended, ref_attended)


def test_sigmoid_map_in_open_unit_interval_and_softmax_sums_to_one():
    local, global_ = torch.randn(4, 16, 14, 11), torch.randn(4, 32, 4, 3)
    _, a_sig = ab.GridAttentionGate(16, 32, 8)(local, global_)
    assert bool((a_sig > 0).all()) and bool((a_sig < 1).all())
    _, a_soft = ab.GridAttentionGate(16, 32, 8, normalization="softmax")(local, global_)
    torch.testing.assert_close(a_soft.sum(dim=(2, 3)), torch.ones(4, 1))
    assert bool((a_soft >= 0).all())


def test_spatial_alias_equals_softmax():
    torch.manual_seed(1)
    g1 = ab.GridAttentionGate(8, 8, 4, normalization="softmax")
    g2 = ab.GridAttentionGate(8, 8, 4, normalization="spatial")
    g2.load_state_dict(g1.state_dict())
    x, g = torch.randn(2, 8, 6, 5), torch.randn(2, 8, 3, 3)
    for out1, out2 in zip(g1(x, g), g2(x, g), strict=True):
        torch.testing.assert_close(out1, out2)
    assert set(ab.list_gate_normalizations()) == {"sigmoid", "softmax", "spatial"}


def test_aggregation_override_mean_vs_sum():
    gate_mean = ab.GridAttentionGate(8, 8, 4, normalization="softmax", aggregation="mean")
    gate_sum = ab.GridAttentionGate(8, 8, 4, normalization="softmax")
    gate_sum.load_state_dict(gate_mean.state_dict())
    x, g = torch.randn(2, 8, 6, 5), torch.randn(2, 8, 3, 3)
    assert gate_sum.aggregation == "sum" and gate_mean.aggregation == "mean"
    torch.testing.assert_close(gate_sum(x, g)[0], gate_mean(x, g)[0] * 30)
    assert list_gate_aggregations() == ["mean", "sum"]


def test_batch_one_and_channels_last():
    gate = ab.GridAttentionGate(8, 16, 4).eval()
    x, g = torch.randn(1, 8, 7, 9), torch.randn(1, 16, 2, 3)
    attended, attn = gate(x, g)
    assert attended.shape == (1, 8) and attn.shape == (1, 1, 7, 9)
    cl = gate(
        x.contiguous(memory_format=torch.channels_last),
        g.contiguous(memory_format=torch.channels_last),
    )
    torch.testing.assert_close(cl[0], attended)
    torch.testing.assert_close(cl[1], attn)


def test_kaiming_fan_in_init_and_zero_bias():
    gate = ab.GridAttentionGate(512, 512, 256)
    for conv, fan_in in ((gate.W_l, 512), (gate.W_g, 512), (gate.psi, 256)):
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
    assert gate.W_l.bias is None and gate.W_g.bias is None
    assert torch.equal(gate.psi.bias, torch.zeros(1))


def test_device_dtype_forwarded():
    gate = ab.GridAttentionGate(4, 4, 2, device="cpu", dtype=torch.float64)
    assert {p.dtype for p in gate.parameters()} == {torch.float64}


@pytest.mark.parametrize("normalization", ["sigmoid", "softmax"])
def test_bf16_autocast(normalization):
    gate = ab.GridAttentionGate(16, 32, 8, normalization=normalization)
    x, g = torch.randn(2, 16, 12, 10), torch.randn(2, 32, 3, 5)
    ref_attended, ref_attn = gate(x, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attended, attn = gate(x, g)
    assert attn.dtype == torch.bfloat16
    assert torch.isfinite(attn.float()).all() and torch.isfinite(attended.float()).all()
    torch.testing.assert_close(attn.float(), ref_attn, atol=2e-2, rtol=5e-2)
    torch.testing.assert_close(attended.float(), ref_attended, atol=5e-2, rtol=5e-2)
    if normalization == "softmax":
        torch.testing.assert_close(
            attn.float().sum(dim=(2, 3)), torch.ones(2, 1), atol=2e-2, rtol=0
        )


def test_gradcheck_float64():
    gate = ab.GridAttentionGate(3, 4, 2).double()
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: gate(a, b), (x, g))


def test_compile_fullgraph():
    gate = ab.GridAttentionGate(4, 6, 4)
    x, g = torch.randn(2, 4, 7, 5), torch.randn(2, 6, 3, 2)
    compiled = torch.compile(gate, fullgraph=True, backend="eager")
    for out, ref in zip(compiled(x, g), gate(x, g), strict=True):
        torch.testing.assert_close(out, ref)


def test_compile_fullgraph_inductor():
    gate = ab.GridAttentionGate(4, 6, 4)
    x, g = torch.randn(2, 4, 7, 5), torch.randn(2, 6, 3, 2)
    compiled = torch.compile(gate, fullgraph=True)
    for out, ref in zip(compiled(x, g), gate(x, g), strict=True):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_record_attention_keys_are_gate_names():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate3 = ab.GridAttentionGate(4, 8, 4)
            self.gate4 = ab.GridAttentionGate(8, 8, 4, normalization="softmax")

        def forward(self, a, b, g):
            return self.gate3(a, g), self.gate4(b, g)

    net = Two()
    a, b, g = torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)
    assert set(ab.attention_taps(net)) == {"gate3", "gate4"}
    with ab.record_attention(net) as maps:
        (_, a3), (_, a4) = net(a, b, g)
    assert set(maps) == {"gate3", "gate4"}
    torch.testing.assert_close(maps["gate3"], a3)
    torch.testing.assert_close(maps["gate4"], a4)


def test_bad_input_raises_with_expected_and_actual():
    gate = ab.GridAttentionGate(8, 16, 4)
    with pytest.raises(ValueError, match=r"local has 7 channels, expected 8"):
        gate(torch.randn(1, 7, 4, 4), torch.randn(1, 16, 2, 2))
    with pytest.raises(ValueError, match=r"global_ has 15 channels, expected 16"):
        gate(torch.randn(1, 8, 4, 4), torch.randn(1, 15, 2, 2))
    with pytest.raises(ValueError, match=r"must be 4D .* got shape \(8, 4, 4\)"):
        gate(torch.randn(8, 4, 4), torch.randn(1, 16, 2, 2))
    with pytest.raises(ValueError, match=r"batch sizes differ"):
        gate(torch.randn(2, 8, 4, 4), torch.randn(3, 16, 2, 2))
    with pytest.raises(TypeError, match=r"local must be a Tensor, got list"):
        gate([1.0], torch.randn(1, 16, 2, 2))
    with pytest.raises(ValueError, match=r"unknown normalization 'channel'.*'sigmoid'"):
        ab.GridAttentionGate(8, 16, normalization="channel")
    with pytest.raises(ValueError, match=r"unknown aggregation 'max'"):
        ab.GridAttentionGate(8, 16, aggregation="max")
    with pytest.raises(ValueError, match=r"local_channels must be a positive int, got 0"):
        ab.GridAttentionGate(0, 16)
