"""The registered operator ``torch.ops.attnblocks.arl_merge``: opcheck, torch.compile without graph
breaks, torch.export and ONNX with standard ops only, and the profiler."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

import attnblocks as ab
from attnblocks.merge import arl_merge_backward_op, arl_merge_op, native, set_merge_backend
from attnblocks.merge.spec import CODES

KERNELS = ["native", "eager"]


@pytest.fixture
def backend():
    previous = ab.get_merge_backend()
    yield set_merge_backend
    set_merge_backend(previous)


def _small_arl_resnet(block=BasicBlock) -> nn.Module:
    """An ARL ResNet-10 (one block per stage, projection shortcuts): every block kind of the
    operator's callers, cheap to trace."""
    torch.manual_seed(0)
    src = ResNet(block=block, layers=[1, 1, 1, 1], num_classes=3)
    with torch.no_grad():  # randomised BatchNorms, as after training
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return ab.ARLWrapper(src, alpha_init=0.5)


def _op_args(norm: str, f_mode: int, s_mode: int, kernels: str, relu: bool = True):
    g = torch.Generator().manual_seed(f_mode * 10 + s_mode)
    t = torch.randn(2, 5, 4, 6, generator=g).requires_grad_()
    u = torch.randn(2, 5, 4, 6, generator=g).requires_grad_()
    alpha = torch.tensor(0.7, requires_grad=True)

    def norm_args(mode: int):
        if mode == 0:
            return [None] * 4
        w = (torch.rand(5, generator=g) + 0.5).requires_grad_()
        return [w, torch.randn(5, generator=g).requires_grad_(), torch.randn(5, generator=g),
                torch.rand(5, generator=g) + 0.5]  # fmt: skip

    return (t, u, alpha, None, *norm_args(f_mode), *norm_args(s_mode), CODES[norm], relu,
            f_mode, s_mode, (1e-5, 0.1, 1e-3, 0.2), kernels)  # fmt: skip


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize(
    ("norm", "f_mode", "s_mode"),
    [("spatial", 2, 2), ("spatial", 1, 0), ("sigmoid", 2, 1), ("channel", 0, 2), ("spatial", 0, 0)],
    ids=lambda v: str(v),
)
def test_opcheck_forward_and_autograd(norm, f_mode, s_mode, kernels):
    """Schema, fake tensors, autograd registration and AOT dispatch with dynamic shapes."""
    torch.library.opcheck(arl_merge_op, _op_args(norm, f_mode, s_mode, kernels))


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "identity"])
def test_opcheck_backward_op(kernels, relu):
    args = _op_args("spatial", 2, 1, kernels, relu)
    out = arl_merge_op(*args)
    y = out[0]
    t, u, alpha, scale, fw, fb, _, _, sw, sb = args[:10]
    plain = [
        a.detach() if isinstance(a, torch.Tensor) else a for a in (t, u, alpha, fw, fb, sw, sb)
    ]
    dy = torch.randn_like(y)
    bwd_args = (dy, y.detach() if relu else None, plain[0], plain[1], plain[2], scale, plain[3],
                plain[4], out[1].detach(), plain[5], plain[6], out[3].detach(), CODES["spatial"],
                2, 1, True, True, kernels)  # fmt: skip
    torch.library.opcheck(arl_merge_backward_op, bwd_args)


def test_op_updates_running_statistics_through_its_outputs_only():
    """The op is functional: it returns the updated running statistics and mutates nothing; the
    public entry point copies them into the module's buffers, as nn.BatchNorm2d would."""
    args = _op_args("spatial", 2, 2, "eager")
    rm_before = args[6].clone()
    _, _, f_running, _, s_running = arl_merge_op(*args)
    assert torch.equal(args[6], rm_before)
    bn = nn.BatchNorm2d(5, momentum=0.1, eps=1e-5)
    with torch.no_grad():
        bn.running_mean.copy_(args[6])
        bn.running_var.copy_(args[7])
    bn.train()(args[0].detach())
    torch.testing.assert_close(f_running[0], bn.running_mean)
    torch.testing.assert_close(f_running[1], bn.running_var)
    assert s_running.shape == (2, 5)


@pytest.mark.parametrize(
    "train",
    # ~5 s each; eval mode compiles fullgraph in test_arl.py's single-block case (aot_eager), and
    # the op's eval-mode norms pass opcheck's autograd and AOT checks above
    [True, pytest.param(False, marks=pytest.mark.slow)],
    ids=["train", "eval"],
)
def test_compile_fullgraph_arl_resnet_has_no_graph_break(train, backend):
    """fullgraph=True raises on any graph break; aot_eager runs the op's fake implementation and
    autograd formula as Inductor would (the Inductor build itself is in the slow set)."""
    backend("native")
    model = _small_arl_resnet(Bottleneck).train(train)
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 40, 36)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    set_merge_backend("reference")
    expected = ref(x)
    expected.sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grads = {k: p.grad for k, p in ref.named_parameters()}
    for k, p in model.named_parameters():
        scale = grads[k].abs().max().item()
        err = (p.grad - grads[k]).abs().max().item()
        assert err <= 1e-5 * (1 + scale), f"{k}: {err:.3g} (scale {scale:.3g})"
    for (k, b), b_ref in zip(model.named_buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(b, b_ref, msg=k)  # running statistics updated under compile


def _graph_ops(program) -> set[str]:
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function"}


def test_export_dynamic_batch_and_size_records_standard_ops():
    model = _small_arl_resnet().eval()
    x = torch.randn(2, 3, 64, 48)
    dims = {0: torch.export.Dim("batch", min=1, max=64)}
    dims |= {2: torch.export.Dim("h", min=33, max=1024), 3: torch.export.Dim("w", min=33, max=1024)}
    program = torch.export.export(model, (x,), dynamic_shapes={"x": dims})
    ops = _graph_ops(program)
    assert not [op for op in ops if "attnblocks" in op]  # the composition, not the custom op
    assert "aten._softmax.default" in ops or "aten.softmax.int" in ops
    for shape in [(1, 3, 97, 131), (5, 3, 64, 64)]:
        x2 = torch.randn(*shape)
        torch.testing.assert_close(program.module()(x2), model(x2), rtol=1e-5, atol=1e-5)


# ~10 s; in the default set docs/deploy.md's snippet exports an ARL ResNet (the op inside) to ONNX
# and runs it in onnxruntime at another size, which loads standard operators only
@pytest.mark.slow
def test_onnx_export_matches_eager_in_onnxruntime(tmp_path):
    pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript (test extra)")
    onnx = pytest.importorskip("onnx", reason="onnx is a test extra")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test extra")
    model = _small_arl_resnet().eval()
    x = torch.randn(2, 3, 64, 48)
    program = torch.onnx.export(
        model, (x,), dynamo=True, input_names=["image"], output_names=["logits"],
        dynamic_shapes={"x": {0: "batch", 2: "height", 3: "width"}}, verbose=False,
    )  # fmt: skip
    path = tmp_path / "arl.onnx"
    program.save(str(path))
    kinds = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Softmax" in kinds and not [k for k in kinds if "arl" in k.lower()]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 64, 48), (1, 3, 97, 131), (3, 3, 128, 96)]:
        xi = torch.randn(*shape)
        (got,) = session.run(None, {"image": xi.numpy()})
        with torch.no_grad():
            want = model(xi).numpy()
        assert abs(got - want).max() <= 1e-5


@pytest.mark.parametrize("kernels", KERNELS)
def test_profiler_shows_the_op_by_name(kernels, backend):
    backend(kernels)
    model = _small_arl_resnet()
    x = torch.randn(2, 3, 32, 32)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x).sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert {"attnblocks::arl_merge", "attnblocks::arl_merge_backward"} <= names


def test_native_kernels_prepared_when_a_block_is_converted(monkeypatch, backend):
    """The build happens at conversion, never inside a training step."""
    backend("native")
    seen = []
    monkeypatch.setattr(native, "prepare", lambda: seen.append(1) or True)
    ab.convert_block(timm.create_model("resnet18").layer1[0])
    assert seen
