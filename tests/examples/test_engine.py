"""The shared training engine, CLI helpers and distributed helpers, on a tiny model."""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from examples.isic import cli
from examples.isic.train.distributed import DistInfo, ShardSampler, shard_loader, unshard
from examples.isic.train.predict import move_to, predict
from examples.isic.train.trainer import NonFiniteLossError
from examples.run import atomic_save, autocast, check_amp, resolve_device, seed_everything
from tests._support.data import ROOT
from tests._support.distributed import run_ranks
from tests._support.training import Blobs, loaders, make_trainer, tiny_model


def test_fit_logs_checkpoints_and_learns(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path)
    history = trainer.fit(*loaders(), epochs=4)
    assert [r["epoch"] for r in history] == [0, 1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_acc"] >= 0.75  # separable blobs
    assert [r["lr"] for r in history] == pytest.approx([0.1, 0.1, 0.05, 0.05])
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert len(rows) == 4 and {"train_loss", "train_ce", "val_acc", "lr", "epoch_s"} <= set(rows[0])
    assert float(rows[2]["train_loss"]) == pytest.approx(history[2]["train_loss"])
    assert any((tmp_path / "tb").iterdir())
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert best["epoch"] == trainer.best_epoch
    assert best["best_metric"] == max(r["val_acc"] for r in history)
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert last["epoch"] == 3 and set(last["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))  # no temp file left behind


def test_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    full = make_trainer(tmp_path / "full")
    full.fit(*loaders(), epochs=4)
    part = make_trainer(tmp_path / "part")
    part.fit(*loaders(), epochs=2)  # "killed" after epoch 1
    resumed = make_trainer(tmp_path / "part", seed=0)
    torch.manual_seed(123)  # a resumed process starts from an unrelated RNG state
    resumed.fit(*loaders(), epochs=4, resume=True)
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2, 3]
    for (k, a), b in zip(
        full.module.state_dict().items(), resumed.module.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]


def test_resume_refuses_other_configuration(tmp_path: Path) -> None:
    make_trainer(tmp_path).fit(*loaders(), epochs=1)
    other = make_trainer(tmp_path, run_config={"arch": "tiny", "lr": 0.5})
    with pytest.raises(ValueError, match=r"another configuration \(lr: checkpoint 0.1 vs now 0.5"):
        other.fit(*loaders(), epochs=2, resume=True)
    with pytest.raises(ValueError, match="no checkpoint"):
        make_trainer(tmp_path / "empty").fit(*loaders(), epochs=1, resume=True)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    calls = {"n": 0}

    def exploding(batch, output, model):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(output, batch["label"])
        return loss * float("nan") if calls["n"] > 7 else loss  # 6 steps per epoch

    trainer = make_trainer(tmp_path, loss_fn=exploding)
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1.*last.pt"):
        trainer.fit(*loaders(), epochs=3)
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_early_stopping(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, patience=2)
    trainer.metric_fn = lambda p, t: {"acc": 0.5}  # never improves after epoch 0
    history = trainer.fit(*loaders(), epochs=10)
    assert len(history) == 3 and trainer.best_epoch == 0
    assert [r["best"] for r in history] == [True, False, False]


def test_bf16_autocast_and_channels_last(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, amp="bf16", channels_last=True)
    history = trainer.fit(*loaders(), epochs=1)
    assert np.isfinite(history[0]["train_loss"])
    assert trainer.module[0].weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        make_trainer(tmp_path / "x", amp="fp16")
    with pytest.raises(ValueError, match="amp must be one of"):
        autocast(torch.device("cpu"), "fp8")


def test_predict_averages_views_in_order() -> None:
    model = tiny_model().eval()
    data = Blobs(10, views=3, flip=False)
    preds = predict(model, DataLoader(data, batch_size=4), torch.device("cpu"))
    assert preds.probs.shape == (10, 2) and preds.ids == [f"img{i:03d}" for i in range(10)]
    with torch.no_grad():
        for i in range(len(data)):
            expected = model(data[i]["image"]).softmax(-1).mean(0).double().numpy()
            np.testing.assert_allclose(preds.probs[i], expected, atol=1e-6)
            single = model(data[i]["image"][:1]).softmax(-1)[0].double().numpy()
            assert np.abs(preds.probs[i] - single).max() > 1e-6  # views really differ
    np.testing.assert_array_equal(preds.targets, np.arange(10) % 2)
    np.testing.assert_allclose(preds.probs.sum(1), 1.0, atol=1e-6)


def test_helpers(tmp_path: Path) -> None:
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))
    atomic_save({"x": 1}, tmp_path / "a" / "b.pt")
    assert torch.load(tmp_path / "a" / "b.pt") == {"x": 1}
    batch = move_to({"image": torch.zeros(2, 3, 4, 4), "ids": ["a"], "t": (torch.ones(1),)},
                    torch.device("cpu"), channels_last=True)  # fmt: skip
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert batch["ids"] == ["a"] and isinstance(batch["t"], tuple)
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]] and len(ShardSampler(7, 1, 3)) == 2
    assert unshard(shards) == list(range(7))
    loader = shard_loader(list(range(7)), DistInfo(rank=1, world_size=3), batch_size=2)
    assert [b.tolist() for b in loader] == [[1, 4]]
    with pytest.raises(ValueError, match="rank"):
        ShardSampler(5, 3, 2)
    assert not DistInfo().enabled and DistInfo().is_main


def test_cli_flags_profile_and_config(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    paper = {"epochs": 100, "batch_size": 32, "image_size": 224, "lr": 0.01}
    cli.add_common_args(parser, paper)
    args = parser.parse_args(["--epochs", "3", "--amp", "bf16", "--channels-last"])
    cli.resolve_profile(args, paper, {"epochs": 1, "image_size": 64}, use_quick=True)
    assert (args.epochs, args.image_size, args.batch_size, args.lr) == (3, 64, 32, 0.01)
    args2 = cli.resolve_profile(parser.parse_args([]), paper, {"epochs": 1}, use_quick=False)
    assert args2.epochs == 100 and args2.device == "auto" and args2.workers == 0
    out = cli.prepare_out_dir(tmp_path / "run", resume=False)
    config = cli.save_config(out, args, model="x")
    saved = (out / "config.json").read_text()
    assert '"epochs": 3' in saved and config["environment"]["torch"] == torch.__version__
    assert (
        config["environment"]["git_commit"] is None
        or len(config["environment"]["git_commit"]) >= 40
    )
    assert resolve_device("cpu") == torch.device("cpu")
    assert cli.setup_device("cpu", "bf16") == (torch.device("cpu"), DistInfo())
    assert cli.run_settings(argparse.Namespace(out=tmp_path, n=1)) == {"out": str(tmp_path), "n": 1}
    assert config["settings"] == cli.run_settings(args)
    assert cli.default_out_dir("isic2017_arl").parts[0] == "runs"


def test_resume_settings_leave_out_what_a_resumed_run_may_change(tmp_path: Path) -> None:
    args = argparse.Namespace(epochs=9, out=tmp_path, workers=2, lr=0.1, arch="x", recipe="paper")
    assert cli.resume_settings(args) == {"lr": 0.1, "arch": "x", "recipe": "paper"}
    args.recipe = "timm"  # --epochs sets the length of the cosine schedule: it must match
    assert cli.resume_settings(args) == {"epochs": 9, "lr": 0.1, "arch": "x", "recipe": "timm"}
    make_trainer(tmp_path / "r", run_config={"lr": 0.1}).fit(*loaders(), epochs=1)
    resumed = make_trainer(tmp_path / "r", run_config={"lr": 0.1, "workers": None})
    assert len(resumed.fit(*loaders(), epochs=2, resume=True)) == 2  # a new setting at None


def test_cli_bad_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        check_amp("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        cli.setup_device("auto", "fp16")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="not a writable folder"):
        cli.prepare_out_dir(blocker / "run", resume=False)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="not a writable folder"):
            cli.prepare_out_dir(ro, resume=False)
    with pytest.raises(ValueError, match="inside --data-root"):
        cli.prepare_out_dir(tmp_path / "data" / "run", resume=False, data_root=tmp_path / "data")
    with pytest.raises(ValueError, match="--resume: no checkpoint"):
        cli.prepare_out_dir(tmp_path / "fresh", resume=True)
    atomic_save({}, tmp_path / "old" / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match="already holds a run"):
        cli.prepare_out_dir(tmp_path / "old", resume=False)

    def bad(argv):
        raise ValueError("bad thing")

    with pytest.raises(SystemExit) as exc:
        cli.run_cli(bad, [])
    assert exc.value.code == 2


DDP_SCRIPT = """
import sys, json, torch
sys.path.insert(0, {root!r})
from torch.utils.data import DataLoader, DistributedSampler
from examples.isic.train.distributed import init_distributed, ShardSampler
from examples.isic.train.predict import predict
from tests._support.training import Blobs, make_trainer
dist_info = init_distributed(torch.device("cpu"))
train, val = Blobs(40), Blobs(13, 1)
tl = DataLoader(train, batch_size=4, sampler=DistributedSampler(train, seed=0))
vl = DataLoader(val, batch_size=4, sampler=ShardSampler(len(val), dist_info.rank, dist_info.world_size))
trainer = make_trainer({out!r}, dist_info=dist_info)
trainer.fit(tl, vl, epochs=2)
preds, metrics = trainer.evaluate(vl)
fixed, cpu = Blobs(13, 1, flip=False), torch.device("cpu")  # no random flip: comparable runs
shards = ShardSampler(len(fixed), dist_info.rank, dist_info.world_size)
sharded = predict(trainer.module, DataLoader(fixed, batch_size=4, sampler=shards), cpu,
                  dist_info=dist_info)
alone = predict(trainer.module, DataLoader(fixed, batch_size=4), cpu)
w = torch.cat([p.detach().flatten() for p in trainer.module.parameters()])
json.dump({{"ids": preds.ids, "w": w.tolist(), "acc": metrics["acc"], "world": dist_info.world_size,
           "sharded": [sharded.probs.tolist(), sharded.targets.tolist(), sharded.ids],
           "alone": [alone.probs.tolist(), alone.targets.tolist(), alone.ids]}},
          open({out!r} + f"/rank{{dist_info.rank}}.json", "w"))
"""


_TORCHRUN = Path(sys.executable).parent / "torchrun"


# torchrun starts three interpreters (~20 s on two busy cores): the default set runs the same script
# as two ranks forked from one interpreter, the slow set under torchrun
@pytest.mark.parametrize(
    "launcher",
    [
        pytest.param("forkserver", marks=pytest.mark.skipif(
            not hasattr(os, "fork"), reason="no fork server on this platform")),
        pytest.param("torchrun", marks=[pytest.mark.slow, pytest.mark.skipif(
            not _TORCHRUN.is_file(), reason=f"torchrun not installed next to {sys.executable}")]),
    ],
)  # fmt: skip
def test_ddp_two_process_gloo(tmp_path: Path, launcher: str) -> None:
    import json

    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT).format(
        root=str(ROOT), out=str(tmp_path)))  # fmt: skip
    if launcher == "forkserver":
        assert run_ranks(script.read_text(), world_size=2) == [0, 0]
    else:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [str(_TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script)],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1))
    assert r0["world"] == 2
    assert r0["ids"] == r1["ids"] == [f"img{i:03d}" for i in range(13)]  # no padded duplicate
    assert r0["w"] == r1["w"]  # replicas stay in sync
    assert r0["acc"] == r1["acc"]
    # the gathered shards are the single-process predictions, row for row
    probs, targets, ids = r0["sharded"]
    assert r1["sharded"] == r0["sharded"] and ids == r0["alone"][2] == r0["ids"]
    assert targets == r0["alone"][1] == [i % 2 for i in range(13)]
    np.testing.assert_allclose(probs, r0["alone"][0], rtol=0, atol=1e-6)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]  # logged once, by rank 0
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_compiled_training_matches_eager(tmp_path: Path) -> None:
    # no dropout: compiled code draws its random masks from another generator
    eager = make_trainer(tmp_path / "eager", p_drop=0.0)
    eager.fit(*loaders(), epochs=1)
    compiled = make_trainer(tmp_path / "compiled", compile=True, p_drop=0.0)
    compiled.fit(*loaders(), epochs=1)
    for (k, a), b in zip(
        eager.module.state_dict().items(), compiled.module.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    assert not any(
        k.startswith("_orig_mod")
        for k in torch.load(tmp_path / "compiled" / "checkpoints" / "last.pt", weights_only=False)[
            "model"
        ]
    )
