"""Predictions of a trained network for a folder of images or an ISIC split, in the official CSV format.

The network comes from a run folder of ``isic2017_arl.py``, ``isic2017_attnmel.py`` or
``isic2018_care.py`` (its ``config.json`` and ``checkpoints/best.pt``, or ``last.pt`` where the run
wrote no ``best.pt``, or the one ``--checkpoint`` names; the weight average where the run kept one) or from an ONNX file that ``--export-onnx`` wrote (the file carries the
run's preprocessing and output columns). Each image gets the run's test-time views: ARL's 9 views
(probabilities averaged), AttnMel's centre crop, CARE's resize; the scores are those the training
script writes into its own ``predictions.csv`` for the same images.

    python examples/predict.py --run runs/arl --images photos/ --out photos.csv
    python examples/predict.py --run runs/arl --data-root ISIC2017 --split test --out test.csv
    python examples/predict.py --run runs/arl --export-onnx arl.onnx     # the network as ONNX
    python examples/predict.py --onnx arl.onnx --images photos/ --out photos.csv --overlays

Writes ``--out`` (``image_id,melanoma,seborrheic_keratosis`` for ISIC 2017 runs, ``image,MEL,...``
for ISIC 2018; what the official ``isic-challenge-scoring`` reads), ``<out>.unreadable.txt`` listing
the images that could not be read (also printed; they are skipped) and, with ``--overlays``, one PNG
per image in ``<out stem>_overlays/``: the class activation map and the attention of the last ARL
block, the gates' maps of an AttnMel network, the Grad-CAM of a CARE network, or the attention
outputs of an ONNX graph. A user mistake ends in one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python examples/predict.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

import attnblocks as ab
from examples.isic import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ISIC2016Dataset,
    ISIC2017Dataset,
    ISIC2018Dataset,
    arl_test_transform,
    attnmel_eval_transform,
    load_image,
    write_predictions_csv,
)
from examples.run import atomic_path, atomic_write, resolve_device

METADATA_KEY = "attnblocks.predict"  # ONNX metadata: the preprocessing and output profile (JSON)
SCRIPTS = ("isic2017_arl", "isic2017_attnmel", "isic2018_care")
CARE_CLASSES = ISIC2018Dataset.class_names
DATASETS = {"isic2016": ISIC2016Dataset, "isic2017": ISIC2017Dataset, "isic2018": ISIC2018Dataset}


class UserError(ValueError):
    """A mistake in the command line or its files: one ``error:`` line, exit status 2."""


# --- the profile: everything needed to preprocess images and name the outputs ------------------


def profile_from_config(config: dict[str, Any], run: Path) -> dict[str, Any]:
    """The run's test-time preprocessing and prediction columns, from its ``config.json``."""
    s = config.get("settings", {})
    if "rare_classes" in s:  # each script's settings have keys of their own
        script = "isic2018_care"
    elif "backbone" in s:
        script = "isic2017_attnmel"
    elif "patches_per_image" in s:
        script = "isic2017_arl"
    else:
        raise KeyError(f"settings of none of {', '.join(SCRIPTS)}")
    p: dict[str, Any] = {"script": script, "image_size": int(s["image_size"])}
    # the run's input normalisation (its model's pretrained_cfg); runs written before it was
    # recorded all normalised with ImageNet's
    norm = config.get("input_normalization") or {}
    p["mean"] = [float(v) for v in norm.get("mean", IMAGENET_MEAN)]
    p["std"] = [float(v) for v in norm.get("std", IMAGENET_STD)]
    p["load_size"] = s.get("load_size")
    if p["load_size"] is not None:  # the run read its images through this resized-image cache
        default = "isic2017-resized" if script == "isic2017_arl" else "isic-resized"
        p["cache_dir"] = s.get("cache_dir") or f"~/.cache/attnblocks/{default}"
    if script == "isic2017_arl":
        task = s.get("task", "both")
        p |= {"views": "arl9", "test_views": s.get("test_views", "deterministic"),
              "color_constancy": bool(s.get("color_constancy", False)), "dataset": "isic2017",
              "task": "3class" if task == "both" else task, "id_column": "image_id",
              "output": "3class" if task == "both" else "binary",
              "columns": ["melanoma", "seborrheic_keratosis"] if task == "both" else [task],
              "num_classes": 3 if task == "both" else 2}  # fmt: skip
    elif script == "isic2017_attnmel":
        dataset = s.get("dataset", "isic2017")
        cls = DATASETS[dataset]
        multi = dataset == "isic2018"
        p |= {"views": "attnmel", "dataset": dataset,
              "task": {"isic2017": "melanoma", "isic2016": "malignant"}.get(dataset, "7class"),
              "id_column": "image_id" if dataset == "isic2017" else "image",
              "output": "multiclass" if multi else "binary",
              "columns": list(cls.csv_columns) if multi else [cls.csv_columns[0]],
              "num_classes": 7 if multi else 2}  # fmt: skip
    else:
        p |= {"views": "care", "dataset": "isic2018", "task": "7class", "id_column": "image",
              "output": "multiclass", "columns": list(CARE_CLASSES), "num_classes": 7,
              "load_size": None}  # fmt: skip
        if s.get("data_root") is not None:  # real data: loaded at the longer input side
            p["load_size"] = max(care_input_size(p["image_size"]))
    p["split"] = {}  # ISIC 2018 lesion split: AttnMel keeps the dataset's default fractions
    if script == "isic2018_care":
        p["split"] = {"val_fraction": s["val_fraction"], "test_fraction": s["test_fraction"]}
    p["checkpoint"] = "last.pt" if s.get("select") == "last" else "best.pt"
    p["split_file"] = str(run / "split.json") if (run / "split.json").is_file() else None
    return p


def care_input_size(image_size: int) -> tuple[int, int]:
    """``isic2018_care.py``'s network input: ``image_size`` high, 4:3."""
    return image_size, round(image_size * 4 / 3)


def build_transform(p: dict[str, Any]):
    from torchvision.transforms import v2

    size = p["image_size"]
    mean, std = profile_mean_std(p)
    if p["views"] == "arl9":
        return arl_test_transform(
            size, p["test_views"], color_constancy=p["color_constancy"], mean=mean, std=std
        )
    if p["views"] == "attnmel":
        return attnmel_eval_transform(size, mean=mean, std=std)
    return v2.Compose([
        v2.Resize(care_input_size(size), antialias=True),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean, std),
    ])  # fmt: skip


def profile_mean_std(p: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The profile's input mean/std (ImageNet's for an ONNX file exported before they were
    recorded)."""
    return list(p.get("mean", IMAGENET_MEAN)), list(p.get("std", IMAGENET_STD))


def scores_from_probs(probs: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """Class probabilities -> the official columns (as the training scripts write them)."""
    if p["output"] == "3class":
        return probs[:, 1:3]
    if p["output"] == "binary":
        return probs[:, 1:2]
    return probs


# --- the network: rebuilt from a run folder, or an ONNX session ---------------------------------


def build_model(config: dict[str, Any], p: dict[str, Any]) -> nn.Module:
    """The run's network, built as its training script builds it (no pretrained weights)."""
    s = config["settings"]
    if p["script"] == "isic2017_arl":
        import timm

        nc = p["num_classes"]
        if s["arch"] == "arl_cnn14":
            plain = ab.resnet14(nc)
        else:  # arl_cnn50 is a ResNet-50; any other --arch is the timm model of that name
            plain = timm.create_model("resnet50" if s["arch"] == "arl_cnn50" else s["arch"],
                                      num_classes=nc)  # fmt: skip
        if s.get("no_arl"):
            return plain
        return ab.ARLWrapper(plain, normalization=s["normalization"], alpha_init=s["alpha_init"])
    if p["script"] == "isic2017_attnmel":
        from examples import isic2017_attnmel as attnmel

        stages = s.get("gate_stages")
        return attnmel.build_model(attnmel.ModelSettings(
            backbone=s["backbone"], num_classes=p["num_classes"],
            gate_stages=None if stages is None else tuple(stages), head=s["head"],
            normalization=s["normalization"],
        ))  # fmt: skip
    from examples import isic2018_care as care

    return care.build_model(care.ModelSettings(s["arch"], len(care.CLASSES), weights="none"))


def load_run(
    run: Path, checkpoint: str | None = None
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """``(model in eval mode, profile, config)`` of a run folder."""
    if not run.is_dir():
        raise UserError(f"--run {run} is not a folder")
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"--run {run} has no config.json; is it a training script's run folder?")
    try:
        config = json.loads(cfg_path.read_text())
        profile = profile_from_config(config, run)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{cfg_path} is not a training run's config.json: {err!r}") from err
    if checkpoint not in (None, "best", "last"):
        raise UserError(f"--checkpoint must be best or last, got {checkpoint!r}")
    if checkpoint is not None:
        profile["checkpoint"] = f"{checkpoint}.pt"
    ckpt = run / "checkpoints" / profile["checkpoint"]  # default: the one the run tested
    if checkpoint is not None and not ckpt.is_file():
        raise UserError(f"--checkpoint {checkpoint}: {run} has no checkpoints/{ckpt.name}")
    if not ckpt.is_file():  # a run without a best epoch (CARE without stage 2) tested last.pt
        ckpt = run / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            raise UserError(f"--run {run} has no checkpoints/best.pt or checkpoints/last.pt")
        print(f"{run}: no best.pt, using {ckpt.name}", file=sys.stderr)
    model = build_model(config, profile)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)  # the run's own file
    # the run validated and tested the weight average when it kept one (--recipe timm's EMA)
    state = saved["ema"] if saved.get("ema") else saved["model"]
    if profile["script"] == "isic2017_attnmel":  # the script trains WithAttention(net): "net."
        state = {k.removeprefix("net."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"{ckpt} does not fit the network {cfg_path} describes: {err}") from err
    profile["source"] = f"{ckpt} (epoch {saved.get('epoch')})"
    profile["target_layer"] = config.get("target_layer")
    return model.eval(), profile, config


def pads_from_input_size(model: nn.Module) -> bool:
    """Whether ``model`` computes its padding from the input size at run time (timm's TensorFlow
    'same' padding: ``Conv2dSame`` and the pooling ``*Same`` layers of ``tf_`` models)."""
    from timm.layers import AvgPool2dSame, Conv2dSame, ScaledStdConv2dSame, StdConv2dSame
    from timm.layers.pool2d_same import MaxPool2dSame

    kinds = (Conv2dSame, StdConv2dSame, ScaledStdConv2dSame, AvgPool2dSame, MaxPool2dSame)
    return any(isinstance(m, kinds) for m in model.modules())


def export_onnx(model: nn.Module, profile: dict[str, Any], path: Path) -> Path:
    """The network (with its attention maps as extra outputs, if it has any) as an ONNX file whose
    metadata holds ``profile``; dynamic batch, height and width.

    A network that pads from the input size (:func:`pads_from_input_size`) is exported for the
    run's input size only (dynamic batch): with a dynamic height and width the exporter's symbolic
    shapes nest one ``ceil``/``max`` per such layer and its time grows exponentially with depth
    (minutes for four layers; a TensorFlow-ported EfficientNet-Lite0 did not finish).
    """
    import onnx

    if ab.attention_taps(model):
        owners = list(ab.attention_taps(model))
        include = (
            owners if isinstance(model, ab.AttentionGatedNet) else owners[-1:]
        )  # ARL: the last block's mask
        net: nn.Module = ab.AttentionOutputs(model, include=include).eval()
        names = net.output_names
    else:
        net, names = model, ["logits"]
    x = torch.zeros(2, 3, *input_hw(profile))
    dims = {0: "batch"}
    if pads_from_input_size(model):
        print(f"{path}: the network pads from the input size (TensorFlow 'same' padding), so "
              f"the file takes {x.shape[2]}x{x.shape[3]} images only", file=sys.stderr)  # fmt: skip
    else:
        dims |= {2: "height", 3: "width"}
    program = torch.onnx.export(
        net, (x,), dynamo=True, input_names=["image"], output_names=names, verbose=False,
        dynamic_shapes=(dims,),  # by position: forward(x) or forward(input)
    )  # fmt: skip
    with atomic_path(path) as tmp:
        program.save(str(tmp))
        proto = onnx.load(str(tmp))
        keep = {k: v for k, v in profile.items() if k not in ("source", "target_layer")}
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(keep)
        onnx.save(proto, str(tmp))
    return path


def input_hw(p: dict[str, Any]) -> tuple[int, int]:
    size = p["image_size"]
    return care_input_size(size) if p["views"] == "care" else (size, size)


class OnnxModel:
    """An onnxruntime session called like the network: ``(N, 3, H, W)`` -> ``(logits, *maps)``."""

    def __init__(self, path: Path, device: torch.device) -> None:
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as err:
            raise UserError(f"--onnx needs onnx and onnxruntime ({err})") from err
        if not path.is_file():
            raise UserError(f"--onnx {path}: no such file")
        try:
            meta = {
                m.key: m.value
                for m in onnx.load(str(path), load_external_data=False).metadata_props
            }
        except Exception as err:  # noqa: BLE001 - any parse failure is a bad file
            raise UserError(f"--onnx {path} is not an ONNX model: {err}") from err
        if METADATA_KEY not in meta:
            raise UserError(
                f"--onnx {path} carries no preprocessing profile; export it with "
                "`predict.py --run RUN --export-onnx FILE`"
            )
        self.profile = json.loads(meta[METADATA_KEY])
        self.profile["source"] = str(path)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.session.run(None, {"image": x.detach().cpu().float().numpy()})
        return [torch.from_numpy(o) for o in outs]


# --- inputs ---------------------------------------------------------------------------------


class ImageFolder(Dataset):
    """The images of a folder (not its sub-folders), sorted by name; id = file name stem.

    ``.jpg``/``.jpeg``/``.png`` files in any case; ISIC 2017's ``*_superpixels.png`` are not
    images of their own. The other files are counted and named on stderr, not read.
    """

    def __init__(self, folder: Path, transform, load_size: int | None) -> None:
        if not folder.is_dir():
            raise UserError(f"--images {folder} is not a folder")
        files = sorted(p for p in folder.iterdir() if p.is_file())
        self.paths = [p for p in files if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                      and not p.name.endswith("_superpixels.png")]  # fmt: skip
        other = [p.name for p in files if p not in self.paths]
        if other:
            shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
            print(f"--images: {len(other)} files that are not images left aside ({shown})",
                  file=sys.stderr)  # fmt: skip
        if not self.paths:
            raise UserError(f"--images {folder} holds no image (.jpg, .jpeg, .png)")
        self.ids = [p.stem for p in self.paths]
        dup = sorted({i for i in self.ids if self.ids.count(i) > 1})
        if dup:
            raise UserError(f"--images {folder}: several files share the id {dup[0]!r}")
        self.transform, self.load_size, self.skipped = transform, load_size, []

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            image = tv_tensors.Image(TF.pil_to_tensor(load_image(self.paths[i], self.load_size)))
        except ValueError as err:  # ImageReadError
            return {"id": self.ids[i], "error": str(err)}
        return {"id": self.ids[i], "image": self.transform(image).as_subclass(torch.Tensor)}


class SafeISIC(Dataset):
    """An ISIC split whose unreadable images come out as errors instead of exceptions."""

    def __init__(self, base: Any) -> None:
        self.base, self.ids, self.skipped = base, base.ids, list(base.skipped)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            item = self.base[i]
        except ValueError as err:  # ImageReadError
            return {"id": self.base.ids[i], "error": str(err)}
        return {"id": item["id"], "image": item["image"]}


def isic_split(p: dict[str, Any], root: Path, split: str, transform) -> SafeISIC:
    """The ``split`` of the run's ISIC release under ``root`` (unreadable images listed)."""
    from examples.isic.data_root import check_layout

    dataset = p["dataset"]
    layouts = {
        "isic2017": ("ISIC-2017_Training_Data/", "ISIC-2017_Training_Part3_GroundTruth.csv",
                     "ISIC-2017_Validation_Data/", "ISIC-2017_Test_v2_Data/"),
        "isic2016": ("ISBI2016_ISIC_Part3_Training_Data/", "ISBI2016_ISIC_Part3_Test_Data/"),
        "isic2018": ("ISIC2018_Task3_Training_Input/", "ISIC2018_Task3_Training_GroundTruth/"),
    }  # fmt: skip
    check_layout(root, layouts[dataset], dataset.upper())
    kw: dict[str, Any] = {"load_size": p.get("load_size"), "skip_bad": True, "progress": False,
                          "load_masks": False}  # fmt: skip
    if p.get("cache_dir"):  # the same resized (re-encoded) pixels as the run
        kw["cache_dir"] = Path(p["cache_dir"]).expanduser()
    if dataset == "isic2018":
        kw |= p["split"]
        if p.get("split_file") and Path(p["split_file"]).is_file():  # the run's lesion split
            kw["split_file"] = p["split_file"]
    try:
        base = DATASETS[dataset](root, split, p["task"], transform, **kw)
    except FileNotFoundError as err:
        raise UserError(str(err)) from err
    return SafeISIC(base)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    good = [it for it in items if "image" in it]
    return {
        "image": torch.stack([it["image"] for it in good]) if good else None,
        "id": [it["id"] for it in good],
        "errors": [(it["id"], it["error"]) for it in items if "error" in it],
    }


# --- prediction and overlays -------------------------------------------------------------------


def forward(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = model(x)
    if isinstance(out, list | tuple):
        return out[0], list(out[1:])
    return out, []


def overlay_maps(model: Any, x: torch.Tensor, p: dict[str, Any], maps: list[torch.Tensor],
                 names: list[str]) -> dict[str, torch.Tensor]:  # fmt: skip
    """``{title: (N, 1, H, W) in [0, 1]}`` for the first view of each image."""
    size = x.shape[-2:]
    if isinstance(model, OnnxModel):  # the graph's attention outputs
        return {n: ab.overlay_maps(m, size) for n, m in zip(names, maps, strict=True)}
    if isinstance(model, ab.AttentionGatedNet):
        with torch.no_grad():
            logits, gate_maps = model.forward_with_attention(x)
        return {f"gate {k}": ab.overlay_maps(m, size) for k, m in enumerate(gate_maps)}
    if p["script"] == "isic2017_arl":
        attn: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            if ab.attention_taps(model):
                with ab.record_attention(model) as attn:
                    feats = model.forward_features(x)
            else:
                feats = model.forward_features(x)
            cls = model.forward_head(feats).argmax(1)
        weight = model.get_classifier().weight.detach().float()
        out = {"CAM": ab.overlay_maps(ab.class_activation_map(feats.float(), weight, cls), size)}
        if attn:
            last = list(attn)[-1]
            out[f"ARL attention {last}"] = ab.overlay_maps(attn[last], size)
        return out
    with torch.no_grad():
        cls = model(x).argmax(1)
    layer = p.get("target_layer") or ab.gradcam.default_target_layer(
        model
    )  # the run's Grad-CAM layer
    cam, _ = ab.grad_cam(model, x, layer, cls)
    return {"Grad-CAM": cam.detach().float().clamp(0, 1)}


def save_overlays(out_dir: Path, ids: list[str], x: torch.Tensor, maps: dict[str, torch.Tensor],
                  scores: np.ndarray, p: dict[str, Any]) -> None:  # fmt: skip
    from examples.isic.eval.plots import denormalize
    from examples.isic.eval.plots import save_overlays as save_grid

    images = denormalize(x, *profile_mean_std(p))
    for k, image_id in enumerate(ids):
        title = f"{image_id}\n" + " ".join(
            f"{c} {v:.2f}" for c, v in zip(p["columns"], scores[k], strict=True)
        )
        save_grid(images[k : k + 1], {n: m[k : k + 1].cpu() for n, m in maps.items()},
                  out_dir / f"{image_id}.png", [title])  # fmt: skip


def run_predictions(model: Any, loader: DataLoader, p: dict[str, Any], device: torch.device,
                    overlays: Path | None, progress: bool) -> tuple[list[str], np.ndarray, list]:  # fmt: skip
    """``(ids, (N, K) class probabilities, [(id, reason) of unreadable images])``."""
    from tqdm.auto import tqdm

    ids, probs, bad = [], [], []
    names = list(getattr(model, "output_names", []))[1:]  # ONNX attention outputs
    for batch in tqdm(loader, desc="predict", unit="batch", disable=not progress):
        bad.extend(batch["errors"])
        for image_id, reason in batch["errors"]:
            print(f"unreadable, skipped: {image_id}: {reason}", file=sys.stderr)
        x = batch["image"]
        if x is None:
            continue
        n, views = x.shape[0], x.shape[1] if x.ndim == 5 else 1
        flat = x.flatten(0, 1) if x.ndim == 5 else x
        if not isinstance(model, OnnxModel):
            flat = flat.to(device)
        with torch.no_grad():
            logits, maps = forward(model, flat)
        prob = logits.float().softmax(dim=-1).reshape(n, views, -1).mean(dim=1)
        probs.append(prob.cpu())
        ids.extend(batch["id"])
        if overlays is not None:
            first = flat.reshape(n, views, *flat.shape[1:])[:, 0]
            maps0 = [m.reshape(n, views, *m.shape[1:])[:, 0] for m in maps]
            shown = overlay_maps(model, first, p, maps0, names)
            scores = scores_from_probs(prob.cpu().double().numpy(), p)
            save_overlays(overlays, batch["id"], first.cpu(), shown, scores, p)
    table = torch.cat(probs).double().numpy() if probs else np.zeros((0, p["num_classes"]))
    return ids, table, bad


# --- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predict", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    src = p.add_argument_group("network (one of)")
    src.add_argument("--run", type=Path, help="a training run folder (config.json, checkpoints/)")
    src.add_argument("--onnx", type=Path, help="an ONNX file written by --export-onnx")
    p.add_argument("--checkpoint", choices=["best", "last"], default=None,
                   help="with --run: the weights of checkpoints/best.pt or last.pt (default: those "
                   "the run tested; the EMA weights where the run kept an average)")  # fmt: skip
    data = p.add_argument_group("images (one of)")
    data.add_argument("--images", type=Path, help="a folder of images (.jpg, .png)")
    data.add_argument(
        "--data-root", type=Path, help="the run's ISIC release in its official layout"
    )
    data.add_argument("--split", choices=["train", "val", "test"], default="test",
                      help="the split of --data-root (default test)")  # fmt: skip
    p.add_argument("--out", type=Path, help="the CSV to write (official ISIC columns)")
    p.add_argument("--export-onnx", type=Path, metavar="FILE",
                   help="write the --run network as ONNX (attention maps as extra outputs)")  # fmt: skip
    p.add_argument("--overlays", action="store_true", help="attention/CAM overlay PNG per image")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bar")
    return p


def check_args(args: argparse.Namespace) -> None:
    if (args.run is None) == (args.onnx is None):
        raise UserError("pass one of --run RUN_FOLDER or --onnx FILE")
    if args.export_onnx is not None and args.run is None:
        raise UserError("--export-onnx needs --run (the network to export)")
    wants_data = args.images is not None or args.data_root is not None
    if args.images is not None and args.data_root is not None:
        raise UserError("pass one of --images FOLDER or --data-root ROOT, not both")
    if not wants_data and args.export_onnx is None:
        raise UserError("nothing to predict: pass --images FOLDER or --data-root ROOT")
    if wants_data and args.out is None:
        raise UserError("--out CSV is required (where the predictions go)")
    if args.out is not None and args.out.suffix.lower() != ".csv":
        raise UserError(f"--out {args.out} must be a .csv file")
    if args.out is not None and args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder; give the CSV's path")
    for root in (args.data_root, args.images):
        if root is not None and args.out is not None:
            r, o = root.expanduser().resolve(), args.out.expanduser().resolve()
            if r in o.parents:
                raise UserError(
                    f"--out {args.out} lies inside {root}; input folders are never written"
                )
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    check_args(args)
    device = resolve_device(args.device)
    for target in (args.out, args.export_onnx):  # an unwritable place fails now, not at the end
        if target is not None:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                probe = target.parent / f".write-test-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as err:
                raise UserError(f"cannot write {target}: {err.strerror or err}") from err
    if args.run is not None:
        model, profile, _ = load_run(args.run, args.checkpoint)
        model = model.to(device)
    else:
        model = OnnxModel(args.onnx, device)
        profile = model.profile
    result: dict[str, Any] = {"profile": profile}
    if args.export_onnx is not None:
        result["onnx"] = export_onnx(model.cpu(), profile, args.export_onnx)
        model = model.to(device)
        print(f"ONNX: {result['onnx']}")
    if args.images is None and args.data_root is None:
        return result
    if args.overlays and isinstance(model, OnnxModel) and len(model.output_names) < 2:
        raise UserError(f"--overlays: {args.onnx} has no attention output to draw")
    transform = build_transform(profile)
    if args.images is not None:
        data: Any = ImageFolder(args.images, transform, profile.get("load_size"))
    else:
        data = isic_split(profile, args.data_root, args.split, transform)
    loader = DataLoader(data, batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=collate)  # fmt: skip
    out = args.out
    overlays = out.with_name(f"{out.stem}_overlays") if args.overlays else None
    if overlays is not None:
        overlays.mkdir(parents=True, exist_ok=True)
    ids, probs, bad = run_predictions(model, loader, profile, device, overlays, args.progress)
    bad = [(i, "cannot read image (logged when the split was read)") for i in data.skipped] + bad
    unreadable = out.with_name(f"{out.stem}.unreadable.txt")
    if bad:
        text = "".join(f"{i}\t{reason}\n" for i, reason in bad)
        atomic_write(unreadable, lambda fh: fh.write(text.encode()))
    elif unreadable.exists():
        unreadable.unlink()  # from an earlier run on other images
    if not ids:
        raise UserError(f"no readable image among {len(bad)} (listed in {unreadable})")
    scores = scores_from_probs(probs, profile)
    write_predictions_csv(out, ids, scores, profile["columns"], profile["id_column"])
    print(f"predictions: {out} ({len(ids)} images, {profile['source']})")
    if bad:
        print(f"unreadable:  {unreadable} ({len(bad)} images skipped)")
    if overlays is not None:
        print(f"overlays:    {overlays}/")
    return result | {
        "ids": ids,
        "probs": probs,
        "scores": scores,
        "unreadable": [i for i, _ in bad],
    }


def cli(argv: Sequence[str] | None = None) -> None:
    """``main`` with user mistakes as one ``error:`` line and exit status 2."""
    try:
        main(argv)
    except (UserError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    cli()
