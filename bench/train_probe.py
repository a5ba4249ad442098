"""A fast in-process probe of a training recipe for the tiny Qwen3-VL tower (decoded photos cached once).

Same parts as ``train()`` (the real ``Qwen3VLVisionModel`` of a tiny HF checkpoint, BatchNorm + linear head,
P x K batches of training identities only) but photos are decoded, face-cropped and shrunk once, augmented
as float tensors and patchified in torch, so a probe spends its CPU on the tower. Scores on the held-out
population (demo seed + 1). Prints one JSON line.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/train_probe.py --seed 0 --steps 300 --patch 8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_crops(paths: list[Path], crop: float, ctx: float, res: int) -> torch.Tensor:
    """Square crops (side crop*ctx*short side at (w/2, 0.45 h), edge-padded) resized to res:
    (n, 3, res, res) float 0..1."""
    from PIL import Image

    from training.data import load_image

    out = []
    for p in paths:
        img = load_image(p)
        w, h = img.size
        side = min(w, h) * crop * ctx
        f = max(1.0, side / (2 * res))  # pre-shrink so the crop is ~2x res (antialiasing), then sample
        if f > 1:
            img = img.resize((max(1, round(w / f)), max(1, round(h / f))), Image.Resampling.BOX)
        t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()[None] / 255.0
        theta = torch.tensor([[[side / w, 0.0, 0.0], [0.0, side / h, -0.1]]], dtype=torch.float32)
        grid = F.affine_grid(theta, [1, 3, res, res], align_corners=False)
        out.append(F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)[0])
    return torch.stack(out)


def augment(
    x: torch.Tensor, g: torch.Generator, size: int, ctx: float, a: dict[str, float], xs: torch.Tensor | None = None
) -> torch.Tensor:
    """x (n, 3, R, R) 0..1 -> (n, 3, size, size): random scale/shift/rotation/flip, gain, contrast, ramp."""
    n = x.shape[0]

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*(shape or (n,)), generator=g)

    s = (1.0 / ctx) * torch.exp(u(-a["scale"], a["scale"]))
    th = torch.deg2rad(u(-a["rot"], a["rot"]))
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    tx, ty = u(-a["shift"], a["shift"]), u(-a["shift"], a["shift"])
    cos, sin = torch.cos(th) * s, torch.sin(th) * s
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], -1), torch.stack([sin * flip, cos, ty], -1)], 1)
    if xs is not None:  # widen (xs > 1) or narrow the face along the view's x axis
        theta = theta.clone()
        theta[:, :, 0] = theta[:, :, 0] / xs.view(n, 1)
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if a["color"] > 0:
        c = a["color"]
        contrast = u(1 - 0.25 * c, 1 + 0.2 * c).view(n, 1, 1, 1)
        gain = (u(1 - 0.25 * c, 1 + 0.25 * c).view(n, 1) * u(1 - 0.12 * c, 1 + 0.12 * c, n, 3)).view(n, 3, 1, 1)
        y = ((y - 0.5) * contrast + 0.5) * gain
        ang = u(0, 2 * math.pi)
        depth = u(0, 0.3 * c).view(n, 1, 1, 1)
        lin = torch.linspace(-0.5, 0.5, size)
        ramp = torch.cos(ang).view(n, 1, 1) * lin.view(1, 1, -1) + torch.sin(ang).view(n, 1, 1) * lin.view(1, -1, 1)
        y = (y + depth * ramp.unsqueeze(1) * 0.5).clamp(0, 1)
    return y


def center(x: torch.Tensor, size: int, ctx: float) -> torch.Tensor:
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / ctx
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_transforms(kind: str) -> list[torch.Tensor]:
    """Fixed 3x3 colour matrices, each making new identities of the training people: "perm" (the 6 channel
    permutations), "hueN" (N rotations about the grey axis), "none" (the identity only)."""
    eye = torch.eye(3)
    if kind in ("none", "stretch"):
        return [eye]
    if kind == "perm":
        import itertools

        return [eye[list(q)] for q in itertools.permutations(range(3))]
    if kind.startswith("hue"):
        n = int(kind[3:])
        out = []
        k = torch.ones(3) / math.sqrt(3.0)
        kx = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
        for i in range(n):
            a = 2 * math.pi * i / n
            out.append(eye + math.sin(a) * kx + (1 - math.cos(a)) * kx @ kx)
        return out
    if kind in ("mild", "mildstretch", "sat", "hue30"):
        k = torch.ones(3) / math.sqrt(3.0)
        kx = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
        luma = torch.tensor([0.299, 0.587, 0.114])
        hues = [0.0] if kind == "sat" else [0.0, 30.0, -30.0]
        sats = [1.0] if kind == "hue30" else [1.0, 0.6, 1.5]
        out = []
        for hdeg in hues:
            a = math.radians(hdeg)
            rot = eye + math.sin(a) * kx + (1 - math.cos(a)) * kx @ kx
            for sv in sats:
                sat = sv * eye + (1 - sv) * torch.ones(3, 1) * luma.view(1, 3)
                out.append(sat @ rot)
        return out
    raise ValueError(kind)


STRETCHES = {"mildstretch": [1.0, 0.85, 1.18], "stretch": [1.0, 0.85, 1.18]}


def apply_colour(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """x (n, 3, H, W) in 0..1, m (n, 3, 3) -> m @ pixel, clipped to 0..1."""
    return torch.einsum("nij,njhw->nihw", m, x).clamp(0, 1)


def normalise(y: torch.Tensor, std: int) -> torch.Tensor:
    """std 0: Qwen's; 1: per image and channel; 2: per channel, statistics of the centre half; 3: per image
    over all channels (keeps colour ratios); 4: divide each channel by its centre-half mean (grey world)."""
    if std == 2:
        n, _, hh, ww = y.shape
        c = y[:, :, hh // 4 : hh - hh // 4, ww // 4 : ww - ww // 4]
        m = c.mean((2, 3), keepdim=True)
        sd = c.std((2, 3), keepdim=True).clamp_min(0.02)
        return (y - m) / (2 * sd)
    if std == 3:
        m = y.mean((1, 2, 3), keepdim=True)
        sd = y.std((1, 2, 3), keepdim=True).clamp_min(0.02)
        return (y - m) / (2 * sd)
    if std == 4:
        n, _, hh, ww = y.shape
        c = y[:, :, hh // 4 : hh - hh // 4, ww // 4 : ww - ww // 4]
        return (y / c.mean((2, 3), keepdim=True).clamp_min(0.02) - 1.0) * 1.5
    if std:
        m = y.mean((2, 3), keepdim=True)
        sd = y.std((2, 3), keepdim=True).clamp_min(0.02)
        return (y - m) / (2 * sd)  # about the spread of (x - 0.5) / 0.5
    return (y - 0.5) / 0.5


def patchify(y: torch.Tensor, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2-VL processor layout: (n*gh*gw, C*T*P*P) and grid (n, 3)."""
    n, c, hh, ww = y.shape
    gh, gw = hh // patch, ww // patch
    p = y.reshape(n, c, gh // merge, merge, patch, gw // merge, merge, patch)
    p = p.permute(0, 2, 5, 3, 6, 1, 4, 7)  # n, gh/m, gw/m, m, m, C, P, P
    p = p.unsqueeze(6).expand(*p.shape[:6], temporal, patch, patch)
    flat = p.reshape(n * gh * gw, c * temporal * patch * patch)
    grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.int64)
    return flat.contiguous(), grid


class Pool(nn.Module):
    def __init__(self, kind: str, dim: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "attn":
            self.score = nn.Linear(dim, 1)
            nn.init.zeros_(self.score.weight)
            nn.init.zeros_(self.score.bias)
        if kind == "gem":
            self.p = nn.Parameter(torch.tensor(3.0))

    def forward(self, tokens: torch.Tensor, n: int) -> torch.Tensor:
        t = tokens.view(n, -1, tokens.shape[-1])
        if self.kind == "mean":
            return t.mean(1)
        if self.kind == "attn":
            w = torch.softmax(self.score(t), dim=1)
            return (w * t).sum(1)
        if self.kind == "meanmax":
            return torch.cat([t.mean(1), t.amax(1)], -1)
        if self.kind == "gem":  # on a shifted, positive version of the features
            z = F.softplus(t)
            return z.clamp_min(1e-6).pow(self.p).mean(1).pow(1.0 / self.p)
        raise ValueError(self.kind)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--users", type=int, default=120)
    ap.add_argument("--held-users", type=int, default=120, help="people in the held-out population (seed + 1)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cpu-budget", type=float, default=0, help="stop training after this many CPU s")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--merge", type=int, default=2)
    ap.add_argument("--temporal", type=int, default=2)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--out-hidden", type=int, default=64)
    ap.add_argument("--crop", type=float, default=0.8)
    ap.add_argument("--ctx", type=float, default=1.25)
    ap.add_argument("--std", type=int, default=1)
    ap.add_argument("--color", type=float, default=1.0)
    ap.add_argument("--scale", type=float, default=0.15)
    ap.add_argument("--shift", type=float, default=0.1)
    ap.add_argument("--rot", type=float, default=10.0)
    ap.add_argument("--pool", default="mean")
    ap.add_argument("--loss", default="supcon")
    ap.add_argument("--temp", type=float, default=0.1)
    ap.add_argument("--p", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--min-photos", type=int, default=1)
    ap.add_argument("--val-fraction", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--proxy-lr", type=float, default=1e-2)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--warmup", type=float, default=0.1)
    ap.add_argument("--cache", default="/tmp/train-recipe")
    ap.add_argument("--label", default="")
    ap.add_argument("--synth", default="none", help="colour transforms making new identities: none, perm, hueN")
    ap.add_argument("--compose", type=int, default=0, help="composite people per person")
    ap.add_argument("--vignette", type=float, default=0.0, help="ellipse half-width (share of the view); 0 = off")
    ap.add_argument("--synth-p0", type=float, default=0.0, help="share of batch people shown untransformed")
    ap.add_argument("--synth-same", type=int, default=0, help="people per batch drawn as a transform pair")
    ap.add_argument("--label-smooth", type=float, default=0.0)
    ap.add_argument("--drop", type=float, default=0.0, help="dropout before the head")
    ap.add_argument("--mixup", type=float, default=0.0, help="Beta(a, a) mixup of views across people; 0 = off")
    ap.add_argument("--mixup-frac", type=float, default=0.5, help="share of the batch that is mixed")
    ap.add_argument("--bgswap", type=float, default=0.0, help="share of views with another person's surround")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(args.seed)

    from evaluation.demo_data import make_demo_data
    from training.data import read_dataset, split_by_identity
    from training.encoder import load_encoder
    from training.metrics import retrieval_metrics
    from training.tiny import build_tiny_checkpoint

    c_start = cpu_s()
    cache = Path(args.cache)
    tdir, hdir = cache / f"demo-{args.users}-{args.seed}", cache / f"demo-{args.held_users}-{args.seed + 1}"
    for d, s, n in ((tdir, args.seed, args.users), (hdir, args.seed + 1, args.held_users)):
        if not (d / "metadata.csv").is_file():
            make_demo_data(d, users=n, seed=s, overwrite=True)
    vision = {
        "patch_size": args.patch,
        "spatial_merge_size": args.merge,
        "temporal_patch_size": args.temporal,
        "depth": args.depth,
        "hidden_size": args.width,
        "intermediate_size": 2 * args.width,
        "num_heads": args.heads,
        "out_hidden_size": args.out_hidden,
    }
    tag = json.dumps(vision, sort_keys=True)
    ckpt = build_tiny_checkpoint(
        cache / f"probe-tiny-{args.seed}-{abs(hash(tag)) % 10**8}", seed=args.seed, vision=vision
    )
    enc = load_encoder(ckpt, pixel_budget=args.size * args.size, dim=args.dim)
    tower = enc.tower
    photos = read_dataset(tdir)
    train, _val = split_by_identity(photos, val_fraction=args.val_fraction, seed=args.seed)
    ids = sorted({p.identity for p in train})
    counts = {i: sum(1 for p in train if p.identity == i) for i in ids}
    keep = [i for i in ids if counts[i] >= args.min_photos]
    train = [p for p in train if p.identity in set(keep)]
    lab_of = {i: j for j, i in enumerate(keep)}
    labels = np.array([lab_of[p.identity] for p in train])
    res = int(round(args.size * args.ctx * 1.5))
    xtr = load_crops([p.path for p in train], args.crop, args.ctx, res)
    held = read_dataset(hdir)
    xh = center(load_crops([p.path for p in held], args.crop, args.ctx, res), args.size, args.ctx)
    c_data = cpu_s() - c_start

    pool = Pool(args.pool, args.out_hidden)
    in_dim = args.out_hidden * (2 if args.pool == "meanmax" else 1)
    head = nn.Sequential(nn.BatchNorm1d(in_dim), nn.Dropout(args.drop), nn.Linear(in_dim, args.dim))
    mats = colour_transforms(args.synth)
    stretches = STRETCHES.get(args.synth, [1.0])
    mats = [m for m in mats for _ in stretches]
    xs_of = torch.tensor([st for _ in range(len(mats) // len(stretches)) for st in stretches])
    n_cls = len(keep) * len(mats)
    n_real = n_cls
    if args.compose:  # new people: the top (hair, hat, brows) of person j over the bottom of person partner
        prng = np.random.default_rng([args.seed, 77])
        partner = np.stack([prng.permutation(len(keep)) for _ in range(args.compose)], 1)  # (people, N)
        for m in range(args.compose):
            clash = partner[:, m] == np.arange(len(keep))
            partner[clash, m] = (partner[clash, m] + 1) % len(keep)
        n_cls = n_real + len(keep) * args.compose
    proxies = nn.Parameter(torch.randn(n_cls, args.dim) * 0.1)
    params = [
        {"params": list(tower.parameters()) + list(pool.parameters()) + list(head.parameters()), "lr": args.lr},
        {"params": [proxies], "lr": args.proxy_lr, "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, weight_decay=args.wd)
    warm = max(1, int(args.warmup * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))
    )
    losses: list[float] = []

    def step(loss: torch.Tensor) -> None:
        """One optimiser step on ``loss`` (clipped at norm 1), its value kept in ``losses``."""
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_([q for grp in params for q in grp["params"]], 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))

    g = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    by_label = [np.flatnonzero(labels == j) for j in range(len(keep))]
    aug = {"scale": args.scale, "shift": args.shift, "rot": args.rot, "color": args.color}

    vig = None
    if args.vignette > 0:  # outside an ellipse around the face square's centre: mid-grey (train and eval)
        lin = torch.linspace(-0.5, 0.5, args.size)
        dist = torch.sqrt((lin.view(1, -1) / args.vignette) ** 2 + (lin.view(-1, 1) / (1.2 * args.vignette)) ** 2)
        vig = torch.clamp((1.1 - dist) / 0.2, 0, 1).view(1, 1, args.size, args.size)

    def embed(x: torch.Tensor, n: int) -> torch.Tensor:
        if vig is not None:
            x = vig * x + (1 - vig) * 0.5
        pv, grid = patchify(normalise(x, args.std), args.patch, args.merge, args.temporal)
        tokens = tower(pv, grid_thw=grid).pooler_output
        return F.normalize(head(pool(tokens, n)), dim=-1)

    def features(x: torch.Tensor, n: int) -> torch.Tensor:
        if vig is not None:
            x = vig * x + (1 - vig) * 0.5
        pv, grid = patchify(normalise(x, args.std), args.patch, args.merge, args.temporal)
        return head[0](pool(tower(pv, grid_thw=grid).pooler_output, n))

    def evaluate() -> dict[str, float]:
        tower.eval()
        head.eval()
        pool.eval()  # noqa: E702
        with torch.no_grad():
            e = torch.cat([embed(xh[i : i + 64], len(xh[i : i + 64])) for i in range(0, len(xh), 64)]).numpy()
            f = torch.cat([features(xh[i : i + 64], len(xh[i : i + 64])) for i in range(0, len(xh), 64)])
        tower.train()
        head.train()
        pool.train()  # noqa: E702
        m = retrieval_metrics(e, [p.identity for p in held])
        mf = retrieval_metrics(F.normalize(f, dim=-1).numpy(), [p.identity for p in held])
        out = {k: round(float(m[k]), 4) for k in ("recall@1", "map@r", "mean_same_dist", "mean_diff_dist")}
        out["bn_feat_r1"], out["bn_feat_map"] = round(float(mf["recall@1"]), 4), round(float(mf["map@r"]), 4)
        tower.eval()
        head.eval()
        pool.eval()  # noqa: E702
        with torch.no_grad():  # test-time flip: the mean of a photo's and its mirror's embeddings
            ef = torch.cat([embed(xh[i : i + 64].flip(-1), len(xh[i : i + 64])) for i in range(0, len(xh), 64)]).numpy()
        tower.train()
        head.train()
        pool.train()  # noqa: E702
        tta = e + ef
        mt = retrieval_metrics(tta / np.linalg.norm(tta, axis=1, keepdims=True), [p.identity for p in held])
        out["tta_r1"], out["tta_map"] = round(float(mt["recall@1"]), 4), round(float(mt["map@r"]), 4)
        return out

    before = evaluate()
    c_train0 = cpu_s()
    for _ in range(args.steps):
        if args.cpu_budget and cpu_s() - c_train0 > args.cpu_budget:
            break
        classes = rng.choice(n_cls, size=min(args.p, n_cls), replace=False)
        if args.synth_p0 > 0 and len(mats) > 1:  # the real people (transform 0) this often, the rest spread
            pers = rng.choice(len(keep), size=min(args.p, len(keep)), replace=False)
            tf0 = np.where(rng.random(len(pers)) < args.synth_p0, 0, rng.integers(1, len(mats), len(pers)))
            classes = pers * len(mats) + tf0
        if args.synth_same:  # some people twice, under two transforms: same shapes, other colours
            h = args.synth_same
            pers = rng.choice(len(keep), size=h, replace=False)
            tt = np.stack([rng.choice(len(mats), size=2, replace=False) for _ in pers])
            pairs = np.stack([pers * len(mats) + tt[:, 0], pers * len(mats) + tt[:, 1]], 1).ravel()
            rest = np.setdiff1d(classes, pairs)[: args.p - len(pairs)]
            classes = np.concatenate([pairs, rest])
        if args.compose:
            real = rng.random(args.p) < args.synth_p0
            cl_real = rng.choice(n_real, size=args.p, replace=False)
            cl_syn = n_real + rng.choice(n_cls - n_real, size=args.p, replace=False)
            classes = np.where(real, cl_real, cl_syn)
            top = np.where(classes < n_real, classes, (classes - n_real) // args.compose)
            bottom = np.where(classes < n_real, classes, partner[top, np.maximum(classes - n_real, 0) % args.compose])
            it = np.concatenate([rng.choice(by_label[j], size=args.k, replace=len(by_label[j]) < args.k) for j in top])
            ib = np.concatenate(
                [rng.choice(by_label[j], size=args.k, replace=len(by_label[j]) < args.k) for j in bottom]
            )
            y = torch.as_tensor(np.repeat(classes, args.k))
            xt = augment(xtr[torch.as_tensor(it)], g, args.size, args.ctx, aug)
            xbm = augment(xtr[torch.as_tensor(ib)], g, args.size, args.ctx, aug)
            n_b = len(it)
            cut = torch.from_numpy(rng.uniform(0.36, 0.5, n_b).astype(np.float32)).view(n_b, 1, 1, 1) * args.size
            rowpos = torch.arange(args.size, dtype=torch.float32).view(1, 1, -1, 1)
            w = torch.clamp((rowpos - cut) / 3.0 + 0.5, 0, 1)  # 0 above the seam, 1 below
            syn = torch.from_numpy(np.repeat(classes >= n_real, args.k)).view(n_b, 1, 1, 1)
            x = torch.where(syn, (1 - w) * xt + w * xbm, xt)
            e = embed(x, n_b)
            logits = e @ F.normalize(proxies, dim=-1).T / args.temp
            loss = F.cross_entropy(logits, y)
            step(loss)
            continue
        people, tf = classes // len(mats), classes % len(mats)
        idx = np.concatenate([rng.choice(by_label[j], size=args.k, replace=len(by_label[j]) < args.k) for j in people])
        y = torch.as_tensor(np.repeat(classes, args.k))
        xb = xtr[torch.as_tensor(idx)]
        if len(mats) > 1 and args.synth != "stretch":
            xb = apply_colour(xb, torch.stack(mats)[torch.as_tensor(np.repeat(tf, args.k))])
        xs = xs_of[torch.as_tensor(np.repeat(tf, args.k))] if len(mats) > 1 else None
        x = augment(xb, g, args.size, args.ctx, aug, xs)
        n_b = len(idx)
        if args.bgswap > 0:  # a soft ellipse around the face keeps this view; outside it, another person's view
            other = torch.as_tensor((np.arange(n_b) + args.k * int(rng.integers(1, len(classes)))) % n_b)
            rx = torch.from_numpy(rng.uniform(0.28, 0.42, n_b).astype(np.float32)).view(n_b, 1, 1)
            lin = torch.linspace(-0.5, 0.5, args.size)
            dist = torch.sqrt((lin.view(1, 1, -1) / rx) ** 2 + (lin.view(1, -1, 1) / (1.2 * rx)) ** 2)
            mask = torch.clamp((1.15 - dist) / 0.3, 0, 1).unsqueeze(1)
            use = torch.from_numpy(rng.random(n_b) < args.bgswap).view(n_b, 1, 1, 1)
            x = torch.where(use, mask * x + (1 - mask) * x[other], x)
        mix = None
        if args.mixup > 0:
            m_n = int(round(args.mixup_frac * n_b))
            rows = torch.from_numpy(rng.choice(n_b, size=m_n, replace=False))
            mate = torch.from_numpy(rng.choice(n_b, size=m_n))
            lam = torch.from_numpy(rng.beta(args.mixup, args.mixup, m_n).astype(np.float32))
            x = x.clone()
            x[rows] = lam.view(-1, 1, 1, 1) * x[rows] + (1 - lam.view(-1, 1, 1, 1)) * x[mate]
            mix = (rows, mate, lam)
        e = embed(x, len(idx))
        if args.loss == "supcon":
            sim = e @ e.T / args.temp
            eye = torch.eye(len(idx), dtype=torch.bool)
            sim = sim.masked_fill(eye, -1e9)
            pos = (y[:, None] == y[None, :]) & ~eye
            logp = sim - torch.logsumexp(sim, 1, keepdim=True)
            loss = -(logp * pos).sum(1).div(pos.sum(1).clamp_min(1)).mean()
        elif args.loss == "proxy":
            logits = e @ F.normalize(proxies, dim=-1).T / args.temp
            if mix is None:
                loss = F.cross_entropy(logits, y, label_smoothing=args.label_smooth)
            else:
                rows, mate, lam = mix
                target = F.one_hot(y, n_cls).float()
                target[rows] = lam.view(-1, 1) * target[rows] + (1 - lam.view(-1, 1)) * target[mate]
                loss = -(target * F.log_softmax(logits, -1)).sum(1).mean()
        else:  # both
            logits = e @ F.normalize(proxies, dim=-1).T / args.temp
            sim = (e @ e.T / args.temp).masked_fill(torch.eye(len(idx), dtype=torch.bool), -1e9)
            eye = torch.eye(len(idx), dtype=torch.bool)
            pos = (y[:, None] == y[None, :]) & ~eye
            logp = sim - torch.logsumexp(sim, 1, keepdim=True)
            loss = F.cross_entropy(logits, y) - (logp * pos).sum(1).div(pos.sum(1).clamp_min(1)).mean()
        step(loss)
    c_train = cpu_s() - c_train0
    after = evaluate()
    row: dict[str, Any] = {
        "label": args.label,
        "seed": args.seed,
        "steps": len(losses),
        "train_cpu_s": round(c_train, 1),
        "data_cpu_s": round(c_data, 1),
        "loss_first_last": [round(np.mean(losses[:10]), 3), round(np.mean(losses[-10:]), 3)],
        "before": before,
        "after": after,
        "args": {k: v for k, v in vars(args).items() if k not in ("cache", "label")},
    }
    print(json.dumps(row), flush=True)
    with open(cache / "probes.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
