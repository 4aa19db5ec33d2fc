"""Quick start: turn a timm ResNet-50 into an ARL network and look at what changed.

    python examples/quickstart.py [--arch resnet50] [--weights PATH] [--image-size 224]

Converts the model (weights carried over), prints the conversion report and the scale gates, runs a
forward pass, checks that alpha = 0 reproduces the source model, and records the attention masks.
"""

from __future__ import annotations

import argparse

import timm
import torch

import attnblocks as ab


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50", help="any timm ResNet-family model name")
    parser.add_argument("--weights", default=None, help="a local checkpoint of the plain model")
    parser.add_argument("--normalization", default="spatial", choices=ab.list_normalizations())
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=2)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    resnet = timm.create_model(args.arch, pretrained=False, num_classes=args.num_classes)
    if args.weights:
        print(ab.load_checkpoint(resnet, args.weights, strict=False))
    model = ab.ARLWrapper(resnet, normalization=args.normalization, alpha_init=1e-3).eval()
    print(model.conversion_report)
    print("\nscale gates (alpha) by block:")
    for name, alpha in model.alphas().items():
        print(f"  {name:10s} {alpha.item():.4g}")

    images = torch.randn(2, 3, args.image_size, args.image_size)
    with torch.no_grad(), ab.record_attention(model) as maps:
        logits = model(images)
    print(f"\nlogits {tuple(logits.shape)}: {logits.softmax(-1)[0].tolist()} (class probabilities)")

    exact = ab.ARLWrapper(resnet, normalization=args.normalization, alpha_init=0.0).eval()
    with torch.no_grad():
        diff = (exact(images) - resnet.eval()(images)).abs().max().item()
    print(f"alpha = 0 reproduces the source {args.arch}: max |difference| = {diff:.2e}")

    print(f"\nattention masks of the last forward ({len(maps)} blocks):")
    if not args.weights:
        print("  (untrained timm ResNets zero-initialise each block's last norm, so F = 0 and the")
        print("   spatial masks are uniform, 1/(H*W), until the network has learned something)")
    for name, mask in maps.items():
        sums = mask.flatten(2).sum(-1)
        print(
            f"  {name:10s} {tuple(mask.shape)}  max {mask.max().item():.2e}"
            f"  per-channel sum {sums.min().item():.3f}..{sums.max().item():.3f}"
        )


if __name__ == "__main__":
    main()
