"""The cases of ``test_merge_triton.py``, run in a process started with ``TRITON_INTERPRET=1``: the
merge op's Triton (CUDA) kernels, run on the CPU by Triton's interpreter, against the merge computed
in float64 from the same inputs. The default set runs a covering subset of each sweep (marked
below), ``-m slow`` the rest."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

if __import__("os").environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 from the start (see test_merge_triton.py)",
                allow_module_level=True)  # fmt: skip
pytest.importorskip("triton", reason="Triton is not installed")

from attnblocks.merge import eager
from attnblocks.merge.spec import CODES, SPATIAL, NormIn, NormOut

# modules imported earlier without the interpreter are imported again: @triton.jit reads
# TRITON_INTERPRET when the kernels (triton_jit) are defined
for _name in ("attnblocks.merge.triton_jit", "attnblocks.merge.triton_kernels"):
    if _name in sys.modules:
        importlib.reload(sys.modules[_name])
tk = importlib.import_module("attnblocks.merge.triton_kernels")
assert tk.jit is sys.modules["attnblocks.merge.triton_jit"]

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on masked lanes

TOL = {  # relative to the largest magnitude of the float64 result
    torch.float32: 2e-5,
    torch.bfloat16: 1.6e-2,  # one rounding of the result to 8 bits of mantissa, and of inputs
    torch.float16: 2e-3,
}


def _norm(c: int, mode: int, g: torch.Generator) -> NormIn:
    if mode == 0:
        return NormIn(None, None, None, None, 0, 0.0, 0.0)
    return NormIn(
        torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g) * 0.3,
        torch.randn(c, generator=g) * 0.2, torch.rand(c, generator=g) + 0.5, mode, 1e-5, 0.1,
    )  # fmt: skip


def _double(p: NormIn) -> NormIn:
    return p._replace(**{k: getattr(p, k).double() for k in ("weight", "bias", "running_mean",
                                                             "running_var") if getattr(p, k) is not None})  # fmt: skip


def _out(p: NormIn, stats: torch.Tensor) -> NormOut:
    return NormOut(p.weight, p.bias, stats, p.mode)


def _check(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    scale = want.abs().max().item() + 1e-12
    err = (got.double() - want).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} x {scale:.3g}"


def _case(shape, code, dtype, channels_last, f_mode, s_mode, *, relu=True, drop=False,
          alpha=0.7, scale=1.0, seed=0):  # fmt: skip
    """Runs the Triton kernels and the float64 eager kernels on the same inputs; compares all."""
    g = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    t = (torch.randn(*shape, generator=g) * scale).to(dtype)
    u = torch.randn(*shape, generator=g).to(dtype)
    if channels_last:
        t, u = t.to(memory_format=torch.channels_last), u.to(memory_format=torch.channels_last)
    a = torch.tensor(alpha)
    d = (torch.rand(n, 1, 1, 1, generator=g) < 0.7).float() / 0.7 if drop else None
    fn, sn = _norm(c, f_mode, g), _norm(c, s_mode, g)
    y, f_stats, f_run, s_stats, s_run = tk.merge_forward(t, u, a, d, fn, sn, code, relu)
    ref = eager.merge_forward(t.double(), u.double(), a.double(), None if d is None else d.double(),
                              _double(fn), _double(sn), code, relu)  # fmt: skip
    tol = TOL[dtype]
    assert y.dtype == dtype and y.shape == t.shape
    assert y.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    _check(y, ref[0], tol, "y")
    for got, want, name in ((f_stats, ref[1], "f_stats"), (f_run, ref[2], "f_running"),
                            (s_stats, ref[3], "s_stats"), (s_run, ref[4], "s_running")):  # fmt: skip
        assert got.shape == want.shape, name
        if got.numel():
            _check(got, want, 1e-5, name)
    dy = torch.randn(shape, generator=g).to(dtype)
    yr = y if relu else None
    grads = tk.merge_backward(
        dy, yr, t, u, a, d, _out(fn, f_stats), _out(sn, s_stats), code, True, True
    )
    ref_grads = eager.merge_backward(
        dy.double(), None if yr is None else yr.double(), t.double(), u.double(), a.double(),
        None if d is None else d.double(), _out(_double(fn), ref[1]), _out(_double(sn), ref[3]),
        code, True, True,
    )  # fmt: skip
    names = ["d_t", "d_u", "d_alpha", "d_f_weight", "d_f_bias", "d_s_weight", "d_s_bias"]
    for got, want, name in zip(grads, ref_grads, names, strict=True):
        assert got.shape == want.shape, name
        if got.numel():
            # the gradients are sums over many products of rounded inputs: looser in low precision
            _check(got, want, tol if dtype == torch.float32 else 4 * tol, name)
    assert grads[0].dtype == dtype and grads[1].dtype == dtype
    return y


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NORMS = ["spatial", "sigmoid", "channel"]
SLOW = pytest.mark.slow  # the rest of a sweep; the default set keeps a covering subset


def _sweep(**axes):
    """Every combination of ``axes`` (name -> values); those outside ``keep`` are slow."""
    names, keep = list(axes), axes.pop("keep")
    names.remove("keep")
    combos = [()]
    for name in names:
        combos = [(*c, v) for c in combos for v in axes[name]]
    return [pytest.param(*c, marks=() if keep(*c) else SLOW) for c in combos]


@pytest.mark.parametrize(
    ("norm", "channels_last", "dtype"),
    # the default set: each normalization with each dtype, and every (normalization, layout) and
    # (dtype, layout) pair at least once
    _sweep(
        norm=NORMS, channels_last=[False, True], dtype=DTYPES,
        keep=lambda n, cl, d: cl == bool((NORMS.index(n) + DTYPES.index(d)) % 2),
    ),
    ids=lambda v: str(v) if not isinstance(v, bool) else ("channels_last" if v else "nchw"),
)  # fmt: skip
def test_triton_matches_float64(norm, channels_last, dtype):
    """Train-mode branch norm with an eval-mode shortcut norm, drop path, ReLU; 5 channels leave
    partial channel blocks in the channels_last and channel-softmax tiles."""
    _case((2, 5, 5, 7), CODES[norm], dtype, channels_last, 2, 1, drop=True)


MODES = {"none-none-identity": (0, 0, False), "eval-train": (1, 2, True),
         "train-none": (2, 0, True), "none-train-identity": (0, 2, False)}  # fmt: skip


@pytest.mark.parametrize(
    ("norm", "modes"),
    # the default set: each mode pair once, the two normalizations taking turns
    _sweep(
        norm=["spatial", "channel"],
        modes=list(MODES),
        keep=lambda n, m: (n == "spatial") == (list(MODES).index(m) % 2 == 0),
    ),  # fmt: skip
)
def test_triton_norm_modes_and_activations(norm, modes):
    f_mode, s_mode, relu = MODES[modes]
    _case((2, 6, 4, 5), CODES[norm], torch.float32, False, f_mode, s_mode, relu=relu, seed=1)


@pytest.mark.parametrize(
    ("shape", "channels_last"),
    [((1, 3, 1, 1), False),
     # a second or two each in the interpreter: 37x41 covers NCHW planes of two tiles of 1024
     # (the second partial), 70 channels channels_last planes of several tiles
     pytest.param((1, 2, 112, 112), False, marks=SLOW),
     pytest.param((1, 2, 97, 131), False, marks=SLOW),
     ((1, 2, 37, 41), False), ((1, 70, 13, 11), True), ((2, 3, 1, 9), True)],
    ids=["1x1", "112x112", "97x131", "37x41", "70ch-channels-last", "1x9-channels-last"],
)  # fmt: skip
def test_triton_plane_sizes_and_batch_one(shape, channels_last):
    mode = 2 if shape[0] * shape[2] * shape[3] > 1 else 1
    _case(shape, SPATIAL, torch.float32, channels_last, mode, 0, seed=2)


@pytest.mark.parametrize("norm", ["spatial", "channel", "sigmoid"])
def test_triton_large_magnitudes(norm):
    """|F| up to 1e4: the softmax shifts by its running maximum, the sigmoid saturates cleanly."""
    y = _case((2, 4, 6, 5), CODES[norm], torch.float32, False, 0, 0, scale=4e3, seed=3)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(
    ("channels_last", "norm"),
    # the default set: each normalization once, both layouts
    _sweep(channels_last=[False, True], norm=NORMS, keep=lambda cl, n: cl == (n == "sigmoid")),
    ids=lambda v: str(v) if not isinstance(v, bool) else ("channels_last" if v else "nchw"),
)
def test_triton_alpha_zero_is_the_plain_epilogue_exactly(norm, channels_last):
    """alpha = 0: relu(F + s) with F and s the norms' float32 affine maps, bit for bit; the
    attention term contributes nothing to the gradients either."""
    g = torch.Generator().manual_seed(4)
    t, u = torch.randn(2, 5, 6, 7, generator=g), torch.randn(2, 5, 6, 7, generator=g)
    if channels_last:
        t, u = t.to(memory_format=torch.channels_last), u.to(memory_format=torch.channels_last)
    fn, sn = _norm(5, 1, g), _norm(5, 0, g)
    y, f_stats, *_ = tk.merge_forward(t, u, torch.tensor(0.0), None, fn, sn, CODES[norm], True)
    k = fn.weight * f_stats[1]
    b = fn.bias - f_stats[0] * k
    f = t * k.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    assert torch.equal(y, torch.relu(f + u))
    dy = torch.randn(2, 5, 6, 7, generator=g)
    d_t, d_u, *_ = tk.merge_backward(
        dy, y, t, u, torch.tensor(0.0), None, _out(fn, f_stats), _out(sn, torch.empty(0)),
        CODES[norm], True, True,
    )  # fmt: skip
    gate = (y > 0).float() * dy
    assert torch.equal(d_u, gate)
    assert torch.equal(d_t, gate * k.view(1, -1, 1, 1))


def test_triton_nan_stays_in_its_plane():
    t, u = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t[1, 2, 0, 0] = float("nan")
    none = NormIn(None, None, None, None, 0, 0.0, 0.0)
    y = tk.merge_forward(t, u, torch.tensor(0.5), None, none, none, SPATIAL, False)[0]
    assert torch.isnan(y[1, 2]).all()
    keep = torch.ones_like(y, dtype=torch.bool)
    keep[1, 2] = False
    assert not torch.isnan(y[keep]).any()


def test_triton_available_only_with_cuda_or_the_interpreter(monkeypatch):
    assert tk.interpreted() and tk.available()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert tk.available() == torch.cuda.is_available()
