"""The wheel holds the attnblocks package only, and installs and imports in a fresh venv."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from attnblocks.merge import native as _merge_native
from tests._support.data import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(out),
        str(ROOT),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wheels = list(out.glob("attnblocks-0.1.0-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"attnblocks", "attnblocks-0.1.0.dist-info"}, top
    assert "attnblocks/py.typed" in names and "attnblocks/arl.py" in names
    assert "attnblocks/merge/csrc/arl_merge.cpp" in names  # the native merge kernels' source
    metadata = zipfile.ZipFile(wheel).read("attnblocks-0.1.0.dist-info/METADATA").decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert {r.split()[1].split(">")[0].split("=")[0] for r in core} == {
        "torch",
        "torchvision",
        "timm",
        "einops",
    }
    assert not any("==" in r.split(";")[0] for r in requires), "dependencies are ranges, not pins"
    assert "Requires-Python: >=3.10" in metadata


def test_core_imports_only_its_declared_dependencies() -> None:
    """The package imports no third-party module that pyproject.toml does not declare (the core never
    imports the examples' scikit-learn, matplotlib, ...), but for two optional ones imported where
    they are used: Triton (shipped with CUDA builds of torch) and safetensors (timm's dependency)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0] for d in project["dependencies"]}
    imported = set()
    for path in (ROOT / "attnblocks").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"attnblocks", "__future__"}
    assert {"torch", "timm", "einops"} <= third_party
    assert third_party - declared <= {"triton", "safetensors"}, third_party - declared
    assert declared <= third_party, declared - third_party  # nothing declared and never used


# ~10 s (a venv, pip, a fresh interpreter importing torch, a kernel build): end to end, in the slow
# set; the default set checks the wheel's files and metadata above and builds the kernels from the
# same source in test_merge_native.py
@pytest.mark.slow
def test_wheel_installs_and_imports_in_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(py),
        "install",
        "--no-deps",
        "--no-index",
        "-q",
    ]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, text=True)
    # torch & co. are not re-installed (gigabytes): the fresh venv sees this environment's copies,
    # after its own site-packages, so attnblocks itself must come from the wheel.
    fresh_site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(fresh_site) / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = (
        "import attnblocks as ab, timm, torch;"
        "from attnblocks.merge import native as n;"
        "m = ab.ARLWrapper(timm.create_model('resnet18', num_classes=2), alpha_init=0.0);"
        "print(ab.__file__); print(len(m.alphas())); print(ab.__version__);"
        "print(n.prepare() or n.error())"
    )
    env = {**os.environ, "ATTNBLOCKS_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(
        [str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path, env=env
    )
    file, n_alphas, version, native = out.stdout.split(maxsplit=3)
    assert file.startswith(fresh_site), f"imported {file}, not the wheel in {fresh_site}"
    assert n_alphas == "8" and version == "0.1.0"
    if _merge_native.prepare():  # where a compiler exists, the installed source builds
        assert native.strip() == "True", native
