"""Route MLX's CPU matrix products to OpenBLAS on Linux.

The `mlx-cpu` wheel links the reference (netlib) BLAS. MLX only calls
`cblas_sgemm`, `cblas_dgemm` and `cblas_cgemm`; a tiny C shim forwards those to
the OpenBLAS carried by the `scipy-openblas32` wheel. The shim is compiled on
first use into a cache folder and loaded with RTLD_GLOBAL *before* `mlx.core`
is imported, so the dynamic linker binds libmlx's symbols to it.

This module must not import mlx.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SHIM_SOURCE = Path(__file__).parent / "native" / "cblas_openblas.c"
DISABLE_ENV = "LORABOARD_OPENBLAS"  # "0"/"off"/"false" turns the routing off


@dataclass(frozen=True)
class BlasRouting:
    """What the worker's matrix products run on, as shown to the user."""

    active: bool
    library: str  # e.g. "OpenBLAS (scipy-openblas32)" or "reference BLAS"
    threads: int
    reason: str = ""  # why routing is off, when it is


def _openblas_dir() -> Path | None:
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or spec.origin is None:
        return None
    lib_dir = Path(spec.origin).parent / "lib"
    return lib_dir if (lib_dir / "libscipy_openblas.so").exists() else None


def _shim_path(cache_dir: Path, lib_dir: Path) -> Path:
    key = hashlib.sha256(SHIM_SOURCE.read_bytes() + str(lib_dir).encode()).hexdigest()[:12]
    return cache_dir / f"libloraboard_cblas-{key}.so"


def build_shim(cache_dir: Path, lib_dir: Path) -> Path:
    """Compile the forwarding shim once (atomically) and return its path."""
    target = _shim_path(cache_dir, lib_dir)
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler ({compiler or 'cc/gcc'}) found to build the OpenBLAS shim once")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".so", dir=cache_dir)
    os.close(fd)
    cmd = [
        compiler, "-O2", "-shared", "-fPIC", str(SHIM_SOURCE), "-o", tmp_name,
        f"-L{lib_dir}", "-lscipy_openblas", f"-Wl,-rpath,{lib_dir}",
    ]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"building the OpenBLAS shim failed: {result.stderr.strip()}")
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def _thread_count() -> int:
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def cuda_backend_installed() -> bool:
    """Whether MLX's CUDA backend is the one installed (then matrix products run on the GPU)."""
    for name in ("mlx-cuda-13", "mlx-cuda-12", "mlx-cuda"):
        try:
            importlib.metadata.distribution(name)
            return True
        except importlib.metadata.PackageNotFoundError:
            continue
    return False


def routing_wanted(setting: bool = True) -> bool:
    """The setting, overridden by LORABOARD_OPENBLAS=0/off/false."""
    env = os.environ.get(DISABLE_ENV, "").strip().lower()
    if env in {"0", "off", "false", "no"}:
        return False
    return setting


def route_blas(cache_dir: Path, enabled: bool = True, threads: int = 1) -> BlasRouting:
    """Load the shim before mlx.core on Linux; otherwise say why not.

    `threads` is OpenBLAS's thread count (0: one per core) unless OPENBLAS_NUM_THREADS
    is already set. One is the default: MLX's own CPU ops are single-threaded, a second
    BLAS thread gains at most about a third, and OpenBLAS threads that spin-wait make
    training many times slower as soon as another process wants the same cores.
    Never raises: any failure falls back to stock MLX with one warning line.
    """
    if threads > 0:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", str(threads))
    reference = "reference BLAS"
    if not sys.platform.startswith("linux"):
        return BlasRouting(False, "platform BLAS", _thread_count(), "not Linux")
    if cuda_backend_installed():
        return BlasRouting(False, "reference BLAS", 1, "the CUDA backend trains on the GPU")
    if "mlx.core" in sys.modules:
        return BlasRouting(False, reference, 1, "mlx.core was imported before routing")
    if not routing_wanted(enabled):
        return BlasRouting(False, reference, 1, "switched off")
    lib_dir = _openblas_dir()
    if lib_dir is None:
        reason = "scipy-openblas32 is not installed"
    else:
        try:
            shim = build_shim(cache_dir, lib_dir)
            handle = ctypes.CDLL(str(shim), mode=ctypes.RTLD_GLOBAL)
            handle.loraboard_blas_name.restype = ctypes.c_char_p
            name = handle.loraboard_blas_name().decode()
            return BlasRouting(True, name, _thread_count())
        except (OSError, RuntimeError) as exc:
            reason = str(exc)
    print(f"loraboard: OpenBLAS routing unavailable ({reason}); training on MLX's reference BLAS",
          file=sys.stderr)
    return BlasRouting(False, reference, 1, reason)
