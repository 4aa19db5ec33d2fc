"""The ``native`` merge backend: fused C++ kernels on CPU float32 (NCHW and channels_last), checked
against the reference; building them, and running without them."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import timm
import torch
import torch.autograd.forward_ad as fwAD
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.layers import DropPath
from torch import nn

import attnblocks as ab
from attnblocks import merge
from attnblocks.merge import (
    arl_merge,
    arl_merge_bn,
    arl_merge_reference,
    eager,
    native,
    set_merge_backend,
)
from attnblocks.normalize import get_normalization
from tests._support.data import ROOT

NATIVE_NORMS = ["spatial", "sigmoid"]


@pytest.fixture
def native_backend():
    """The native backend, its kernels built (or the test skipped, saying why)."""
    if not native.prepare():
        pytest.skip(f"native merge kernels unavailable: {native.error()}")
    previous = set_merge_backend("native")
    yield
    set_merge_backend(previous)


@pytest.fixture
def calls(monkeypatch):
    """How often each kernel module's forward and backward ran (``calls["native"]`` etc.)."""
    counts = {"native": 0, "eager": 0}

    def counting(name, fn):
        def counted(*args):
            counts[name] += 1
            return fn(*args)

        return counted

    for name, module in (("native", native), ("eager", eager)):
        for fn in ("merge_forward", "merge_backward"):
            monkeypatch.setattr(module, fn, counting(name, getattr(module, fn)))
    return counts


def _bn(c: int, train: bool, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return bn.train(train)


def _leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape) * scale).requires_grad_(True)


def _run(t, u, alpha, bn, sbn, norm, act, drop_path, backend: str):
    """Output and gradients (inputs, alpha, norm parameters) of one merge on ``backend``."""
    set_merge_backend(backend)
    torch.manual_seed(11)  # drop_path draws the same per-sample factors on every backend
    if bn is None:
        s = u if sbn is None else sbn(u)
        out = arl_merge(t, s, alpha, norm, act, drop_path)
    else:
        out = arl_merge_bn(t, bn, u, alpha, norm, act, drop_path, shortcut_norm=sbn)
    params = [t, u, alpha] + [p for m in (bn, sbn) if m is not None for p in (m.weight, m.bias)]
    weight = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    grads = torch.autograd.grad((out * weight).sum(), params)
    return out, grads


def _compare(shape, norm, act, bn_mode, sbn_mode, drop, seed=0, scale=1.0, channels_last=False):
    torch.manual_seed(seed)
    n, c = shape[:2]
    t, u = _leaf(*shape, scale=scale), _leaf(*shape)
    if channels_last:
        t, u = (x.detach().to(memory_format=torch.channels_last).requires_grad_() for x in (t, u))
    alpha = torch.tensor(0.6, requires_grad=True)
    bn = None if bn_mode is None else _bn(c, bn_mode == "train", seed)
    sbn = None if sbn_mode is None else _bn(c, sbn_mode == "train", seed + 1)
    dp = DropPath(0.5).train() if drop else None
    mods = (copy.deepcopy(bn), copy.deepcopy(sbn))
    out, grads = _run(t, u, alpha, bn, sbn, norm, act, dp, "native")
    ref, ref_grads = _run(t, u, alpha, *mods, norm, act, dp, "reference")
    scale_out = ref.abs().max().item() + 1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * scale_out)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * (b.abs().max().item() + 1))
    for m, m_ref in zip((bn, sbn), mods, strict=True):
        if m is not None:  # running statistics updated exactly as the module updates them
            torch.testing.assert_close(m.running_mean, m_ref.running_mean, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(m.running_var, m_ref.running_var, rtol=1e-6, atol=1e-7)
            assert int(m.num_batches_tracked) == int(m_ref.num_batches_tracked)


@pytest.mark.parametrize("norm", NATIVE_NORMS)
@pytest.mark.parametrize("bn_mode", ["train", "eval", None])
@pytest.mark.parametrize("sbn_mode", ["train", "eval", None])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_native_matches_reference_with_norms(
    native_backend, calls, norm, bn_mode, sbn_mode, channels_last
):
    """Channels_last in blocks of 16 channels: 21 channels leave a partial block."""
    shape = (3, 21, 7, 9) if channels_last else (3, 6, 7, 9)
    _compare(shape, norm, torch.relu, bn_mode, sbn_mode, drop=False, channels_last=channels_last)
    assert calls == {"native": 2, "eager": 0}  # the fused kernels really ran, forward and backward


@pytest.mark.parametrize("norm", NATIVE_NORMS)
@pytest.mark.parametrize("act", [nn.ReLU(), nn.Identity()], ids=["relu", "identity"])
@pytest.mark.parametrize("drop", [False, True], ids=["no-drop", "drop-path"])
def test_native_matches_reference_act_and_drop_path(native_backend, norm, act, drop):
    _compare((8, 5, 6, 4), norm, act, "train", "train", drop=drop, seed=3)


@pytest.mark.parametrize(
    "shape", [(1, 3, 1, 1), (2, 4, 1, 5), (1, 2, 97, 131), (2, 3, 17, 1)], ids=str
)
def test_native_odd_shapes(native_backend, shape):
    mode = "eval" if shape[0] * shape[2] * shape[3] < 2 else "train"
    _compare(shape, "spatial", torch.relu, mode, None, drop=False, seed=5)


@pytest.mark.parametrize("scale", [60.0, 300.0], ids=["saturating", "overflowing"])
def test_native_softmax_shifts_by_the_maximum_when_exp_would_overflow(native_backend, scale):
    """F far above exp's range: the kernel falls back to max-shifted exponentials."""
    _compare((2, 3, 5, 6), "spatial", torch.relu, None, None, drop=False, scale=scale)


def test_native_softmax_underflowing_plane(native_backend):
    """F far below exp's range everywhere: still a distribution (max-shifted), like the reference."""
    torch.manual_seed(0)
    f = (torch.randn(2, 3, 4, 5) - 500).requires_grad_(True)
    s, alpha = torch.randn(2, 3, 4, 5), torch.tensor(1.0)
    out = arl_merge(f, s, alpha, "spatial", nn.Identity())
    ref = arl_merge_reference(f, s, alpha, get_normalization("spatial")(f), nn.Identity())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-3)


def test_native_nan_stays_in_its_plane(native_backend):
    f, s, alpha = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor(0.5)
    f[1, 2, 0, 0] = float("nan")
    out = arl_merge(f, s, alpha, "spatial", nn.Identity())
    ref = arl_merge_reference(f, s, alpha, get_normalization("spatial")(f), nn.Identity())
    assert torch.isnan(out[1, 2]).all() and torch.isnan(ref[1, 2]).all()
    bad = torch.zeros_like(out, dtype=torch.bool)
    bad[1, 2] = True
    assert not torch.isnan(out[~bad]).any()
    torch.testing.assert_close(out[~bad], ref[~bad])


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_native_alpha_zero_is_the_plain_epilogue_bit_for_bit(native_backend, train):
    """alpha = 0: relu(bn(t) + s), rounded as PyTorch's own BatchNorm kernel rounds it."""
    torch.manual_seed(0)
    t, u = torch.randn(4, 16, 14, 14) * 3 + 1, torch.randn(4, 16, 14, 14)
    bn = _bn(16, train, 0)
    bn_ref = copy.deepcopy(bn)
    with torch.no_grad():
        out = arl_merge_bn(t, bn, u, torch.tensor(0.0))
        ref = torch.relu(bn_ref(t) + u)
    assert torch.equal(out, ref)
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var, rtol=1e-6, atol=0)


def test_native_inference_paths_agree(native_backend, calls):
    """no_grad, inference_mode and the autograd op give the same output."""
    t, u, bn = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6), _bn(8, False, 0)
    alpha = nn.Parameter(torch.tensor(0.4))
    out = arl_merge_bn(t, bn, u, alpha)
    assert out.grad_fn is not None and calls == {"native": 1, "eager": 0}
    with torch.no_grad():
        no_grad = arl_merge_bn(t, bn, u, alpha)
    with torch.inference_mode():
        inference = arl_merge_bn(t, bn, u, alpha)
    assert torch.equal(out.detach(), no_grad) and torch.equal(no_grad, inference)


def test_native_result_does_not_depend_on_thread_count(native_backend):
    torch.manual_seed(0)
    results = []
    threads = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            t, u = _leaf(2, 16, 9, 9), _leaf(2, 16, 9, 9)
            with torch.no_grad():
                t.copy_(torch.arange(t.numel()).reshape(t.shape).sin())
                u.copy_(torch.arange(u.numel()).reshape(u.shape).cos())
            alpha = torch.tensor(0.5, requires_grad=True)
            out = arl_merge_bn(t, _bn(16, True, 0), u, alpha)
            results.append((out, *torch.autograd.grad(out.sum(), [t, u, alpha])))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", ["float64", "channel", "bf16", "strided"], ids=str)
def test_native_falls_back_to_eager_kernels_where_it_does_not_apply(native_backend, calls, case):
    torch.manual_seed(0)
    dtype = {"float64": torch.float64, "bf16": torch.bfloat16}.get(case, torch.float32)
    t = torch.randn(2, 4, 5, 6, dtype=dtype)
    if case == "strided":  # neither NCHW- nor channels_last-contiguous
        t = torch.randn(2, 4, 5, 12)[..., ::2]
    t.requires_grad_(True)
    u = torch.randn(2, 4, 5, 6, dtype=dtype)
    norm = "channel" if case == "channel" else "spatial"
    bn = _bn(4, True, 0).to(dtype)
    out = arl_merge_bn(t, bn, u, torch.tensor(0.5, dtype=dtype, requires_grad=True), norm)
    out.sum().backward()
    assert calls == {"native": 0, "eager": 2}


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 4),
    c=st.integers(1, 5),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    scale=st.sampled_from([0.1, 1.0, 10.0]),
    alpha=st.floats(-2.0, 2.0),
    norm=st.sampled_from(NATIVE_NORMS),
)
def test_native_property_matches_reference(n, c, h, w, scale, alpha, norm):
    previous = set_merge_backend("native")
    try:
        torch.manual_seed(n * 1000 + c * 100 + h * 10 + w)
        t, u = _leaf(n, c, h, w, scale=scale), _leaf(n, c, h, w)
        a = torch.tensor(alpha, requires_grad=True)
        out = arl_merge(t, u, a, norm)
        ref = arl_merge_reference(t, u, a, get_normalization(norm)(t), torch.relu)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * scale)
        g = torch.autograd.grad(out.sum(), [t, u, a])
        g_ref = torch.autograd.grad(ref.sum(), [t, u, a])
        for x, y in zip(g, g_ref, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4 * (y.abs().max().item() + 1))
    finally:
        set_merge_backend(previous)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_jit_trace_records_the_straightforward_merge(native_backend):
    """A trace cannot see the fused kernels (nor a Python float alpha): the blocks trace the
    composition of tensor ops, so the traced model follows new inputs and new weights."""
    model = ab.ARLWrapper(timm.create_model("resnet26", num_classes=3), alpha_init=0.5).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        x2 = torch.randn(2, 3, 64, 48)
        before = model(x2)
        torch.testing.assert_close(traced(x2), before)
        for name, param in model.named_parameters():
            if name.endswith(".alpha"):
                param.fill_(-1.5)  # parameters are shared with the trace
        after = model(x2)
        assert not torch.allclose(after, before)
        torch.testing.assert_close(traced(x2), after)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("backend", ["native", "eager"])
def test_forward_mode_ad_and_torch_func_use_the_straightforward_merge(backend):
    """The custom op has no jvp or vmap rule: dual tensors and torch.func wrappers step around it,
    so tangents and batched results are those of the composition of tensor ops."""
    block = ab.convert_block(timm.create_model("resnet26").layer2[0], alpha_init=0.7).eval()
    block.requires_grad_(False)  # frozen weights: the no-grad fast path is what would be taken
    x, v = torch.randn(2, 256, 10, 12), torch.randn(2, 256, 10, 12)
    previous = set_merge_backend("reference")
    try:
        ref_out, ref_tangent = torch.func.jvp(block, (x,), (v,))
        ref_batched = torch.stack([block(x[i : i + 1])[0] for i in range(2)])
        set_merge_backend(backend)
        with fwAD.dual_level():
            out = fwAD.unpack_dual(block(fwAD.make_dual(x, v)))
        torch.testing.assert_close(out.primal, ref_out)
        torch.testing.assert_close(out.tangent, ref_tangent)
        _, tangent = torch.func.jvp(block, (x,), (v,))
        torch.testing.assert_close(tangent, ref_tangent)
        batched = torch.func.vmap(lambda xi: block(xi.unsqueeze(0))[0])(x)
        torch.testing.assert_close(batched, ref_batched)
    finally:
        set_merge_backend(previous)


# --- building, caching, and running without a compiler -------------------------------------------


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, check=False
    )


_BUILD = ROOT / "attnblocks" / "merge" / "build.py"
# the build module alone (standard library only: no PyTorch to import), as the library loads it
_LOAD = (
    "import importlib.util, logging, sys\n"
    "logging.basicConfig(level=logging.INFO)\n"
    f"spec = importlib.util.spec_from_file_location('ab_build', {str(_BUILD)!r})\n"
    "build = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(build)\n"
    "print(build.load_library()._name)\n"
)


_STUB = "int ab_abi_version(void) { return %d; }\n"
_FAKE_CXX = """#!/bin/sh
# a stand-in compiler: answers --version, waits $FAKE_CXX_SECONDS, then writes a stub library to -o
[ "$1" = --version ] && { echo "fake c++ 1.0"; exit 0; }
while [ $# -gt 1 ]; do [ "$1" = -o ] && out=$2; shift; done
sleep "${FAKE_CXX_SECONDS:-0}"
cp %s "$out"
"""


@pytest.fixture(scope="module")
def fake_cxx(tmp_path_factory) -> str:
    """A stand-in compiler that copies a stub library (``ab_abi_version`` only, built once here):
    the tests of the cache, the private folder, kills and concurrent builds exercise the build
    logic without compiling the kernels each time (one real build runs in the test below)."""
    from attnblocks.merge import build

    folder = tmp_path_factory.mktemp("fake_cxx")
    (folder / "stub.c").write_text(_STUB % build.ABI)
    stub = folder / "stub.so"
    try:
        cc = build._compiler()
    except build.BuildError as exc:
        pytest.skip(str(exc))
    done = subprocess.run(
        [cc, "-x", "c", "-shared", "-fPIC", str(folder / "stub.c"), "-o", str(stub)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    script = folder / "c++"
    script.write_text(_FAKE_CXX % stub)
    script.chmod(0o755)
    return str(script)


def test_native_library_is_built_once_into_the_cache_dir_readable_by_all(tmp_path):
    first = _python(_LOAD, {"ATTNBLOCKS_CACHE_DIR": str(tmp_path)})
    assert first.returncode == 0, first.stderr
    lib = Path(first.stdout.strip())
    assert lib.parent == tmp_path and lib.name.startswith("arl_merge-") and lib.suffix == ".so"
    assert (lib.stat().st_mode & 0o777) == 0o755  # a cache shared between users can load it
    assert first.stderr.count("building the native ARL merge kernels") == 1  # one line, not silent
    stamp = lib.stat().st_mtime_ns
    second = _python(_LOAD, {"ATTNBLOCKS_CACHE_DIR": str(tmp_path)})
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == str(lib) and lib.stat().st_mtime_ns == stamp  # reused
    assert "building" not in second.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [lib.name]  # no temporary left behind


def test_native_unwritable_cache_dir_builds_into_a_private_folder(tmp_path, fake_cxx):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {"ATTNBLOCKS_CACHE_DIR": str(blocker / "cache"), "TMPDIR": str(tmp_path), "CXX": fake_cxx}
    done = _python(_LOAD, env)
    assert done.returncode == 0, done.stderr
    lib = Path(done.stdout.strip())
    assert lib.parent == tmp_path / f"attnblocks-{os.getuid()}"


def test_native_build_killed_midway_leaves_nothing_behind(tmp_path, fake_cxx):
    """kill -9 while the compiler runs: the cache holds no partial library and no temporary, and
    the next build sweeps the killed build's folder and succeeds."""
    env = {**os.environ, "ATTNBLOCKS_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path)}
    env.update(PYTHONPATH=str(ROOT), CXX=fake_cxx, FAKE_CXX_SECONDS="2")
    proc = subprocess.Popen([sys.executable, "-c", _LOAD], env=env, stderr=subprocess.PIPE)
    assert b"building" in proc.stderr.readline()  # the compiler is starting
    proc.kill()
    proc.wait()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith("attnblocks-build-")]
    assert not any((tmp_path / "cache").glob("*.so"))
    done = _python(
        _LOAD,
        {"ATTNBLOCKS_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path), "CXX": fake_cxx},
    )
    assert done.returncode == 0, done.stderr
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".so"]
    for name in leftovers:  # swept (the compiler, orphaned by the kill, may finish first)
        assert not (tmp_path / name).exists() or _orphan_compiler_running()


def _orphan_compiler_running() -> bool:
    done = subprocess.run(["pgrep", "-f", "arl_merge.cpp"], capture_output=True, check=False)
    return done.returncode == 0


def test_native_concurrent_first_builds_do_not_collide(tmp_path, fake_cxx):
    """Two processes (e.g. torchrun ranks) building into an empty cache at once both load a library
    (the compiler runs 0.5 s, so that both builds overlap)."""
    full_env = {**os.environ, "ATTNBLOCKS_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    full_env.update(CXX=fake_cxx, FAKE_CXX_SECONDS="0.5")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _LOAD],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err.decode() for _, err in outs]
    names = {out.decode().strip() for out, _ in outs}
    assert len(names) == 1 and [p.name for p in tmp_path.iterdir()] == [Path(names.pop()).name]


_NO_COMPILER = (
    "import torch\n"
    "import attnblocks as ab\n"
    "from attnblocks import merge\n"
    "from attnblocks.merge import native as n\n"
    "t, u = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)\n"
    "bn = torch.nn.BatchNorm2d(3)\n"
    "out = merge.arl_merge_bn(t.requires_grad_(), bn, u, torch.tensor(0.5))\n"
    "out.sum().backward()\n"
    "merge.arl_merge_bn(t, bn, u, torch.tensor(0.5))\n"
    "ref = torch.relu(u + bn(t) + 0.5 * torch.softmax(bn(t).flatten(2), -1).view_as(t) * u)\n"
    "print(n.error(), (out - ref).abs().max().item() < 1e-5, sep='|')\n"
)


def test_compiler_is_cxx_when_set_and_never_replaced(tmp_path, monkeypatch):
    """``$CXX`` wins, and one that does not exist is an error even with compilers on ``PATH``; without
    ``$CXX`` the first compiler on ``PATH``, and none is an error that says what to install."""
    from attnblocks.merge import build

    fake = tmp_path / "bin" / "g++"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    monkeypatch.delenv("CXX", raising=False)
    assert build._compiler() == str(fake)
    monkeypatch.setenv("CXX", str(fake))
    assert build._compiler() == str(fake)
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(build.BuildError, match=r"CXX='/nonexistent/g\+\+' is not an executable"):
        build._compiler()
    monkeypatch.setenv("CXX", "")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(build.BuildError, match="no C\\+\\+ compiler found"):
        build._compiler()


def test_native_without_a_compiler_logs_once_and_runs_eager_in_process(
    tmp_path, monkeypatch, caplog
):
    """No compiler: one log record (no Python warning: warnings are errors here), the reason in
    ``native.error()``, and the merge runs its eager kernels, forward and backward, twice."""
    monkeypatch.setattr(native, "_tried", False)  # as in a fresh process: nothing tried yet
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_error", None)
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("CXX", "")
    monkeypatch.setenv("ATTNBLOCKS_CACHE_DIR", str(tmp_path / "cache"))
    previous = set_merge_backend("native")
    torch.manual_seed(0)
    t, u = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 3, 4, 4)
    bn = nn.BatchNorm2d(3)
    try:
        with warnings.catch_warnings(), caplog.at_level("INFO", logger="attnblocks.merge"):
            warnings.simplefilter("error")
            out = arl_merge_bn(t, bn, u, torch.tensor(0.5))
            out.sum().backward()
            again = arl_merge_bn(t, bn, u, torch.tensor(0.5))
    finally:
        set_merge_backend(previous)
    f = bn(t)
    ref = torch.relu(u + f + 0.5 * torch.softmax(f.flatten(2), -1).view_as(t) * u)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(again, out) and t.grad is not None
    assert "no C++ compiler found" in native.error()
    logged = [r.getMessage() for r in caplog.records if "kernels unavailable" in r.getMessage()]
    assert len(logged) == 1 and "ATTNBLOCKS_MERGE_BACKEND=eager" in logged[0], logged
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# ~8 s each (a fresh interpreter imports torch): the log line, the eager fallback and warnings as
# errors are checked in-process above, the choice of compiler by test_compiler_is_cxx_...
@pytest.mark.slow
@pytest.mark.parametrize(
    ("cxx", "expect"),
    [("", "no C++ compiler found"), ("/nonexistent/g++", "CXX='/nonexistent/g++' is not")],
    ids=["no-compiler", "explicit-CXX-missing"],
)
def test_native_without_a_compiler_logs_once_and_runs_eager_even_under_W_error(
    tmp_path, cxx, expect
):
    """No compiler (or an explicit CXX that does not exist, which is reported, never replaced by
    another compiler), in a fresh interpreter under -W error: one log line on stderr, and the merge
    runs its eager kernels."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "ATTNBLOCKS_CACHE_DIR": str(tmp_path / "cache"), "CXX": cxx}
    env.update(PATH=str(empty) if not cxx else os.environ["PATH"], PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", _NO_COMPILER],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    error, close = done.stdout.strip().split("|")
    assert expect in error and close == "True"
    assert done.stderr.count("native ARL merge kernels unavailable") == 1, done.stderr
    assert "ATTNBLOCKS_MERGE_BACKEND=eager" in done.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_native_is_the_default_backend_unless_the_environment_says_otherwise(monkeypatch):
    """The variable is read when the backend is first needed (not at import), unless one was set."""
    monkeypatch.setattr(merge, "_backend", None)
    monkeypatch.delenv("ATTNBLOCKS_MERGE_BACKEND", raising=False)
    assert merge.get_merge_backend() == "native"
    monkeypatch.setenv("ATTNBLOCKS_MERGE_BACKEND", "eager")
    assert merge.get_merge_backend() == "eager"
    assert merge.set_merge_backend("reference") == "eager"  # an explicit choice wins
    assert merge.get_merge_backend() == "reference"


def test_bad_backend_in_the_environment_fails_at_use_not_at_import(monkeypatch):
    monkeypatch.setattr(merge, "_backend", None)
    monkeypatch.setenv("ATTNBLOCKS_MERGE_BACKEND", "fast")
    with pytest.raises(ValueError, match="ATTNBLOCKS_MERGE_BACKEND='fast' is not a merge backend"):
        merge.get_merge_backend()
