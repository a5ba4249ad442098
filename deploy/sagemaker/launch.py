"""Launch the encoder's training as a SageMaker job (an example to adapt; see docs/sagemaker.md).

Needs the optional extra (``pip install -e '.[sagemaker]'``, the ``sagemaker`` SDK 3.x) and AWS credentials
with a SageMaker execution role. ``--dry-run`` prints the job it would start, and needs neither.

    python deploy/sagemaker/launch.py --data data/ --role arn:aws:iam::123456789012:role/SageMakerRole \\
        --bucket my-bucket --spot --hp mode=last_blocks --hp epochs=10

The repository (without data, venv or tests) is the job's code; the job runs ``python -m training.sagemaker``
on the PyTorch training image, after installing ``deploy/sagemaker/requirements.txt``. ``--data`` is the
seed-layout root (``raw/profiles/`` + ``augmented/generated/mapping.csv``), a local folder the SDK uploads,
or an ``s3://`` URI. The checkpoint URI is fixed per ``--run-name``: launching the same run again (after a
spot job ran out of wait time, say) carries on from its last resume point. ``--gpu-check`` runs
``bench/gpu_check.sh`` on the instance instead (its JSON summary comes back in the job's output.tar.gz).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INSTANCE = "ml.g5.xlarge"  # 1 x A10G (24 GB), 4 vCPU, 16 GB RAM
PYTORCH_VERSION, PY_VERSION = "2.8.0", "py312"
IGNORE = [
    ".git",
    ".venv",
    ".matcher",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "data",
    "tests",
    "docs",
    ".env",
    ".DS_Store",
]
TRAIN_COMMAND = "python -m training.sagemaker"
# What the console plots per epoch, read off the job's log lines ("epoch 3/20: loss 5.1234, recall@1 ...").
METRIC_DEFINITIONS = {
    "train:loss": r"epoch \d+/\d+: loss ([0-9.]+)",
    "validation:recall_at_1": r"epoch \d+/\d+: .*?recall@1 ([0-9.]+)",
    "validation:map_at_r": r"epoch \d+/\d+: .*?map@r ([0-9.]+)",
}
# The GPU check as a job of its own: its JSON lands in output.tar.gz (SM_OUTPUT_DATA_DIR).
GPU_CHECK_COMMAND = "PYTHON=python bench/gpu_check.sh --out /opt/ml/output/data/gpu_check.json"


def job_spec(args: argparse.Namespace) -> dict[str, Any]:
    """What the job is made of, as plain data (printed by --dry-run; the SDK objects are built from it)."""
    hyperparameters = {"base": args.base}
    for item in args.hp:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SystemExit(f"--hp {item!r}: expected NAME=VALUE")
        hyperparameters[key.strip()] = value.strip()  # SageMaker passes every value as a string
    prefix = f"s3://{args.bucket}/{args.prefix}/{args.run_name}"
    return {
        "base_job_name": args.run_name,
        "instance_type": args.instance_type,
        "spot": args.spot,
        "max_run_s": args.max_run_hours * 3600,
        "max_wait_s": (args.max_run_hours + args.max_wait_extra_hours) * 3600 if args.spot else None,
        "image": {"framework": "pytorch", "version": PYTORCH_VERSION, "py_version": PY_VERSION},
        "source_dir": str(REPO),
        "requirements": "deploy/sagemaker/requirements.txt",
        "command": GPU_CHECK_COMMAND if args.gpu_check else TRAIN_COMMAND,
        "channels": {}
        if args.gpu_check
        else {"train": args.data, **({"validation": args.validation} if args.validation else {})},
        "checkpoint_s3_uri": f"{prefix}/checkpoints",
        "output_s3_uri": f"{prefix}/output",
        "hyperparameters": hyperparameters,
    }


def launch(spec: dict[str, Any], role: str, wait: bool) -> str:
    """Start the job with the SageMaker SDK 3.x; returns its name."""
    try:
        from sagemaker.core import image_uris
        from sagemaker.core.helper.session_helper import Session
        from sagemaker.core.training.configs import (
            CheckpointConfig,
            Compute,
            InputData,
            MetricDefinition,
            OutputDataConfig,
            SourceCode,
            StoppingCondition,
        )
        from sagemaker.train import ModelTrainer
    except ImportError as exc:
        raise SystemExit(f"the sagemaker SDK is missing ({exc}): pip install -e '.[sagemaker]'") from exc
    session = Session()
    image = image_uris.retrieve(
        region=session.boto_region_name, instance_type=spec["instance_type"], image_scope="training", **spec["image"]
    )
    stopping = StoppingCondition(max_runtime_in_seconds=spec["max_run_s"])
    if spec["spot"]:
        stopping = StoppingCondition(
            max_runtime_in_seconds=spec["max_run_s"], max_wait_time_in_seconds=spec["max_wait_s"]
        )
    trainer = ModelTrainer(
        sagemaker_session=session,
        role=role,
        base_job_name=spec["base_job_name"],
        training_image=image,
        source_code=SourceCode(
            source_dir=spec["source_dir"],
            requirements=spec["requirements"],
            command=spec["command"],
            ignore_patterns=IGNORE,
        ),
        compute=Compute(
            instance_type=spec["instance_type"],
            instance_count=1,
            volume_size_in_gb=50,
            enable_managed_spot_training=spec["spot"] or None,
        ),
        stopping_condition=stopping,
        checkpoint_config=CheckpointConfig(s3_uri=spec["checkpoint_s3_uri"], local_path="/opt/ml/checkpoints"),
        output_data_config=OutputDataConfig(s3_output_path=spec["output_s3_uri"]),
        hyperparameters=spec["hyperparameters"],
    )
    if spec["command"] == TRAIN_COMMAND:
        trainer = trainer.with_metric_definitions(
            [MetricDefinition(name=name, regex=regex) for name, regex in METRIC_DEFINITIONS.items()]
        )
    trainer.train(
        input_data_config=[
            InputData(channel_name=name, data_source=source) for name, source in spec["channels"].items()
        ],
        wait=wait,
    )
    job = trainer._latest_training_job  # the SDK's own handle on the job it started
    return str(getattr(job, "training_job_name", spec["base_job_name"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="train channel: seed-layout root (local or s3://)")
    parser.add_argument("--validation", help="validation channel (real users' photos), if kept apart")
    parser.add_argument("--role", help="SageMaker execution role ARN (not needed with --dry-run)")
    parser.add_argument("--bucket", default="my-bucket", help="S3 bucket for checkpoints and the model")
    parser.add_argument("--prefix", default="profile-matcher", help="key prefix in the bucket")
    parser.add_argument("--run-name", default="matcher-encoder", help="job name prefix; fixes the checkpoint URI")
    parser.add_argument("--base", default="Qwen/Qwen3-VL-2B-Instruct", help="starting encoder (hub id)")
    parser.add_argument("--instance-type", default=INSTANCE)
    parser.add_argument("--spot", action="store_true", help="managed spot training (resumes from checkpoints)")
    parser.add_argument("--max-run-hours", type=int, default=4)
    parser.add_argument("--max-wait-extra-hours", type=int, default=8, help="spot: waiting time on top of the run")
    parser.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a training setting (repeatable), e.g. mode=last_blocks, epochs=10",
    )
    parser.add_argument("--no-wait", action="store_true", help="return once the job has started")
    parser.add_argument("--dry-run", action="store_true", help="print the job as JSON and start nothing")
    parser.add_argument(
        "--gpu-check",
        action="store_true",
        help="run bench/gpu_check.sh on the instance instead of training (about 8 minutes)",
    )
    args = parser.parse_args(argv)
    if not args.data and not args.gpu_check:
        parser.error("--data is required (or --gpu-check)")
    spec = job_spec(args)
    if args.dry_run:
        print(json.dumps(spec, indent=2))
        return 0
    if not args.role:
        parser.error("--role is required to start a job")
    print(f"started {launch(spec, args.role, wait=not args.no_wait)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
