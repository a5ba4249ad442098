"""The SageMaker training-container contract, with its folders and variables laid out in a temp dir."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.errors import InvalidInput
from training.loop import Interrupted
from training.sagemaker import job_paths, main, parse_hyperparameters, run_job

ROOT = Path(__file__).resolve().parents[2]
# As SageMaker writes hyperparameters.json: every value a string.
FAST_HPS = {
    "pixel_budget": "4096",
    "dim": "16",
    "p": "6",
    "k": "2",
    "cache_views": "2",
    "val_identities": "5",
    "eval_batch_size": "64",
    "checkpoint_every": "1",
    "sagemaker_program": "train.py",
    "sagemaker_region": '"eu-west-1"',
}


@pytest.fixture(scope="module")
def seed_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from evaluation.seed_data import make_seed_data

    return make_seed_data(tmp_path_factory.mktemp("seed") / "data", users=30, generated_per_user=3, seed=7)


def _job(root: Path, train: Path, base: Path, hps: dict[str, str]) -> dict[str, str]:
    """Lay out /opt/ml under ``root``: the hyperparameters file and the variables SageMaker sets."""
    (root / "input" / "config").mkdir(parents=True, exist_ok=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hps))
    return {"SM_CHANNEL_TRAIN": str(train), "SM_CHANNEL_BASE": str(base), "SM_MODEL_DIR": str(root / "model")}


def test_hyperparameters_arrive_as_strings_and_become_settings() -> None:
    settings, base = parse_hyperparameters(
        {
            "mode": "last_blocks",
            "epochs": "12",
            "lr": "3e-4",
            "activation_checkpointing": "false",
            "losses": "supcon,triplet",
            "loss_weights": "[0.7, 0.3]",
            "augment.flip_p": "0.0",
            "augment.crop_scale": "[0.8, 1.0]",
            "base": "Qwen/Qwen3-VL-2B-Instruct",
            "sagemaker_job_name": "x",
        }
    )
    assert (settings.mode, settings.epochs, settings.lr) == ("last_blocks", 12, 3e-4)
    assert settings.activation_checkpointing is False
    assert settings.losses == ["supcon", "triplet"] and settings.loss_weights == [0.7, 0.3]
    assert settings.augment.flip_p == 0.0 and settings.augment.crop_scale == (0.8, 1.0)
    assert settings.checkpoint_every == 50  # the entry's spot-friendly default
    assert settings.workers == max(0, min(8, (os.cpu_count() or 1) - 1))  # preprocessing keeps up
    assert parse_hyperparameters({"workers": "0"})[0].workers == 0
    assert base == "Qwen/Qwen3-VL-2B-Instruct"
    # The SDK's JSON-quoted strings decode too.
    assert parse_hyperparameters({"mode": '"lora"'})[0].mode == "lora"


@pytest.mark.parametrize(
    ("hps", "message"),
    [
        ({"epoch": "3"}, r"unknown hyperparameters: epoch"),
        ({"epochs": "many"}, r"epochs='many'"),
        ({"mode": "everything"}, r"mode='everything'"),
        ({"augment.flip_p": "2"}, r"augment\.flip_p=2"),
    ],
)
def test_bad_hyperparameters_are_named(hps: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_hyperparameters(hps)


def test_channels_come_from_variables_or_the_opt_ml_folders(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"channel 'train'.*input/data/train"):
        job_paths({}, tmp_path)
    (tmp_path / "input" / "data" / "train").mkdir(parents=True)
    paths = job_paths({}, tmp_path)
    assert paths.train == tmp_path / "input" / "data" / "train"
    assert (paths.validation, paths.base) == (None, None)
    assert paths.model_dir == tmp_path / "model" and paths.checkpoint_dir == tmp_path / "checkpoints"
    assert paths.hyperparameters == {}
    other = tmp_path / "elsewhere"
    other.mkdir()
    env = {
        "SM_CHANNEL_TRAIN": str(other),
        "SM_CHANNEL_VALIDATION": str(other),
        "SM_MODEL_DIR": "/m",
        "SM_HPS": '{"epochs": 2}',
    }
    paths = job_paths(env, tmp_path)
    assert (paths.train, paths.validation, paths.model_dir) == (other, other, Path("/m"))
    assert paths.hyperparameters == {"epochs": 2}


def test_a_job_writes_the_model_to_sm_model_dir_and_it_ingests(
    seed_data: Path, tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from matcher.cli import main as matcher_main
    from training.encoder import load_encoder

    root = tmp_path / "opt_ml"
    env = _job(root, seed_data, tiny_checkpoint, {**FAST_HPS, "epochs": "2"})
    with caplog.at_level(logging.INFO):
        assert main([], env, root) == 0
    model = root / "model"
    card = json.loads((model / "encoder_card.json").read_text())
    assert {"tower", "head.safetensors", "preprocessor_config.json", "metrics.jsonl", "seed_split.json"} <= {
        p.name for p in model.iterdir()
    }
    assert not (model / "checkpoints").exists() and not (model / "cache").exists()
    # Trained on generated images only, validated on real users only.
    assert card["data"]["train"]["photos"] == (30 - 5) * 3 and card["data"]["val"]["identities"] == 5
    assert (root / "checkpoints" / "run" / "checkpoints" / "last.pt").is_file()
    summary = json.loads((root / "output" / "data" / "summary.json").read_text())
    assert summary["resumed"] is False and summary["encoder_id"] == card["encoder_id"]
    # The launcher's metric definitions read each epoch's numbers off the job's log.
    sys.path.insert(0, str(ROOT / "deploy" / "sagemaker"))
    from launch import METRIC_DEFINITIONS

    log_text = "\n".join(r.getMessage() for r in caplog.records)
    metrics = [json.loads(line) for line in (model / "metrics.jsonl").read_text().splitlines()]
    for name, regex in METRIC_DEFINITIONS.items():
        found = [float(v) for v in re.findall(regex, log_text)]
        assert len(found) == 2, name  # one per epoch
        key = {"train:loss": "train_loss", "validation:recall_at_1": "recall@1", "validation:map_at_r": "map@r"}[name]
        logged = [e["train_loss"] if key == "train_loss" else e["val"][key] for e in metrics[1:]]
        assert found == pytest.approx(logged, abs=1e-3), name
    encoder = load_encoder(model, device="cpu")
    assert encoder.encoder_id == card["encoder_id"] and encoder.dim == 16
    # The model artefact, as downloaded from S3 and unpacked, is what `matcher ingest --encoder` takes.
    report = tmp_path / "ingest.json"
    code = matcher_main(
        [
            "--no-progress",
            "--store",
            str(tmp_path / "store"),
            "ingest",
            str(seed_data),
            "--metadata",
            str(seed_data / "metadata.csv"),
            "--encoder",
            str(model),
            "--report",
            str(report),
        ]
    )
    assert code == 0
    ingested = json.loads(report.read_text())
    n_rows = len((seed_data / "metadata.csv").read_text().strip().splitlines()) - 1
    assert ingested["counts"]["photos_stored"] == n_rows and ingested["encoder_id"] == card["encoder_id"]


def test_an_interrupted_job_resumes_on_a_new_instance_from_the_restored_checkpoints(
    seed_data: Path, tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hps = {**FAST_HPS, "epochs": "3"}
    whole_root = tmp_path / "whole"
    assert main([], _job(whole_root, seed_data, tiny_checkpoint, hps), whole_root) == 0
    whole = json.loads((whole_root / "model" / "encoder_card.json").read_text())

    cut = whole["steps"] // 3 + 1
    first = tmp_path / "first"
    env = _job(first, seed_data, tiny_checkpoint, hps)
    with pytest.raises(Interrupted):  # a spot reclaim, mid-way through epoch 2
        run_job(job_paths(env, first), stop_after_steps=cut)
    assert not (first / "model").exists()
    # A new instance: SageMaker restores /opt/ml/checkpoints from S3; the channels mount at the same paths.
    second = tmp_path / "second"
    shutil.copytree(first / "checkpoints", second / "checkpoints")
    with caplog.at_level(logging.INFO, logger="training.loop"):
        assert main([], _job(second, seed_data, tiny_checkpoint, hps), second) == 0
    assert f"at epoch 2, batch 1, step {cut}" in caplog.text
    resumed = json.loads((second / "model" / "encoder_card.json").read_text())
    assert json.loads((second / "output" / "data" / "summary.json").read_text())["resumed"] is True
    assert resumed["steps"] == whole["steps"]
    assert resumed["encoder_id"] == whole["encoder_id"]  # the same weights as the uninterrupted job


def test_sigterm_saves_a_resume_point_and_the_job_carries_on(
    seed_data: Path, tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "opt_ml"
    hps = {**FAST_HPS, "mode": "full", "tower_lr": "1e-3", "epochs": "50", "patience": "50"}
    env = {
        **os.environ,
        **_job(root, seed_data, tiny_checkpoint, hps),
        "OMP_NUM_THREADS": "1",
        "MATCHER_SAGEMAKER_ROOT": str(root),
    }
    last = root / "checkpoints" / "run" / "checkpoints" / "last.pt"
    log = tmp_path / "job.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "training.sagemaker", "train"],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert last.is_file(), log.read_text()[-2000:]
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            proc.kill()
    err = log.read_text()
    assert proc.returncode == 143, err[-2000:]
    assert "resume point" in err
    import torch

    step = torch.load(last, weights_only=False)["state"]["step"]
    assert step >= 1 and not (root / "model").exists()
    # The restarted job (told to stop after its current epoch) carries on from that step.
    done = torch.load(last, weights_only=False)["state"]["epoch"] + 1
    with caplog.at_level(logging.INFO, logger="training.loop"):
        assert main([], _job(root, seed_data, tiny_checkpoint, {**hps, "epochs": str(done)}), root) == 0
    assert f"step {step}" in caplog.text and "resuming" in caplog.text
    card = json.loads((root / "model" / "encoder_card.json").read_text())
    assert card["steps"] > step and card["epochs_run"] == done


def test_a_failed_job_writes_its_reason_where_sagemaker_reads_it(
    tmp_path: Path, seed_data: Path, tiny_checkpoint: Path
) -> None:
    root = tmp_path / "opt_ml"
    env = _job(root, seed_data, tiny_checkpoint, {**FAST_HPS, "val_identities": "40"})
    assert main([], env, root) == 1
    assert "cannot validate on 40 real users" in (root / "output" / "failure").read_text()


def test_the_launcher_describes_a_job_that_runs_this_entry_point(tmp_path: Path) -> None:
    """The launcher's --dry-run (no SDK, no AWS): the job it would start uses the contract tested above."""
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "deploy" / "sagemaker" / "launch.py"),
            "--data",
            "s3://b/data",
            "--dry-run",
            "--spot",
            "--hp",
            "mode=last_blocks",
            "--hp",
            "epochs=10",
            "--run-name",
            "r1",
            "--bucket",
            "b",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    spec = json.loads(out.stdout)
    assert spec["command"] == "python -m training.sagemaker" and spec["instance_type"] == "ml.g5.xlarge"
    assert spec["channels"] == {"train": "s3://b/data"}
    assert spec["checkpoint_s3_uri"] == "s3://b/profile-matcher/r1/checkpoints"
    assert spec["max_wait_s"] >= spec["max_run_s"]
    assert (ROOT / spec["requirements"]).is_file()
    # Its hyperparameters (strings, as SageMaker passes them) are valid settings for the entry point.
    settings, base = parse_hyperparameters(spec["hyperparameters"])
    assert (settings.mode, settings.epochs, base) == ("last_blocks", 10, "Qwen/Qwen3-VL-2B-Instruct")


def test_worker_processes_change_only_the_speed(demo_dir: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The job defaults to several DataLoader workers: the batches, and so the weights, must not depend on it."""
    from training.loop import train
    from training.settings import TrainSettings

    ids = []
    for workers in (0, 2):
        settings = TrainSettings(
            mode="full",
            tower_lr=1e-3,
            pixel_budget=4096,
            dim=16,
            p=6,
            k=2,
            epochs=1,
            val_identities=6,
            eval_batch_size=64,
            workers=workers,
        )
        result = train(
            [demo_dir], tmp_path / f"w{workers}", base=str(tiny_checkpoint), settings=settings, progress=False
        )
        assert result.steps >= 2
        ids.append(result.encoder_id)
    assert ids[0] == ids[1]
