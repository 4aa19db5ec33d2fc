"""examples.run: the run set-up shared by the example scripts and the benchmarks."""

from __future__ import annotations

import argparse
import json
import os
import stat

import pytest
import torch

from examples import run


def test_resolve_device_names() -> None:
    assert run.resolve_device("cpu") == torch.device("cpu")
    assert run.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "CPU", ""):
        with pytest.raises(ValueError, match="--device must be"):
            run.resolve_device(bad)
    with pytest.raises(TypeError, match="--device must be a string"):
        run.resolve_device(0)
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(ValueError, match=f"--device {name}: no CUDA device"):
                run.resolve_device(name)


def test_autocast_table() -> None:
    cpu = torch.device("cpu")
    run.check_amp("bf16", cpu)
    run.check_amp("none", cpu)
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA device"):
        run.check_amp("fp16", cpu)
    with pytest.raises(ValueError, match="--amp must be one of"):
        run.check_amp("fp32", cpu)
    with run.autocast(cpu, "bf16"):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16
    with run.autocast(cpu, "none"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="amp must be one of"):
        run.autocast(cpu, "half")


def test_fill_defaults_precedence() -> None:
    args = argparse.Namespace(lr=None, epochs=3, size=None)
    out = run.fill_defaults(args, {"lr": 0.1, "size": 64}, {"lr": 0.01, "epochs": 50, "extra": 1})
    assert out is args
    assert (args.lr, args.epochs, args.size, args.extra) == (0.1, 3, 64, 1)


def test_atomic_writers_replace_whole_files_with_plain_modes(tmp_path) -> None:
    dest = tmp_path / "sub" / "a.json"
    run.write_json(dest, {"x": 1.5, "p": tmp_path})
    assert json.loads(dest.read_text()) == {"x": 1.5, "p": str(tmp_path)}
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask

    def fail(fh) -> None:
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run.atomic_write(dest, fail)
    assert json.loads(dest.read_text()) == {"x": 1.5, "p": str(tmp_path)}
    with pytest.raises(RuntimeError), run.atomic_path(tmp_path / "fig.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
        raise RuntimeError("savefig failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]  # nothing left behind


def test_atomic_save_reports_an_unwritable_folder(tmp_path) -> None:
    run.atomic_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(tmp_path / "c.pt")["w"], torch.arange(3))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(run.OutputWriteError, match="cannot write .*last.pt"):
        run.atomic_save({}, blocker / "last.pt")


def test_environment_record() -> None:
    env = run.environment("cpu")
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert env["threads"] == torch.get_num_threads()
    commit, dirty = run.git_state()
    if commit is not None:
        assert len(commit) == 40 and env["git_commit"].startswith(commit)
        assert env["git_commit"].endswith("-dirty") == dirty
    assert run.git_state("/") == (None, None)
