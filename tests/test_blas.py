"""OpenBLAS routing in a real worker-style process: active, much faster, same numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_DIR, base_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the routing is for Linux CPU only")

PROBE = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from worker.blas import route_blas
routing = route_blas(Path(sys.argv[1]))
import mlx.core as mx
rng = np.random.default_rng(0)
a = mx.array(rng.standard_normal((512, 512), dtype=np.float32))
b = mx.array(rng.standard_normal((512, 512), dtype=np.float32))
mx.eval(a @ b)
times = []
for _ in range(5):
    tic = time.perf_counter(); mx.eval(a @ b); times.append(time.perf_counter() - tic)
np.save(sys.argv[2], np.array(a @ b))
print(json.dumps({"active": routing.active, "library": routing.library, "threads": routing.threads,
                  "seconds": sorted(times)[2]}))
"""


def probe(tmp_path: Path, name: str, **env: str) -> tuple[dict[str, object], np.ndarray]:
    out = tmp_path / f"{name}.npy"
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(PROJECT_DIR / "data" / ".cache"), str(out)],
        cwd=PROJECT_DIR, env=base_env(**env), capture_output=True, text=True, timeout=120, check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1]), np.load(out)


@pytest.mark.real  # MLX in other processes
def test_routing_is_active_much_faster_and_numerically_equal(tmp_path: Path) -> None:
    routed, routed_result = probe(tmp_path, "routed")
    reference, reference_result = probe(tmp_path, "reference", LORABOARD_OPENBLAS="0")
    assert routed["active"] is True and "OpenBLAS" in str(routed["library"])
    assert reference["active"] is False
    # the reference BLAS is ~30x slower on this product; 3x leaves room for a busy machine
    assert float(reference["seconds"]) / float(routed["seconds"]) > 3.0
    np.testing.assert_allclose(routed_result, reference_result, rtol=1e-4, atol=1e-4)


@pytest.mark.real  # MLX in other processes
def test_switch_off_and_fallback_say_why(tmp_path: Path) -> None:
    off, _ = probe(tmp_path, "off", LORABOARD_OPENBLAS="off")
    assert off["active"] is False
    broken = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "cache"), str(tmp_path / "x.npy")],
        cwd=PROJECT_DIR, env=base_env(CC="/nonexistent/cc", PATH="/nonexistent"), capture_output=True, text=True,
        timeout=120,
    )
    assert broken.returncode == 0, broken.stderr  # falls back to stock MLX
    assert json.loads(broken.stdout.strip().splitlines()[-1])["active"] is False
    warnings = [line for line in broken.stderr.splitlines() if "OpenBLAS routing unavailable" in line]
    assert len(warnings) == 1 and "compiler" in warnings[0]
