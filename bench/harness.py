"""What the benchmark scripts share: synthetic photos, peak RSS, one subprocess per setting, the table.

Not a package: each script is run as ``python bench/<name>.py`` and puts this folder on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def photos(n: int, seed: int = 0, *, diagonal: bool = False) -> list[Any]:
    """``n`` structured 640x480 RGB images (the processor resizes them to the budget); stripes run across
    the image, or along its diagonal with ``diagonal``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    out = []
    for _ in range(n):
        phase = (xx + yy) if diagonal else xx
        img = rng.uniform(0, 255, 3) * (0.5 + 0.5 * np.sin(phase / rng.uniform(8, 40)))[..., None]
        img += rng.normal(0, 10, (480, 640, 3))
        out.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
    return out


def rss_mb() -> float:
    """This process's peak resident set size, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_child(script: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``script --worker SPEC`` in a fresh, offline process (so its peak memory is its own); returns the
    JSON row it prints last. Raises ``RuntimeError`` with the end of its stderr if it fails."""
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", json.dumps(spec)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"setting {spec} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run_settings(
    script: str, specs: Sequence[dict[str, Any]], label: Callable[[dict[str, Any]], str]
) -> list[dict[str, Any]]:
    """Each setting in its own child process (:func:`run_child`), saying on stderr which one runs."""
    rows = []
    for spec in specs:
        print(f"running {label(spec)} ...", file=sys.stderr)
        rows.append(run_child(script, spec))
    return rows


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (as kept in docs/benchmarks.md)."""
    lines = [" | ".join(head), " | ".join("---" for _ in head), *(" | ".join(r) for r in rows)]
    return "\n".join("| " + line + " |" for line in lines)


def cpu_line() -> str:
    """The machine line printed under each table."""
    return f"CPU: {os.cpu_count()} logical cores; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
