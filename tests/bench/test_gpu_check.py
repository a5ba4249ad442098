"""bench/gpu_check.sh: its dry run (CPU, tiny random tower) goes through every section a GPU run does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2", **(env or {})},
    )


def test_dry_run_runs_every_section_and_prints_one_json_summary(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    proc = _run("--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON object on stdout, logs on stderr
    summary = json.loads(lines[0])
    assert summary == json.loads(out.read_text())
    assert summary["ok"] is True and summary["failed"] == [] and summary["profile"] == "tiny"
    s = summary["sections"]
    assert set(s) == {"machine", "base", "embed_448", "embed_256", "train_last_blocks", "train_lora", "fp8"}
    assert s["machine"]["device"] == "cpu" and s["base"]["depth"] == 2
    for name in ("embed_448", "embed_256"):
        assert s[name]["unit_norm"] is True and s[name]["img_per_s"] > 0 and s[name]["tower_img_per_s"] > 0
        assert s[name]["images"] == 8
    # 448² holds more tokens than 256² (the budget reaches the tower).
    assert s["embed_448"]["tokens_per_image"] > s["embed_256"]["tokens_per_image"]
    last = s["train_last_blocks"]
    assert last["steps_timed"] == 2 and last["loss_finite"] is True and last["s_per_step"] > 0
    assert 0 < last["trainable_m"] < s["base"]["params_m"]
    lora = s["train_lora"]
    try:
        import peft  # noqa: F401
    except ImportError:
        assert "peft is not installed" in lora["skipped"]
    else:
        assert lora["loss_finite"] is True and lora["trainable_m"] < last["trainable_m"]
    assert "compute capability >= 8.9" in s["fp8"]["skipped"]
    # The plan's epoch, from this run's own figures: 83 users // P=16 steps, validation, head-mode cache.
    plan = summary["plan_estimate"]
    assert plan["steps_per_epoch"] == 5
    assert plan["validation_s"] == pytest.approx(52 / s["embed_448"]["img_per_s"], abs=0.1)
    assert plan["last_blocks_epoch_s"] >= plan["last_blocks_epoch_s_compute_only"] > plan["validation_s"]


def test_without_a_gpu_it_says_so_and_succeeds() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the real check would run")
    proc = _run()
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert "no CUDA GPU" in summary["skipped"] and "--dry-run" in summary["skipped"]
