"""Before the CUDA timings: the environment, and the merge operator's CUDA kernels checked against
the eager kernels on the device (values and gradients), so that the figures that follow are of
kernels known to compute the right numbers.

    python -m benchmarks.gpu_check --device cuda
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch

import attnblocks as ab
from attnblocks.merge import eager
from attnblocks.merge.spec import CODES, NormIn, NormOut
from examples.run import environment, resolve_device


def _check_kernels(device: torch.device) -> float:
    """Largest relative difference between the CUDA kernels and the eager ones over a small grid."""
    from attnblocks.merge import triton_kernels as tk

    worst = 0.0
    for norm in ("spatial", "sigmoid", "channel"):
        for dtype in (torch.float32, torch.bfloat16):
            for cl in (False, True):
                g = torch.Generator(device=device).manual_seed(0)
                shape = (4, 40, 13, 11)
                t = torch.randn(shape, device=device, generator=g).to(dtype)
                u = torch.randn(shape, device=device, generator=g).to(dtype)
                if cl:
                    t, u = (x.to(memory_format=torch.channels_last) for x in (t, u))
                c = shape[1]
                bn = NormIn(
                    torch.rand(c, device=device) + 0.5, torch.randn(c, device=device),
                    torch.randn(c, device=device), torch.rand(c, device=device) + 0.5, 2, 1e-5, 0.1,
                )  # fmt: skip
                none = NormIn(None, None, None, None, 0, 0.0, 0.0)
                alpha = torch.tensor(0.7, device=device)
                code = CODES[norm]
                got = tk.merge_forward(t, u, alpha, None, bn, none, code, True)
                t64, u64 = t.double(), u.double()
                bn64 = bn._replace(**{k: getattr(bn, k).double() for k in
                                      ("weight", "bias", "running_mean", "running_var")})  # fmt: skip
                want = eager.merge_forward(t64, u64, alpha.double(), None, bn64, none, code, True)
                dy = torch.randn(shape, device=device, generator=g).to(dtype)
                out_f, out_s = (
                    NormOut(bn.weight, bn.bias, got[1], 2),
                    NormOut(None, None, got[3], 0),
                )
                grads = tk.merge_backward(
                    dy, got[0], t, u, alpha, None, out_f, out_s, code, True, True
                )
                ref = eager.merge_backward(
                    dy.double(), got[0].double(), t64, u64, alpha.double(), None,
                    NormOut(bn64.weight, bn64.bias, want[1], 2), NormOut(None, None, want[3], 0),
                    code, True, True,
                )  # fmt: skip
                for a, b in zip((got[0], *grads[:4]), (want[0], *ref[:4]), strict=True):
                    scale = b.abs().max().item() + 1e-12
                    worst = max(worst, (a.double() - b).abs().max().item() / scale)
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    meta = environment(device)
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, attnblocks {ab.__version__}"
    )
    for key in ("device_name", "cuda", "triton", "git_commit"):
        if key in meta:
            print(f"  {key}: {meta[key]}")
    if device.type != "cuda":
        print("not a CUDA device: the CUDA kernel check is skipped")
        return 0
    from attnblocks.merge import triton_kernels as tk

    if not tk.available():
        print("error: Triton is not importable here; the merge would run its eager kernels")
        return 1
    worst = _check_kernels(device)
    print(f"Triton merge kernels vs float64: largest relative difference {worst:.2e}")
    if worst > 2e-2:  # bf16 rounds to 8 bits; fp32 agrees to ~1e-6
        print("error: the CUDA kernels disagree with the reference")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
