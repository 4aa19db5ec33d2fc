"""Fault and bad-input cases of the example scripts, each on a copy of the real mini data made bad
in one way: the exit code, the one ``error:`` line and what is (or is not) left on disk.

The scripts run in-process through :func:`examples.isic.cli.run_cli` (what ``python script.py``
runs), so a ``SystemExit(2)`` plus one ``error:`` line on stderr is the expected failure, and any
other exception (a traceback) fails the test.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from examples import isic2017_arl as arl
from examples import isic2017_attnmel as attnmel
from examples import isic2018_care as care
from examples.isic import ISIC2017Dataset, ISIC2018Dataset, cli
from examples.isic.cli import run_folder
from examples.isic.data.cache import ResizedImageCache, default_cache_dir
from examples.isic.data.images import load_image, load_mask
from examples.isic.data.synthetic import cached_dataset
from examples.isic.train.checkpointing import config_differences
from examples.isic.train.predict import NonFiniteError
from examples.isic.train.trainer import Trainer
from examples.run.files import atomic_write
from tests._support.data import ROOT, shared_subset

# the plots are checked by the scripts' own tests: here they are built but not rendered
pytestmark = [
    pytest.mark.filterwarnings("ignore::Warning"),
    pytest.mark.usefixtures("unrendered_plots"),
]

ARL = ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--patches-per-image", "1",
       "--arch", "arl_cnn14", "--no-progress", "--cam-images", "1", "--limit", "6"]  # fmt: skip
CARE = ["--epochs", "1", "--stage1-epochs", "1", "--arch", "resnet10t", "--image-size", "32",
        "--batch-size", "8", "--no-progress", "--val-fraction", "0.2",
        "--test-fraction", "0.2"]  # fmt: skip
T17 = {"train": "ISIC-2017_Training", "val": "ISIC-2017_Validation", "test": "ISIC-2017_Test_v2"}


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def mini2017(tmp_path: Path) -> Path:
    """A private copy of the ISIC 2017 mini set (to be made bad)."""
    return Path(shutil.copytree(shared_subset("isic2017_256_mini"), tmp_path / "isic2017"))


@pytest.fixture
def mini2018(tmp_path: Path) -> Path:
    return Path(shutil.copytree(shared_subset("isic2018_200x150_mini"), tmp_path / "isic2018"))


def run(main, argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``python script.py argv``: (exit code, the error line or "", stdout)."""
    capsys.readouterr()
    try:
        cli.run_cli(main, [str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in captured.err
    assert len(errors) <= 1, captured.err
    return code, errors[0] if errors else "", captured.out


def csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def write_rows(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def gt2017(root: Path, split: str) -> Path:
    return root / f"{T17[split]}_Part3_GroundTruth.csv"


def image2017(root: Path, split: str, image_id: str) -> Path:
    return root / f"{T17[split]}_Data" / f"{image_id}.jpg"


def truncate(path: Path, keep: int = 400) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def nothing_trained(out: Path) -> None:
    """No checkpoint, log or result: the run stopped before its first step."""
    for name in ("checkpoints", "log.csv", "metrics.json", "predictions.csv", "config.json"):
        assert not (out / name).exists(), name


# ----------------------------------------------------------- 1. one run per output folder
_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
time.sleep(600)
"""


def test_busy_out_folder_is_refused_and_a_killed_run_leaves_no_lock(
    mini2017: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, error, _ = run(arl.main, ["--data-root", mini2017, "--out", out, *ARL], capsys)
        assert code == 2
        assert f"--out {out} is in use by another run (process {holder.pid})" in error
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the killed owner's lock went with it: the folder can be taken at once
    assert cli.prepare_out_dir(out, resume=False) == out.resolve()
    cli.release_out_dir(out)


@pytest.mark.slow
def test_two_real_runs_into_one_folder(mini2017: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "isic2017_arl.py"), "--data-root",
             str(mini2017), "--out", str(out), *ARL, "--seed", str(seed)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )
        for seed in (1, 2)
    ]  # fmt: skip
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "is in use by another run" in loser or "already holds a run" in loser
    winner = 1 + [code for code, _ in results].index(0)
    config = json.loads((out / "config.json").read_text())
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert config["settings"]["seed"] == last["run_config"]["seed"] == winner


def test_any_run_output_means_the_folder_holds_a_run(
    mini2017: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for name in ("config.json", "metrics.json", "predictions.csv", "log.csv"):
        out = tmp_path / name
        out.mkdir()
        (out / name).write_text("from another run\n")
        code, error, _ = run(arl.main, ["--data-root", mini2017, "--out", out, *ARL], capsys)
        assert code == 2 and f"already holds a run ({name})" in error, error
        assert (out / name).read_text() == "from another run\n"
    # a run that stopped in its first epoch cannot be resumed, and says why
    code, error, _ = run(
        arl.main, ["--data-root", mini2017, "--out", tmp_path / "log.csv", *ARL, "--resume"], capsys
    )
    assert code == 2 and "stopped before the end of its first epoch (it holds log.csv)" in error


def test_a_folder_without_lock_support_still_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    import errno

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_folder.fcntl, "flock", no_locks)
    assert cli.prepare_out_dir(tmp_path / "nfs", resume=False) == (tmp_path / "nfs").resolve()
    assert "does not support file locks (No locks available)" in capsys.readouterr().err


def test_checkpoints_from_before_a_new_flag_still_resume() -> None:
    saved = {"lr": 0.1, "seed": 0}  # written before --skip-bad existed
    assert config_differences(saved, {**saved, "skip_bad": False}, set()) == []
    assert config_differences(saved, {**saved, "skip_bad": True}, set()) == ["skip_bad"]
    # the run's settings say what must match: a setting only the checkpoint has does not count
    assert config_differences({**saved, "skip_bad": False}, saved, set()) == []


# ------------------------------------------------------------------------ 2. divergence
def test_diverging_loss_stops_with_one_error_line(
    mini2017: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    argv = ["--data-root", mini2017, "--out", out, *ARL, "--limit", "24", "--lr", "1e6"]
    code, error, _ = run(arl.main, argv, capsys)
    assert code == 2
    assert error.startswith("error: training diverged: non-finite training loss")
    assert re.search(r"at epoch 0, step [1-9]; no checkpoint has been written yet", error), error
    assert "lower --lr (now 1e+06)" in error
    assert not (out / "checkpoints").exists() and not (out / "metrics.json").exists()


def test_non_finite_predictions_stop_before_the_metrics(
    mini2017: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # one step per epoch: the loss of that step is finite, the weights after it are not
    out = tmp_path / "run"
    code, error, _ = run(
        arl.main, ["--data-root", mini2017, "--out", out, *ARL, "--lr", "1e6"], capsys
    )
    assert code == 2
    assert error.startswith("error: training diverged at epoch 0 (evaluated after step 0)")
    assert "non-finite val predictions for" in error and "y_score" not in error
    assert "no checkpoint has been written yet" in error
    assert not (out / "checkpoints").exists()


def test_divergence_after_a_checkpoint_names_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    batches = [{"image": x[i : i + 8], "label": y[i : i + 8]} for i in (0, 8)]
    model = nn.Linear(4, 2)

    def loss_fn(batch, output, _m):
        return nn.functional.cross_entropy(output, batch["label"])

    def poison(epoch, row):  # finite losses, then weights that overflow after epoch 0
        with torch.no_grad():
            model.weight.fill_(float("inf"))

    trainer = Trainer(model, loss_fn, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path,
                      torch.device("cpu"), metric_fn=lambda p, t: {"mean_auc": 0.5},
                      progress=False, amp="bf16")  # fmt: skip
    with pytest.raises(NonFiniteError) as info:
        trainer.fit(batches, batches, epochs=3, on_epoch_end=poison)
    message = str(info.value)
    assert "epoch 1" in message
    last = tmp_path / "checkpoints" / "last.pt"
    assert f"the last good checkpoint is {last} (end of epoch 0)" in message
    assert "try --amp none (now bf16)" in message
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 0
    assert len(csv_rows(tmp_path / "log.csv")) == 2  # header + epoch 0


def test_care_divergence_is_one_error_line(
    mini2018: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    argv = ["--data-root", mini2018, "--out", out, *CARE, "--stage1-epochs", "0", "--lr", "1e6"]
    code, error, _ = run(care.main, argv, capsys)
    assert code == 2 and error.startswith("error: training diverged"), error
    assert "probs contains" not in error and "no checkpoint has been written yet" in error


# --------------------------------------------------- 3. the data are checked before training
def test_duplicate_test_id_is_found_before_training(
    mini2017: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = csv_rows(gt2017(mini2017, "test"))
    write_rows(gt2017(mini2017, "test"), [*rows, rows[3]])
    out = tmp_path / "run"
    code, error, _ = run(arl.main, ["--data-root", mini2017, "--out", out, *ARL], capsys)
    assert code == 2
    assert f"1 rows repeat an image id already listed (first: {rows[3][0]})" in error
    assert "Test_v2_Part3_GroundTruth.csv" in error and "--skip-bad" in error
    nothing_trained(out)


def test_conflicting_duplicate_labels_are_refused(
    mini2017: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = csv_rows(gt2017(mini2017, "train"))
    flipped = [rows[2][0], "1.0" if rows[2][1] == "0.0" else "0.0", "0.0"]
    write_rows(gt2017(mini2017, "train"), [*rows, flipped])
    out = tmp_path / "run"
    argv = ["--data-root", mini2017, "--out", out, *ARL, "--skip-bad"]  # not skippable
    code, error, _ = run(arl.main, argv, capsys)
    assert code == 2
    assert f"1 image ids are listed twice with different labels (first: {rows[2][0]})" in error
    nothing_trained(out)


def test_unreadable_images_and_masks_are_found_before_training(
    mini2017: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ids = [r[0] for r in csv_rows(gt2017(mini2017, "test"))[1:]]
    for i in ids[:5]:
        truncate(image2017(mini2017, "test", i))
    out = tmp_path / "run"
    code, error, _ = run(arl.main, ["--data-root", mini2017, "--out", out, *ARL], capsys)
    assert code == 2
    assert "5 of 15 images of" in error and "cannot be read" in error and "--skip-bad" in error
    assert sum(f"{i}.jpg" in error for i in ids[:5]) == 3  # the first three are named
    nothing_trained(out)
    # a damaged lesion mask (read by --roi lesion) is found the same way
    mask_dir = mini2017 / "ISIC-2017_Validation_Part1_GroundTruth"
    mask = sorted(mask_dir.iterdir())[0]
    mask.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    shutil.rmtree(mini2017 / f"{T17['test']}_Data")
    shutil.copytree(shared_subset("isic2017_256_mini") / f"{T17['test']}_Data",
                    mini2017 / f"{T17['test']}_Data")  # fmt: skip
    code, error, _ = run(arl.main, ["--data-root", mini2017, "--out", out, *ARL], capsys)
    assert code == 2 and f"cannot read mask {mask}" in error, error


def test_skip_bad_lists_skips_and_writes_one_file_mode(
    mini2017: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = csv_rows(gt2017(mini2017, "test"))
    truncated, missing = rows[1][0], rows[2][0]
    truncate(image2017(mini2017, "test", truncated))
    image2017(mini2017, "test", missing).unlink()
    out = tmp_path / "run"
    code, error, printed = run(
        arl.main, ["--data-root", mini2017, "--out", out, *ARL, "--skip-bad"], capsys
    )
    assert code == 0, error
    assert "--skip-bad: left out 2 images" in printed and truncated in printed
    listed = csv_rows(out / "skipped.csv")
    assert listed[0] == ["split", "image_id", "file", "reason"]
    assert {(r[0], r[1]) for r in listed[1:]} == {("test", truncated), ("test", missing)}
    predicted = [r[0] for r in csv_rows(out / "predictions.csv")[1:]]
    assert truncated not in predicted and missing not in predicted
    # 11: every output file has the same permission bits (those of a plain open())
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in out.rglob("*") if p.is_file() and p.name != ".lock"}  # fmt: skip
    umask = os.umask(0)
    os.umask(umask)
    assert set(modes.values()) == {0o666 & ~umask}, modes


# ------------------------------------------------------------------- 4. mask encodings
def _mask_png(path: Path, mode: str, on: int | tuple) -> Path:
    """A 20x30 mask with a 10x10 lesion, encoded in ``mode`` with lesion value ``on``."""
    lesion = np.zeros((20, 30), bool)
    lesion[5:15, 10:20] = True
    if mode == "1":
        im = Image.fromarray(lesion & bool(on)).convert("1")
    elif mode == "P":
        im = Image.fromarray(lesion.astype(np.uint8), "P")
        im.putpalette([0, 0, 0, *on])
    elif mode == "RGB":
        arr = np.zeros((20, 30, 3), np.uint8)
        arr[lesion] = on
        im = Image.fromarray(arr, "RGB")
    elif mode == "LA":
        arr = np.full((20, 30, 2), 255, np.uint8)
        arr[..., 0] = lesion * on
        im = Image.fromarray(arr, "LA")
    elif mode == "I;16":
        im = Image.fromarray((lesion * on).astype(np.uint16))
    else:
        im = Image.fromarray((lesion * on).astype(np.uint8), "L")
    im.save(path)
    return path


@pytest.mark.parametrize(
    ("mode", "on"),
    [("L", 1), ("L", 255), ("L", 200), ("1", 1), ("P", (255, 255, 255)), ("P", (1, 1, 1)),
     ("P", (255, 0, 0)), ("RGB", (255, 255, 255)), ("RGB", (255, 0, 0)), ("RGB", (1, 1, 1)),
     ("LA", 255), ("LA", 1), ("I;16", 1), ("I;16", 255), ("I;16", 65535)],
)  # fmt: skip
def test_every_mask_encoding_gives_the_same_mask(tmp_path: Path, mode: str, on) -> None:
    path = _mask_png(tmp_path / "m.png", mode, on)
    out = np.asarray(load_mask(path))
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 255}
    assert (out == 255).sum() == 100 and out[5:15, 10:20].all()
    resized = np.asarray(load_mask(path, (60, 40)))
    assert (resized == 255).sum() == 400
    empty = _mask_png(tmp_path / "e.png", mode if mode != "P" else "L", 0)
    assert not np.asarray(load_mask(empty)).any()


def test_zero_one_masks_load_like_zero_255_masks(mini2017: Path, tmp_path: Path) -> None:
    reference = ISIC2017Dataset(mini2017, "val", "melanoma")
    expected = [reference.load(k)[1] for k in range(3)]
    for path in reference.mask_paths[:3]:
        arr = np.asarray(Image.open(path))
        Image.fromarray((arr > 127).astype(np.uint8)).save(path)  # now 0/1
    for kw in ({}, {"load_size": 64, "cache_dir": tmp_path / "cache", "progress": False}):
        ds = ISIC2017Dataset(mini2017, "val", "melanoma", **kw)
        for k in range(3):
            mask = ds.load(k)[1]
            assert mask.sum() > 0
            if not kw:
                assert torch.equal(mask, expected[k])


# --------------------------------------------------------------- 5. CARE batch > train set
def test_care_with_a_single_training_image_is_one_error_line(
    mini2018: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    argv = ["--data-root", mini2018, "--out", out, *CARE, "--train-limit", "1"]
    code, error, _ = run(care.main, argv, capsys)
    assert code == 2 and "CARE needs at least 2 training images" in error, error
    nothing_trained(out)


@pytest.mark.slow
def test_care_with_a_batch_larger_than_the_train_set_trains(
    mini2018: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    code, error, printed = run(
        care.main, ["--data-root", mini2018, "--out", out, *CARE, "--batch-size", "64"], capsys
    )
    assert code == 0, error
    assert "one batch per epoch" in printed
    log = list(csv.DictReader(open(out / "log.csv")))
    assert len(log) == 1 and np.isfinite(float(log[0]["train_loss"]))
    assert (out / "metrics.json").is_file()


def test_an_empty_training_loader_writes_nothing(tmp_path: Path) -> None:
    model = nn.Linear(4, 2)
    trainer = Trainer(model, lambda b, o, m: o.sum(), torch.optim.SGD(model.parameters(), lr=0.1),
                      tmp_path, torch.device("cpu"), progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="epoch 0 trained on no batch"):
        trainer.fit([], None, epochs=1)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "log.csv").exists()


# --------------------------------------------------------------------- 6. stale split.json
def test_stale_split_is_recomputed_and_refused_on_resume(
    mini2018: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    base = ["--data-root", mini2018, "--out", out, *CARE]
    code, error, _ = run(care.main, [*base, "--val-fraction", "0.01"], capsys)
    assert code == 2 and "val split" in error and "is empty" in error
    # a new run with a working fraction does not reuse the split of the failed one
    code, error, _ = run(care.main, [*base, "--val-fraction", "0.2", "--train-limit", "1"], capsys)
    assert code == 2 and "CARE needs at least 2 training images" in error, error
    split = json.loads((out / "split.json").read_text())
    assert split["val_fraction"] == 0.2 and "val" in split["assignment"].values()
    # resuming never recomputes a split: it is refused, and the file is kept
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pt").write_bytes(b"")
    before = (out / "split.json").read_bytes()
    code, error, _ = run(care.main, [*base, "--val-fraction", "0.3", "--resume"], capsys)
    assert code == 2 and "was made with other settings: val_fraction 0.2 (now 0.3)" in error
    assert (out / "split.json").read_bytes() == before


# ------------------------------------------------------- 9. one error line for user mistakes
def test_csv_listing_a_missing_image(
    mini2017: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = csv_rows(gt2017(mini2017, "val"))
    image2017(mini2017, "val", rows[4][0]).unlink()
    out = tmp_path / "run"
    code, error, _ = run(arl.main, ["--data-root", mini2017, "--out", out, *ARL], capsys)
    assert code == 2
    assert f"1 ids listed in {gt2017(mini2017, 'val')} have no image file" in error
    assert f"(first: {rows[4][0]})" in error
    nothing_trained(out)


BAD_FLAGS = [
    (arl, ["--image-size", "0"], "--image-size must be at least 32, got 0"),
    (arl, ["--image-size", "-8"], "--image-size must be at least 32"),
    (arl, ["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (arl, ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (arl, ["--lr", "-0.1"], "--lr must be > 0, got -0.1"),
    (arl, ["--lr", "nan"], "--lr must be > 0, got nan"),
    (arl, ["--workers", "-1"], "--workers must be >= 0, got -1"),
    (arl, ["--seed", "-3"], "--seed must be >= 0, got -3"),
    (arl, ["--patches-per-image", "0"], "--patches-per-image must be at least 1"),
    (arl, ["--limit", "0"], "--limit must be at least 1"),
    (arl, ["--patience", "0"], "--patience must be at least 1"),
    (arl, ["--alpha-init", "nan"], "--alpha-init must be a finite number, got nan"),
    (attnmel, ["--oversample", "0"], "--oversample must be at least 1"),
    (attnmel, ["--lambdas", "0.1", "-1"], "--lambdas must be >= 0, got [0.1, -1.0]"),
    (attnmel, ["--val-fraction", "1.5"], "--val-fraction must be in [0, 1), got 1.5"),
    (attnmel, ["--focal-gamma", "inf"], "--focal-gamma must be >= 0, got inf"),
    (care, ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (care, ["--train-limit", "0"], "--train-limit must be at least 1"),
    (care, ["--mix", "2"], "--mix must lie in [0, 1], got 2.0"),
]


@pytest.mark.parametrize(("script", "flags", "message"), BAD_FLAGS)
def test_bad_flag_values_are_one_error_line(
    script, flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    code, error, _ = run(script.main, ["--data-root", tmp_path, "--out", out, *flags], capsys)
    assert code == 2 and error.startswith(f"error: {message}"), error
    assert not out.exists()  # refused before anything is created


def _damaged_resume(out: Path, main, argv: list, capsys) -> str:
    """A run folder whose ``last.pt`` was cut in half, resumed."""
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.json").write_text("{}")
    torch.save({"model": {"w": torch.zeros(1000)}}, out / "checkpoints" / "whole.pt")
    data = (out / "checkpoints" / "whole.pt").read_bytes()
    (out / "checkpoints" / "whole.pt").unlink()
    (out / "checkpoints" / "last.pt").write_bytes(data[: len(data) // 2])
    code, error, _ = run(main, [*argv, "--resume"], capsys)
    assert code == 2
    return error


def test_corrupted_last_checkpoint_on_resume(
    mini2017: Path, mini2018: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for main, argv in (
        (arl.main, ["--data-root", mini2017, "--out", tmp_path / "a", *ARL, "--epochs", "2"]),
        (care.main, ["--data-root", mini2018, "--out", tmp_path / "c", *CARE, "--epochs", "2"]),
    ):
        out = Path(argv[3])
        error = _damaged_resume(out, main, argv, capsys)
        assert f"--resume: cannot read the checkpoint {out / 'checkpoints' / 'last.pt'}" in error
        assert "truncated or corrupted" in error
    # the same damaged file as the stage 1 of a CARE run
    argv = ["--data-root", mini2018, "--out", tmp_path / "s2", *CARE, "--epochs", "2"]
    code, error, _ = run(care.main, [*argv, "--stage1-from", tmp_path / "c"], capsys)
    assert code == 2, error
    assert f"--stage1-from: cannot read the checkpoint {tmp_path / 'c' / 'checkpoints'}" in error


def test_full_disk_while_saving_keeps_log_and_checkpoint_in_step(
    mini2017: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "run"
    code, error, _ = run(arl.main, ["--data-root", mini2017, "--out", out, *ARL], capsys)
    assert code == 2
    assert f"error: cannot write {out / 'checkpoints'}" in error and "disk full" in error
    # neither a half-written checkpoint nor a log row that no checkpoint backs
    assert not (out / "log.csv").exists()
    assert list((out / "checkpoints").iterdir()) == []


def test_log_is_rewritten_from_the_checkpoint_on_resume(tmp_path: Path) -> None:
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    batches = [{"image": x, "label": y}]
    model = nn.Linear(4, 2)

    def make() -> Trainer:
        return Trainer(model, lambda b, o, m: nn.functional.cross_entropy(o, b["label"]),
                       torch.optim.SGD(model.parameters(), lr=0.1), tmp_path, torch.device("cpu"),
                       progress=False)  # fmt: skip

    make().fit(batches, None, epochs=1)
    with open(tmp_path / "log.csv", "a") as f:  # a row that no checkpoint backs
        f.write("1,0.1,9.9,1,0.1,True\n")
    trainer = make()
    trainer.fit(batches, None, epochs=1, resume=True)  # nothing left to train
    assert [r[0] for r in csv_rows(tmp_path / "log.csv")] == ["epoch", "0"]


# --------------------------------------------------------------- 11. file modes, cache env
def test_atomic_writes_have_the_mode_of_a_plain_open(tmp_path: Path) -> None:
    umask = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.json", lambda fh: fh.write(b"{}"))
        (tmp_path / "plain").write_text("")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
        assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o640
    finally:
        os.umask(umask)


def test_synthetic_cache_reads_attnblocks_cache_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("ATTNBLOCKS_CACHE_DIR", raising=False)
    monkeypatch.setenv("ATTNBLOCKS_CACHE", str(tmp_path / "old"))
    assert default_cache_dir() == tmp_path / "old"  # the older name still works
    monkeypatch.setenv("ATTNBLOCKS_CACHE_DIR", str(tmp_path / "new"))
    assert default_cache_dir() == tmp_path / "new"  # and the library's name wins
    folder = cached_dataset("t", "k", lambda d: (d / "f.txt").write_text("x"))
    assert folder.parent == tmp_path / "new" / "synthetic" and (folder / "f.txt").is_file()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------- beyond: other formats, readers
def test_grayscale_png_and_16_bit_images_in_place_of_jpegs(mini2017: Path) -> None:
    ids = [r[0] for r in csv_rows(gt2017(mini2017, "val"))[1:]]
    reference = ISIC2017Dataset(mini2017, "val", "melanoma")
    expected = reference.load(1)[0]
    first = image2017(mini2017, "val", ids[0])
    Image.open(first).convert("L").save(first, quality=95)  # a grey JPEG
    second = image2017(mini2017, "val", ids[1])
    rgb = np.asarray(Image.open(second).convert("RGB"))
    Image.fromarray(rgb).save(second.with_suffix(".png"))  # a PNG instead of the JPEG
    second.unlink()
    third = image2017(mini2017, "val", ids[2])
    grey = np.asarray(Image.open(third).convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(third.with_suffix(".png"))  # 16-bit grey PNG
    third.unlink()
    ds = ISIC2017Dataset(mini2017, "val", "melanoma", verify=True)
    assert ds.ids == reference.ids
    images = [ds.load(k)[0] for k in range(3)]
    assert all(im.shape[0] == 3 and im.dtype == torch.uint8 for im in images)
    assert torch.equal(images[1], expected)
    ref_grey = np.asarray(Image.open(image2017(shared_subset("isic2017_256_mini"), "val",
                                               ids[2])).convert("L"), np.float32)  # fmt: skip
    assert np.abs(images[2][0].numpy().astype(np.float32) - ref_grey).mean() < 1.0
    assert load_image(third.with_suffix(".png")).mode == "RGB"


def test_csv_with_a_byte_order_mark_and_binary_csv(
    mini2017: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = gt2017(mini2017, "val")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # saved by a spreadsheet
    assert len(ISIC2017Dataset(mini2017, "val")) == 15
    path.write_bytes(b"\xff\xfe\x00garbage\x9c")
    code, error, _ = run(arl.main, ["--data-root", mini2017, "--out", tmp_path / "o", *ARL], capsys)
    assert code == 2 and f"{path} is not a UTF-8 text CSV" in error


@pytest.mark.parametrize("script", [care, attnmel], ids=["care", "attnmel"])
def test_damaged_weights_file_is_one_error_line(
    script, mini2017: Path, mini2018: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    weights = tmp_path / "w.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, weights)
    weights.write_bytes(weights.read_bytes()[:300])  # truncated download
    if script is care:
        argv = ["--data-root", mini2018, *CARE]
    else:
        argv = ["--data-root", mini2017, "--image-size", "32", "--backbone", "resnet18",
                "--limit", "6", "--epochs", "1", "--no-progress"]  # fmt: skip
    out = tmp_path / "run"
    code, error, _ = run(script.main, [*argv, "--out", out, "--weights", weights], capsys)
    assert code == 2 and error.startswith(f"error: --weights {weights}: cannot load"), error
    nothing_trained(out)


def test_metadata_csv_with_a_byte_order_mark(mini2018: Path) -> None:
    meta = mini2018 / "HAM10000_metadata.csv"
    expected = ISIC2018Dataset(mini2018, "all").lesion_ids
    meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes())
    assert ISIC2018Dataset(mini2018, "all").lesion_ids == expected
    assert all(i.startswith("HAM_") for i in expected)  # read from the file, not one per image


def test_compare_runs_names_unreadable_files(tmp_path: Path) -> None:
    good = []
    for k in range(2):
        good.append(tmp_path / f"m{k}.json")
        good[-1].write_text(json.dumps({"mean_auc": 0.5 + k / 10}))
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00\x9c")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "compare_runs.py"), "--a", *map(str, good),
         "--b", str(binary), str(good[0])],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {binary}")


def test_resized_cache_rebuilds_masks_binarised_by_the_old_rule(tmp_path: Path) -> None:
    img = tmp_path / "i.jpg"
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(img)
    mask = _mask_png(tmp_path / "m.png", "L", 1)
    cache = ResizedImageCache(tmp_path / "c", size=20)
    old_entry = cache._entry(mask, "mask", "30x20")  # where an empty mask used to be stored
    old_entry.parent.mkdir(parents=True)
    Image.new("1", (30, 20)).save(old_entry)
    assert int(cache.get_mask_tensor(mask, (30, 20)).sum()) == 100


def test_data_folder_is_never_written(mini2018: Path, tmp_path: Path, capsys) -> None:
    before = {p: p.stat().st_mtime_ns for p in mini2018.rglob("*")}
    run(care.main, ["--data-root", mini2018, "--out", tmp_path / "r", *CARE, "--train-limit", "1"],
        capsys)  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in mini2018.rglob("*")} == before


def test_2018_one_hot_and_duplicates(mini2018: Path) -> None:
    path = mini2018 / "ISIC2018_Task3_Training_GroundTruth"
    path = path / "ISIC2018_Task3_Training_GroundTruth.csv"
    rows = csv_rows(path)
    write_rows(path, [*rows, rows[1]])
    with pytest.raises(ValueError, match=f"first: {rows[1][0]}"):
        ISIC2018Dataset(mini2018, "all")
    assert len(ISIC2018Dataset(mini2018, "all", skip_bad=True)) == len(rows) - 1
    bad = ["ISIC_9999999", *(["1.0"] * 2), *(["0.0"] * 5)]
    write_rows(path, [*rows, bad])
    with pytest.raises(ValueError, match="not one-hot"):
        ISIC2018Dataset(mini2018, "all")
