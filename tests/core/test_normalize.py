"""Property tests of the ARL attention normalizations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnblocks as ab
from attnblocks.normalize import channel_softmax, sigmoid_attention, spatial_softmax

SOFTMAX_AXES = {"spatial": (2, 3), "channel": (1,)}
shapes = st.tuples(
    st.integers(1, 3), st.integers(1, 5), st.integers(1, 7), st.integers(1, 7)
)  # (N, C, H, W)


def _input(shape, scale, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]), seed=st.integers(0, 2**16))
@pytest.mark.parametrize("name", ["spatial", "channel"])
def test_softmax_sums_to_one_and_bounded(name, shape, scale, seed):
    x = _input(shape, scale, seed)
    a = ab.get_normalization(name)(x)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.all(a >= 0) and torch.all(a <= 1)
    torch.testing.assert_close(
        a.sum(SOFTMAX_AXES[name]), torch.ones_like(a.sum(SOFTMAX_AXES[name])), atol=1e-5, rtol=0
    )


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), shift=st.floats(-50, 50))
@pytest.mark.parametrize("name", ["spatial", "channel"])
def test_softmax_invariant_to_constant_along_axis(name, shape, seed, shift):
    x = _input(shape, 3.0, seed, torch.float64)
    axes = SOFTMAX_AXES[name]
    # one constant per normalized slice: broadcast over the normalized axes only
    const_shape = [1 if d in axes else s for d, s in enumerate(x.shape)]
    c = torch.full(const_shape, shift, dtype=x.dtype) + torch.randn(const_shape, dtype=x.dtype)
    fn = ab.get_normalization(name)
    torch.testing.assert_close(fn(x + c), fn(x), atol=1e-12, rtol=1e-9)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
@pytest.mark.parametrize("name", ["spatial", "channel", "sigmoid"])
def test_equivariant_under_permutations(name, shape, seed):
    x = _input(shape, 2.0, seed, torch.float64)
    n, c, h, w = x.shape
    fn = ab.get_normalization(name)
    g = torch.Generator().manual_seed(seed)
    pos = torch.randperm(h * w, generator=g)
    permute_pos = lambda t: t.reshape(n, c, h * w)[..., pos].reshape(n, c, h, w)  # noqa: E731
    torch.testing.assert_close(fn(permute_pos(x)), permute_pos(fn(x)))
    ch = torch.randperm(c, generator=g)
    torch.testing.assert_close(fn(x[:, ch]), fn(x)[:, ch])


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), scale=st.sampled_from([1.0, 1e2, 1e4]))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["spatial", "channel", "sigmoid"])
def test_finite_values_and_gradients_at_extremes(name, dtype, shape, seed, scale):
    x = _input(shape, scale, seed, dtype).requires_grad_(True)
    a = ab.get_normalization(name)(x)
    assert a.dtype == dtype
    assert torch.isfinite(a).all()
    assert torch.all(a >= 0) and torch.all(a <= 1)
    (a.float() * torch.linspace(-1, 1, a.numel()).reshape(a.shape)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_values_match_explicit_formulas():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    e = x.exp()
    torch.testing.assert_close(spatial_softmax(x), e / e.sum((2, 3), keepdim=True))
    torch.testing.assert_close(channel_softmax(x), e / e.sum(1, keepdim=True))
    torch.testing.assert_close(channel_softmax(x), torch.nn.Softmax2d()(x))
    torch.testing.assert_close(sigmoid_attention(x), 1 / (1 + (-x).exp()))


def test_half_precision_computes_in_float32():
    # 300 positions of equal logits: each weight 1/300 ~ 3.3e-3 must survive the fp16 round trip
    x = torch.zeros(1, 1, 15, 20, dtype=torch.float16)
    a = spatial_softmax(x)
    torch.testing.assert_close(a.float(), torch.full((1, 1, 15, 20), 1 / 300), atol=2e-6, rtol=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b = spatial_softmax(torch.randn(2, 4, 3, 3))
    assert b.dtype == torch.float32  # autocast leaves a float32 input's dtype alone


def test_channels_last_input():
    x = torch.randn(2, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    for name in ab.list_normalizations():
        fn = ab.get_normalization(name)
        torch.testing.assert_close(fn(x), fn(x.contiguous()))


def test_registry():
    assert ab.list_normalizations() == ["channel", "sigmoid", "spatial"]
    assert ab.get_normalization("spatial") is spatial_softmax
    assert ab.get_normalization(torch.tanh) is torch.tanh  # callables pass through

    def double_sigmoid(x):
        return torch.sigmoid(2 * x)

    ab.register_normalization("test_double_sigmoid", double_sigmoid)
    try:
        assert "test_double_sigmoid" in ab.list_normalizations()
        assert ab.get_normalization("test_double_sigmoid") is double_sigmoid
        with pytest.raises(ValueError, match="already registered"):
            ab.register_normalization("test_double_sigmoid", double_sigmoid)
    finally:
        from attnblocks import normalize

        normalize._NORMALIZATIONS.pop("test_double_sigmoid")


def test_errors():
    with pytest.raises(
        ValueError, match="unknown normalization 'softmax2d'.*channel, sigmoid, spatial"
    ):
        ab.get_normalization("softmax2d")
    with pytest.raises(TypeError, match="name or a callable"):
        ab.get_normalization(3)
    with pytest.raises(TypeError, match="callable"):
        ab.register_normalization("x", 3)
    with pytest.raises(ValueError, match=r"4D tensor.*\(2, 3\)"):
        spatial_softmax(torch.randn(2, 3))
