"""Entry point of a SageMaker training job: ``python -m training.sagemaker``.

It follows the training-container contract, so the same code runs in a SageMaker job, in a local container,
or on any machine where the folders below are laid out (the tests lay them out in a temp dir):

- data channels: ``SM_CHANNEL_<NAME>`` or ``/opt/ml/input/data/<name>``. ``train`` (required): a seed-layout
  root (``raw/profiles/`` + ``augmented/generated/mapping.csv``), a generated-images folder with its
  ``mapping.csv``, ``metadata.csv``, or any layout :func:`training.data.read_dataset` reads. ``validation``
  (optional): real users' photos; with a generated-images ``train`` channel, the two are split as
  :func:`training.seed_layout.seed_split` does. ``base`` (optional): a base checkpoint uploaded to S3 in
  Hugging Face format, used instead of downloading ``base`` from the hub;
- hyperparameters: ``/opt/ml/input/config/hyperparameters.json`` (else ``SM_HPS``), values as strings as
  SageMaker passes them: ``"10"``, ``"0.001"``, ``"true"``, ``"head"``, ``"supcon,triplet"`` or
  ``'["supcon"]'``; ``augment.<field>`` sets a field of the augmentation settings. Every
  :class:`training.loop.TrainSettings` field is a hyperparameter; ``base`` names the starting encoder
  (default ``Qwen/Qwen3-VL-2B-Instruct``). ``sagemaker_*`` keys (the SDK's own) are ignored; any other
  unknown key is an error naming it;
- the run lives in ``/opt/ml/checkpoints/run`` (SageMaker syncs ``/opt/ml/checkpoints`` with the job's
  checkpoint S3 URI), resume points every ``checkpoint_every`` steps (default here 50) and at each epoch
  end. A managed-spot job that is interrupted is restarted with that folder restored and carries on from
  its last resume point; SIGTERM (what a stop or a spot reclaim sends) saves one first. ``workers``
  defaults to the CPUs but one (at most 8), so preprocessing keeps up with the GPU;
- the export (what ``matcher ingest --encoder DIR`` reads, plus ``metrics.jsonl``, ``run.json`` and the
  split) goes to ``SM_MODEL_DIR`` (``/opt/ml/model``), which SageMaker uploads as ``model.tar.gz``;
- on failure the reason goes to ``/opt/ml/output/failure`` (shown as the job's failure reason) and the
  process exits non-zero.

Outside SageMaker, ``MATCHER_SAGEMAKER_ROOT`` stands in for ``/opt/ml`` and ``MATCHER_CHECKPOINT_DIR`` for
``/opt/ml/checkpoints`` (a job configured with another checkpoint local path).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from engine.errors import InvalidInput

if TYPE_CHECKING:
    from training.settings import TrainResult, TrainSettings

log = logging.getLogger(__name__)

SM_ROOT = Path("/opt/ml")
DEFAULT_BASE = "Qwen/Qwen3-VL-2B-Instruct"
# Spot capacity can go at any time: a resume point every 50 steps bounds the redone work to a few minutes.
DEFAULT_CHECKPOINT_EVERY = 50
ENTRY_KEYS = frozenset({"base"})


def default_workers() -> int:
    """DataLoader workers when not given: all CPUs but one, at most 8 (ml.g5.xlarge: 3).

    One process decoding, augmenting and preprocessing every image leaves the GPU waiting; the batches are
    the same under any worker count, so this changes only the speed.
    """
    return max(0, min(8, (os.cpu_count() or 1) - 1))


# Settings that hold lists: a plain "a,b" string is split at commas.
LIST_FIELDS = frozenset({"losses", "loss_weights"})
# What of the run folder is not part of the model artefact: resume state, head mode's feature cache, the
# tiny base a test may build there.
NOT_EXPORTED = frozenset({"checkpoints", "cache", "base"})


@dataclass(frozen=True)
class JobPaths:
    """Where a training job reads and writes, resolved from the environment (see the module docstring)."""

    train: Path
    validation: Path | None
    base: Path | None
    model_dir: Path
    checkpoint_dir: Path
    output_dir: Path
    failure_file: Path
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """The run's own folder (export, metrics, resume points), inside the synced checkpoint folder."""
        return self.checkpoint_dir / "run"


def _channel(name: str, environ: Mapping[str, str], root: Path) -> Path | None:
    value = environ.get(f"SM_CHANNEL_{name.upper()}")
    path = Path(value) if value else root / "input" / "data" / name
    return path if path.is_dir() else None


def _read_hyperparameters(environ: Mapping[str, str], root: Path) -> dict[str, Any]:
    path = root / "input" / "config" / "hyperparameters.json"
    try:
        if path.is_file():
            raw: Any = json.loads(path.read_text(encoding="utf-8"))
        elif environ.get("SM_HPS"):
            raw = json.loads(environ["SM_HPS"])
        else:
            raw = {}
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"{path if path.is_file() else 'SM_HPS'}: cannot read hyperparameters: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInput(f"{path}: hyperparameters must be a JSON object, got {type(raw).__name__}")
    return raw


def job_paths(environ: Mapping[str, str] | None = None, root: Path = SM_ROOT) -> JobPaths:
    """Resolve the job's folders and hyperparameters from ``environ`` (default ``os.environ``) under ``root``.

    Raises:
        InvalidInput: no ``train`` channel, or unreadable hyperparameters.
    """
    env = os.environ if environ is None else environ
    root = Path(root)
    train = _channel("train", env, root)
    if train is None:
        where = env.get("SM_CHANNEL_TRAIN") or root / "input" / "data" / "train"
        raise InvalidInput(f"no training data: channel 'train' ({where}) is not a folder")
    return JobPaths(
        train=train,
        validation=_channel("validation", env, root),
        base=_channel("base", env, root),
        model_dir=Path(env.get("SM_MODEL_DIR") or root / "model"),
        checkpoint_dir=Path(env.get("MATCHER_CHECKPOINT_DIR") or root / "checkpoints"),
        output_dir=Path(env.get("SM_OUTPUT_DATA_DIR") or root / "output" / "data"),
        failure_file=root / "output" / "failure",
        hyperparameters=_read_hyperparameters(env, root),
    )


def _decode(key: str, value: Any) -> Any:
    """A hyperparameter as SageMaker passes it (a string) -> its JSON value, or the string itself."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if key in LIST_FIELDS and isinstance(value, str | int | float):
            value = [v.strip() for v in str(value).split(",") if v.strip()]
    return value


def parse_hyperparameters(hyperparameters: Mapping[str, Any]) -> tuple[TrainSettings, str | None]:
    """``TrainSettings`` and the ``base`` encoder (None if not given) from SageMaker hyperparameters.

    Raises:
        InvalidInput: an unknown key or a value the settings refuse, named.
    """
    from pydantic import ValidationError

    from training.settings import TrainSettings

    values: dict[str, Any] = {"checkpoint_every": DEFAULT_CHECKPOINT_EVERY, "workers": default_workers()}
    base: str | None = None
    for key, raw in hyperparameters.items():
        if key.startswith("sagemaker_"):
            continue
        value = _decode(key, raw)
        if key == "base":
            base = str(value)
        elif "." in key:
            group, _, name = key.partition(".")
            nested = values.setdefault(group, {})
            if not isinstance(nested, dict):
                raise InvalidInput(f"hyperparameter {key!r}: {group!r} is also given as a whole")
            nested[name] = value
        else:
            values[key] = value
    unknown = sorted(set(values) - set(TrainSettings.model_fields) - ENTRY_KEYS)
    if unknown:
        raise InvalidInput(
            f"unknown hyperparameters: {', '.join(unknown)} (known: base and the training settings "
            f"{', '.join(sorted(TrainSettings.model_fields))})"
        )
    try:
        settings = TrainSettings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"hyperparameters: {problems}") from exc
    return settings, base


def export_model(run_dir: Path, model_dir: Path) -> list[str]:
    """Copy the run's export and records (all but resume state and caches) into ``model_dir``.

    Returns the names copied. Raises ``InvalidInput`` when the run folder holds no export.
    """
    run_dir, model_dir = Path(run_dir), Path(model_dir)
    if not (run_dir / "encoder_card.json").is_file():
        raise InvalidInput(f"{run_dir}: no exported encoder (encoder_card.json) to copy into {model_dir}")
    model_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for item in sorted(run_dir.iterdir()):
        if item.name in NOT_EXPORTED or item.name.endswith(".tmp"):
            continue
        target = model_dir / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
        copied.append(item.name)
    return copied


def run_job(paths: JobPaths, *, progress: bool = False, stop_after_steps: int | None = None) -> TrainResult:
    """Train as the job's folders and hyperparameters say, resuming the run folder, and export the model.

    Args:
        stop_after_steps: passed to :func:`training.loop.train` (interrupts the run with a resume point
            saved; how tests stand in for a spot interruption).

    Raises:
        InvalidInput: bad hyperparameters or data.
        training.loop.Interrupted: ``stop_after_steps`` was reached.
    """
    from training.loop import train
    from training.seed_layout import resolve_sources

    settings, base = parse_hyperparameters(paths.hyperparameters)
    if paths.base is not None:
        base_source = str(paths.base)
        if settings.mode == "lora":
            log.warning(
                "a LoRA export names its base (%s); ingesting it needs that checkpoint at that path, "
                "so prefer a hub id as 'base' for mode lora",
                base_source,
            )
    else:
        base_source = base or DEFAULT_BASE
    run_dir = paths.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    data, val_data = resolve_sources(
        [paths.train],
        [paths.validation] if paths.validation else [],
        run_dir,
        val_users=settings.val_identities,
        val_fraction=settings.val_fraction,
        seed=settings.seed,
    )
    resuming = (run_dir / "checkpoints" / "last.pt").is_file()
    log.info(
        "%s run in %s from %s (base %s)",
        "resuming the" if resuming else "starting a",
        run_dir,
        paths.train,
        base_source,
    )
    result = train(
        data,
        run_dir,
        base=base_source,
        settings=settings,
        val_data=val_data,
        resume=True,
        progress=progress,
        stop_after_steps=stop_after_steps,
    )
    copied = export_model(run_dir, paths.model_dir)
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    summary = {"resumed": resuming, "exported": copied, **json.loads(result.model_dump_json())}
    (paths.output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log.info("model written to %s (%s)", paths.model_dir, ", ".join(copied))
    return result


def _argv_hyperparameters(argv: Sequence[str]) -> dict[str, str]:
    """``--key value`` pairs (how framework containers also pass hyperparameters); a bare ``train`` (what
    SageMaker passes to a bring-your-own image) is ignored."""
    args = [a for a in argv if a != "train"]
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise InvalidInput(f"unexpected argument {arg!r} (expected --name value pairs)")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise InvalidInput(f"argument {arg!r} has no value")
            value = args[i + 1]
            i += 1
        out[key.replace("-", "_")] = value
        i += 1
    return out


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # The loop saves a resume point at its last optimiser step on KeyboardInterrupt; SIGTERM (a stopped job,
    # a reclaimed spot instance) should do the same, within SageMaker's grace period.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None, root: Path | None = None) -> int:
    """Run the job; 0 on success, 1 on bad input or error (reason in ``output/failure``), 143 on SIGTERM.

    ``root`` defaults to ``MATCHER_SAGEMAKER_ROOT`` (a local trial of the layout) or ``/opt/ml``.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = os.environ if environ is None else environ
    root = Path(root or env.get("MATCHER_SAGEMAKER_ROOT") or SM_ROOT)
    failure = root / "output" / "failure"
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        paths = job_paths(env, root)
        extra = _argv_hyperparameters(sys.argv[1:] if argv is None else argv)
        if extra:
            paths = JobPaths(**{**paths.__dict__, "hyperparameters": {**paths.hyperparameters, **extra}})
        run_job(paths)
        return 0
    except KeyboardInterrupt:
        log.warning("stopped: the resume point in the checkpoint folder is where a restarted job carries on")
        return 143
    except Exception as exc:  # noqa: BLE001 - every failure must reach SageMaker's failure reason
        log.exception("training job failed")
        failure.parent.mkdir(parents=True, exist_ok=True)
        kind = "" if isinstance(exc, InvalidInput) else f"{type(exc).__name__}: "
        failure.write_text(f"{kind}{exc}"[:1000] + "\n", encoding="utf-8")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover - the container's entry
    sys.exit(main())
