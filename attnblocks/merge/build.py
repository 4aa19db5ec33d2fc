"""Building and loading the fused CPU kernels of the ARL merge (standard library only, so that a
build can be run, and tested, without importing PyTorch).

The source (``csrc/arl_merge.cpp``) is compiled once per machine, source, compiler, flags and CPU
with ``$CXX`` (honoured when set: a ``CXX`` that is not an executable compiler is reported, never
replaced) or else the first of ``c++``, ``g++``, ``clang++`` on ``PATH``. Each build prints one line
on the ``attnblocks`` logger. The library lands atomically, mode 0755, in ``$ATTNBLOCKS_CACHE_DIR``
(else ``$XDG_CACHE_HOME/attnblocks`` or ``~/.cache/attnblocks``), so that a cache can be shared
read-only between users; where that folder is not writable, a private one under the system
temporary folder is used. The compiler writes into a temporary folder of its own, which the next
build sweeps if a kill left it behind.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["ABI", "BuildError", "cache_dir", "load_library"]

log = logging.getLogger("attnblocks.merge")

_SOURCE = Path(__file__).with_name("csrc") / "arl_merge.cpp"
ABI = 5  # ab_abi_version() of the source
# -ffp-contract=off: a * b + c rounds twice, as PyTorch's kernels do, unless the source says fma
_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=off"]
_FLAGS += ["-fopenmp", "-fPIC"]
_FLAGS += ["-shared", "-std=c++17"]
if platform.machine().lower() in ("x86_64", "amd64"):
    _FLAGS.append("-mprefer-vector-width=512")  # where AVX-512 exists, use its full width
_BUILD_PREFIX = "attnblocks-build-"


class BuildError(RuntimeError):
    """The kernels could not be built or loaded."""


def cache_dir() -> Path:
    """Where the built library is kept (see the module docstring)."""
    if os.environ.get("ATTNBLOCKS_CACHE_DIR"):
        return Path(os.environ["ATTNBLOCKS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnblocks"


def _compiler() -> str:
    """The C++ compiler: ``$CXX`` if set (and it must exist), else the first one on ``PATH``."""
    explicit = os.environ.get("CXX", "").strip()
    if explicit:
        path = shutil.which(explicit)
        if path is None:
            raise BuildError(f"CXX={explicit!r} is not an executable compiler")
        return path
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    raise BuildError("no C++ compiler found (set CXX, or install c++, g++ or clang++)")


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return "".join([ln for ln in fh if ln.startswith(("flags", "model name"))][:2])
    except OSError:
        return platform.processor() or platform.machine()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(folder: Path) -> None:
    """Remove build folders and temporary files that killed builds left in ``folder``."""
    for path in folder.glob(f"{_BUILD_PREFIX}*"):
        try:
            pid = int(path.name[len(_BUILD_PREFIX) :].split("-")[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(True)


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def _build(cxx: str) -> Path:
    """The library's path, compiling it first if no cache holds it (once per source, compiler,
    flags and CPU)."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    key = hashlib.sha256(
        _SOURCE.read_bytes() + cxx.encode() + version.stdout.encode()
        + " ".join(_FLAGS).encode() + _cpu_key().encode()
    ).hexdigest()[:16]  # fmt: skip
    name = f"arl_merge-{key}.so"
    private = Path(tempfile.gettempdir()) / f"attnblocks-{os.getuid()}"
    for folder in (cache_dir(), private):
        if (folder / name).is_file():
            return folder / name
    folder = cache_dir() if _writable(cache_dir()) else private
    if not _writable(folder):
        raise BuildError(f"no writable cache folder ({cache_dir()} or {private})")
    target = folder / name
    log.warning("attnblocks: building the native ARL merge kernels with %s into %s", cxx, target)
    _sweep(folder)
    _sweep(Path(tempfile.gettempdir()))
    work = Path(tempfile.mkdtemp(prefix=f"{_BUILD_PREFIX}{os.getpid()}-"))
    try:
        out = work / name
        done = subprocess.run(
            [cxx, *_FLAGS, str(_SOURCE), "-o", str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BuildError(f"{cxx} failed: {done.stderr.strip()[-2000:]}")
        staged = folder / f"{_BUILD_PREFIX}{os.getpid()}-{name}"
        shutil.copyfile(out, staged)
        os.chmod(staged, 0o755)
        os.replace(staged, target)  # atomic: a concurrent build writes the same bytes
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def load_library() -> ctypes.CDLL:
    """The kernels' library, built first where no cache holds it.

    Raises:
        BuildError: not Linux, no compiler, a failed build, or a stale library.
    """
    if platform.system() != "Linux":
        raise BuildError(f"built on Linux only, not {platform.system()}")
    try:
        lib = ctypes.CDLL(str(_build(_compiler())))
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(str(exc)) from exc
    lib.ab_abi_version.argtypes, lib.ab_abi_version.restype = [], ctypes.c_int
    if lib.ab_abi_version() != ABI:
        raise BuildError("stale library (ABI version mismatch)")
    return lib
