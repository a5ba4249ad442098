"""What identity signal demo photos carry, and which preprocessing exposes it: k-NN on plain pixel features.

Builds demo data for a training seed and the held-out seed + 1 (as the demo's report does), turns every photo
into a small pixel vector under several preprocessings (whole image or a centre crop around where the demo
draws the face; raw, per-image grey-world or per-channel standardisation), and scores held-out retrieval
(recall@1, MAP@R, leave-one-out, cosine) with the same metrics as the demo. ``+lda``: a linear projection
learned on the *training* seed's people only (within/between-person scatter), applied to held-out people:
what a linear model on those pixels can learn from ~100 people and carry to new ones.

    .venv/bin/python bench/identity_signal.py --users 120 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def crop_box(w: int, h: int, frac: float) -> tuple[int, int, int, int]:
    """A square of side ``frac * min(w, h)`` centred at (w/2, 0.45 h), where the demo draws faces."""
    side = frac * min(w, h)
    cx, cy = w / 2, 0.45 * h
    x0, y0 = max(0.0, cx - side / 2), max(0.0, cy - side / 2)
    return (int(x0), int(y0), int(min(w, x0 + side)), int(min(h, y0 + side)))


def features(paths: list[Path], frac: float | None, side: int, norm: str) -> np.ndarray:
    from PIL import Image

    from training.data import load_image

    rows = []
    for p in paths:
        img = load_image(p)
        if frac is not None:
            img = img.crop(crop_box(*img.size, frac))
        else:
            img = img.resize((side, side), Image.Resampling.BOX)
        x = np.asarray(img.resize((side, side), Image.Resampling.BOX), dtype=np.float64) / 255.0
        if norm == "greyworld":
            x = x / (x.reshape(-1, 3).mean(axis=0) + 1e-6)
        elif norm == "standardise":
            flat = x.reshape(-1, 3)
            x = (x - flat.mean(axis=0)) / (flat.std(axis=0) + 1e-6)
        rows.append(x.ravel())
    return np.stack(rows)


def unit(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def lda(x: np.ndarray, labels: list[str], out_dim: int, shrink: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Projection maximising between-person over within-person scatter (shrunk), fitted on ``x``."""
    mu = x.mean(axis=0)
    xc = x - mu
    lab = np.array(labels)
    within = np.zeros((x.shape[1], x.shape[1]))
    means = []
    for ident in np.unique(lab):
        rows = xc[lab == ident]
        m = rows.mean(axis=0)
        means.append(m)
        within += (rows - m).T @ (rows - m)
    within /= len(x)
    between = np.cov(np.stack(means).T, bias=True)
    within = (1 - shrink) * within + shrink * np.trace(within) / len(within) * np.eye(len(within))
    import scipy.linalg

    vals, vecs = scipy.linalg.eigh(between, within)
    return mu, vecs[:, np.argsort(vals)[::-1][:out_dim]]


def main() -> int:
    from evaluation.demo_data import make_demo_data
    from training.data import read_dataset
    from training.metrics import retrieval_metrics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--users", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="/tmp/train-recipe")
    ap.add_argument("--side", type=int, default=12)
    args = ap.parse_args()
    dirs = {}
    for name, s in (("train", args.seed), ("held", args.seed + 1)):
        d = Path(args.cache) / f"demo-{args.users}-{s}"
        if not (d / "metadata.csv").is_file():
            make_demo_data(d, users=args.users, seed=s, overwrite=True)
        dirs[name] = read_dataset(d)
    print(f"{'preprocessing':40s} {'r@1':>6s} {'MAP@R':>6s} {'r@1 lda':>8s} {'MAP lda':>8s}")
    for frac in (None, 0.9, 0.6, 0.4):
        for norm in ("raw", "greyworld", "standardise"):
            xs = {k: features([p.path for p in v], frac, args.side, norm) for k, v in dirs.items()}
            held_labels = [p.identity for p in dirs["held"]]
            m = retrieval_metrics(unit(xs["held"]), held_labels)
            mu, proj = lda(xs["train"], [p.identity for p in dirs["train"]], 32)
            ml = retrieval_metrics(unit((xs["held"] - mu) @ proj), held_labels)
            name = f"{'whole' if frac is None else f'centre {frac}'} {args.side}px {norm}"
            print(
                f"{name:40s} {m['recall@1']:6.3f} {m['map@r']:6.3f} {ml['recall@1']:8.3f} {ml['map@r']:8.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
