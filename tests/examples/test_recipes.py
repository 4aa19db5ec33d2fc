"""--recipe timm (examples/isic/recipes.py): timm's optimizer, per-step cosine schedule with warm-up,
EMA and label smoothing; exact resumption with the EMA and scheduler states."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import attnblocks as ab
from examples import isic2017_arl as arl
from examples import isic2017_attnmel as attnmel
from examples.isic import cli, make_synthetic_isic2017
from examples.isic.train import Trainer, recipes
from examples.isic.train.checkpointing import config_differences

TINY_ARL = ["--image-size", "32", "--batch-size", "4", "--patches-per-image", "1", "--arch",
            "arl_cnn14", "--no-progress", "--cam-images", "1", "--bootstrap", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "isic2017"
    return make_synthetic_isic2017(root, n_train=12, n_val=6, n_test=6, size=40, seed=2)


def _args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    recipes.add_recipe_args(p)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--epochs", type=int, default=None)
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    return p.parse_args(argv)


def test_recipe_flags_resolve() -> None:
    paper = {"epochs": 50, "lr": 0.01, "weight_decay": 1e-4}
    args = _args()
    assert recipes.resolve_recipe(args, paper, {"lr": 0.02}) == (paper, {"lr": 0.02})
    assert args.ema_decay is None and args.weight_decay is None  # the paper's: untouched
    with pytest.raises(ValueError, match="--ema-decay, --smoothing apply to --recipe timm only"):
        recipes.resolve_recipe(_args(ema_decay=0.9, smoothing=0.1), paper, {})
    args = _args(recipe="timm", weight_decay=0.01)
    profile, quick = recipes.resolve_recipe(args, paper, {"lr": 0.02, "epochs": 2})
    assert profile == {"epochs": 10, "lr": 3e-4, "weight_decay": 1e-4}
    assert quick == {"lr": 1e-3, "epochs": 2}
    assert (args.ema_decay, args.smoothing, args.warmup_epochs, args.min_lr, args.opt) == (
        0.998, 0.1, 1.0, 1e-6, "adamw",
    )  # fmt: skip
    assert args.weight_decay == 0.01 and args.layer_decay is None  # the command line wins
    assert _args(recipe="timm").weight_decay is None
    for bad, match in (({"ema_decay": 1.0}, "--ema-decay must lie in"),
                       ({"smoothing": -0.1}, "--smoothing must be a finite"),
                       ({"layer_decay": 1.5}, "--layer-decay must lie in")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            recipes.resolve_recipe(_args(recipe="timm", **bad), paper, {})
    # a checkpoint written before --recipe existed resumes under the paper's recipe only
    old = cli.ADDED_DEFAULTS  # checkpoints from before --recipe: the paper's protocol
    assert config_differences({"lr": 0.01}, {"lr": 0.01, "recipe": "paper"}, set(), old) == []
    assert config_differences({"lr": 0.01}, {"lr": 0.01, "recipe": "timm"}, set(), old) == [
        "recipe"
    ]


def test_optimizer_schedule_and_loss() -> None:
    net = ab.AttentionGatedNet("resnet18", (2, 3), 2)
    args = _args(recipe="timm", lr=0.01, epochs=4)
    recipes.resolve_recipe(args, {}, {})
    optimizer, scheduler = recipes.build_timm_training(
        net, recipes.TimmRecipe.from_args(args), steps_per_epoch=5
    )
    assert isinstance(optimizer, torch.optim.AdamW)
    decays = {g["weight_decay"] for g in optimizer.param_groups}
    assert decays == {0.0, 0.05}  # no decay on biases and norm layers
    no_decay = next(g for g in optimizer.param_groups if g["weight_decay"] == 0)
    assert all(p.ndim <= 1 for p in no_decay["params"])
    lrs = []
    for step in range(1, 21):  # warm-up over 5 steps from lr/100, cosine to min_lr at step 20
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step_update(num_updates=step)
    assert lrs[0] == pytest.approx(1e-4) and lrs[5] == pytest.approx(0.01)
    assert lrs[1] == pytest.approx(1e-4 + (0.01 - 1e-4) / 5)
    mid = 1e-6 + 0.5 * (0.01 - 1e-6) * (1 + math.cos(math.pi * 7 / 15))
    assert lrs[12] == pytest.approx(mid)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-6)
    # layer-wise decay: the stem learns more slowly than the head
    recipe = recipes.TimmRecipe.from_args(args)
    recipe = dataclasses.replace(recipe, layer_decay=0.5)
    opt, _ = recipes.build_timm_training(net, recipe, 5)
    scales = sorted({g.get("lr_scale", 1.0) for g in opt.param_groups})
    assert scales[0] < 0.1 and scales[-1] == 1.0
    with pytest.raises(ValueError, match="group_matcher"):
        recipes.build_timm_training(nn.Sequential(nn.Linear(2, 2)), recipe, 5)
    recipe = dataclasses.replace(recipe, layer_decay=None, opt="nope")
    with pytest.raises(ValueError, match="--opt nope: Optimizer nope not found"):
        recipes.build_timm_training(net, recipe, 5)
    loss = recipes.timm_loss(0.1)
    logits, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    logp = logits.log_softmax(1)
    assert float(loss(logits, y)) == pytest.approx(float(-(0.9 * logp[0, 0] + 0.1 * logp.mean())))


def test_trainer_ema_is_validated_and_tested(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    data = [{"image": torch.randn(4, 3, 2, 2), "label": torch.tensor([0, 1, 0, 1])}] * 3
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = Trainer(
        model, lambda b, o, m: nn.functional.cross_entropy(o, b["label"]), opt, tmp_path,
        torch.device("cpu"), metric_fn=lambda p, t: {"mean_auc": 0.5}, progress=False,
        ema_decay=0.9,
    )  # fmt: skip
    trainer.fit(data, data, 1)
    assert trainer.global_step == 3 and trainer.eval_module is trainer.ema.module
    live = model[1].weight.detach().clone()
    ema = trainer.ema.module[1].weight.detach().clone()
    assert not torch.equal(live, ema)
    state = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert torch.equal(state["ema"]["1.weight"], ema) and state["global_step"] == 3
    assert trainer.load_tested() == 0  # best.pt's epoch; the tested weights are the EMA's
    assert torch.equal(model[1].weight, ema)


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "log.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in ("train_img_s", "epoch_s")}
                for r in csv.DictReader(f)]  # fmt: skip


class Killed(Exception):
    """Stands for the process being killed."""


def _timm_trainer(out: Path) -> Trainer:
    from tests._support.training import accuracy, ce_loss, tiny_model

    torch.manual_seed(0)
    model = tiny_model(0.2)
    args = _args(recipe="timm", lr=0.05, epochs=4, ema_decay=0.99)
    recipes.resolve_recipe(args, {}, {})
    opt, sched = recipes.build_timm_training(
        model, recipes.TimmRecipe.from_args(args), steps_per_epoch=6
    )
    return Trainer(
        model, ce_loss, opt, out, torch.device("cpu"), scheduler=sched, metric_fn=accuracy,
        monitor="acc", seed=0, progress=False, ema_decay=args.ema_decay,
        run_config={"recipe": "timm", "epochs": 4},
    )  # fmt: skip


def test_engine_resume_with_ema_and_cosine_is_exact(tmp_path: Path) -> None:
    from tests._support.training import loaders

    full = _timm_trainer(tmp_path / "full")
    full.fit(*loaders(), epochs=4)
    part = _timm_trainer(tmp_path / "part")
    part.fit(*loaders(), epochs=2)  # "killed" after epoch 1
    resumed = _timm_trainer(tmp_path / "part")
    torch.manual_seed(123)  # a resumed process starts from an unrelated RNG state
    resumed.fit(*loaders(), epochs=4, resume=True)
    assert resumed.global_step == full.global_step == 24
    for a, b in ((full.module, resumed.module), (full.ema.module, resumed.ema.module)):
        for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), k
    assert full.scheduler.state_dict() == resumed.scheduler.state_dict()
    lrs = [g["lr"] for g in resumed.optimizer.param_groups]
    assert lrs == [g["lr"] for g in full.optimizer.param_groups]
    assert lrs[0] == pytest.approx(1e-6)  # the end of the cosine
    assert [r["val_acc"] for r in resumed.history] == [r["val_acc"] for r in full.history]


@pytest.mark.slow
def test_timm_recipe_resumes_exactly(
    tiny_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["--data-root", str(tiny_root), "--recipe", "timm", "--lr", "0.003", "--epochs", "2",
            *TINY_ARL]  # fmt: skip
    full, part = tmp_path / "full", tmp_path / "part"
    arl.main([*base, "--out", str(full)])
    train_one_epoch = Trainer.train_one_epoch

    def killed_in_epoch_1(self, loader, epoch):
        if epoch == 1:
            raise Killed
        return train_one_epoch(self, loader, epoch)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_one_epoch", killed_in_epoch_1)
        with pytest.raises(Killed):
            arl.main([*base, "--out", str(part)])
    # the schedule's length is part of the configuration (and so is the recipe: see above)
    with pytest.raises(ValueError, match=r"another configuration \(epochs: checkpoint 2 vs now 3"):
        arl.main([*base, "--out", str(part), "--resume", "--epochs", "3"])
    arl.main([*base, "--out", str(part), "--resume"])
    a = torch.load(full / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    b = torch.load(part / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 6  # 12 images / batch 4, 2 epochs
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert any(not torch.equal(a["model"][k], a["ema"][k]) for k in a["model"])  # a real EMA
    assert a["scheduler"] == b["scheduler"] and a["scheduler"]["t_initial"] == 6 - 3
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    rows = _rows(full)
    assert rows == _rows(part)
    # the lr column: lr/100 at the start of warm-up, the full lr after one epoch (3 steps)
    assert float(rows[0]["lr"]) == pytest.approx(3e-5) and float(rows[1]["lr"]) == pytest.approx(
        0.003
    )
    assert json.loads((full / "metrics.json").read_text()) == json.loads(
        (part / "metrics.json").read_text()
    )
    config = json.loads((full / "config.json").read_text())["settings"]
    assert (config["recipe"], config["weight_decay"], config["ema_decay"]) == ("timm", 0.05, 0.998)


def test_attnmel_timm_recipe_runs_with_ce_and_dice(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    attnmel.main(["--data-root", str(tiny_root), "--out", str(out), "--epochs", "1", "--recipe",
                  "timm", "--roi", "lesion", "--image-size", "32", "--batch-size", "4",
                  "--backbone", "resnet18", "--no-progress", "--overlay-images", "1",
                  "--bootstrap", "0", "--oversample", "1"])  # fmt: skip
    row = _rows(out)[0]
    assert float(row["train_loss"]) == pytest.approx(
        float(row["train_ce"]) + float(row["train_dice"]), rel=1e-5
    )
    best = torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
    assert best["ema"] is not None and best["run_config"]["recipe"] == "timm"


@pytest.mark.usefixtures("unrendered_plots")  # checks logs and metrics, not the plots
def test_care_timm_recipe_keeps_two_stages(tmp_path: Path) -> None:
    from examples import isic2018_care as care
    from tests._support.data import shared_subset

    args = care.parse_args(["--recipe", "timm", "--data-root", str(tmp_path)])
    assert (args.epochs, args.stage1_epochs, args.lr, args.weight_decay) == (20, 10, 3e-4, 0.05)
    paper = care.parse_args(["--data-root", str(tmp_path)])
    assert (paper.epochs, paper.lr, paper.weight_decay, paper.ema_decay) == (20, 1e-3, 1e-4, None)
    root = shared_subset("isic2018_200x150_mini")
    out = tmp_path / "care"
    argv = ["--data-root", str(root), "--arch", "resnet10t", "--image-size", "48", "--batch-size",
            "8", "--no-progress", "--val-fraction", "0.2", "--test-fraction", "0.2", "--epochs",
            "2", "--stage1-epochs", "1", "--recipe", "timm", "--bootstrap", "0"]  # fmt: skip
    care.main([*argv, "--out", str(out)])
    rows = _rows(out)
    assert [r["stage"] for r in rows] == ["1", "2"] and float(rows[1]["train_care"]) != 0
    assert float(rows[0]["lr"]) == pytest.approx(3e-6)  # lr/100 at the start of the warm-up
    last = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert last["ema"] is not None and last["scheduler"]["t_initial"] > 0
    with pytest.raises(ValueError, match="--stage1-from needs --recipe paper"):
        care.main([*argv, "--out", str(tmp_path / "s2"), "--stage1-from", str(out)])


def test_trainer_tests_the_best_or_the_last_epoch(tmp_path: Path) -> None:
    """--select: the best epoch's EMA weights, or the last epoch's (the end of the schedule)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    data = [{"image": torch.randn(4, 3, 2, 2), "label": torch.tensor([0, 1, 0, 1])}] * 3
    scores = iter([0.9, 0.7, 0.8])  # epoch 0 is the best by validation
    trainer = Trainer(
        model, lambda b, o, m: nn.functional.cross_entropy(o, b["label"]),
        torch.optim.SGD(model.parameters(), lr=0.5), tmp_path, torch.device("cpu"),
        metric_fn=lambda p, t: {"mean_auc": next(scores)}, progress=False, ema_decay=0.9,
    )  # fmt: skip
    trainer.fit(data, data, 3)
    saved = {n: torch.load(tmp_path / "checkpoints" / f"{n}.pt", weights_only=False)
             for n in ("best", "last")}  # fmt: skip
    assert (saved["best"]["epoch"], saved["last"]["epoch"]) == (0, 2)
    assert not torch.equal(saved["best"]["ema"]["1.weight"], saved["last"]["ema"]["1.weight"])
    assert trainer.load_tested("last") == 2
    assert torch.equal(model[1].weight, saved["last"]["ema"]["1.weight"])
    assert trainer.load_tested("best") == 0
    assert torch.equal(model[1].weight, saved["best"]["ema"]["1.weight"])
    with pytest.raises(ValueError, match="select must be 'best' or 'last', got 'first'"):
        trainer.load_tested("first")
