"""Figures of the embedding-quality report, drawn with matplotlib's Agg backend (no display, no global state).

Each function draws one PNG and returns its path. Figures are built as ``matplotlib.figure.Figure`` objects
with an Agg canvas rather than through ``pyplot``, so nothing leaks between calls or threads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from engine.errors import InvalidInput

log = logging.getLogger(__name__)

_GENDER_COLOURS = {"female": "#d62728", "male": "#1f77b4", "nonbinary": "#2ca02c"}
_DPI = 100


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No timestamp in the metadata: the same data gives the same file.
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def distance_histograms(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path, *, bins: int = 50
) -> Path:
    """Histograms of same-person vs different-person cosine distances, one panel per encoder.

    ``panels``: ``(title, same_dist, diff_dist)`` each (1-D float arrays of ``1 - cos``). Densities, so the
    two groups compare despite very different pair counts; the dashed lines mark each group's mean.
    """
    if not panels:
        raise InvalidInput("distance_histograms: no encoder to plot")
    fig = _figure(5.0 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), sharex=True, squeeze=False)[0]
    both = [d for _, s, df in panels for d in (s, df) if len(d)]
    hi = max(float(np.max(d)) for d in both) if both else 2.0
    edges = np.linspace(0.0, max(hi, 1e-3) * 1.02, bins + 1)
    for ax, (title, same, diff) in zip(axes, panels, strict=True):
        groups = ((same, "same person", "#2ca02c"), (diff, "different people", "#7f7f7f"))
        for values, label, colour in groups:
            if len(values) == 0:
                continue
            name = f"{label} (n={len(values):,})"
            ax.hist(values, bins=edges, density=True, alpha=0.55, color=colour, label=name)
            ax.axvline(float(np.mean(values)), color=colour, linestyle="--", linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("cosine distance (1 - cos)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    return _save(fig, path)


def embedding_map(
    emb: np.ndarray,
    identities: Sequence[str],
    genders: Sequence[str | None] | None,
    path: Path,
    *,
    title: str = "",
    seed: int = 0,
    max_points: int = 2000,
) -> Path:
    """A 2-D t-SNE map of ``emb`` (n, d), coloured by identity and, when ``genders`` are known, by gender.

    Identities cycle through 20 colours and photos of one person are joined by thin lines, so tight groups
    read as short spokes. Above ``max_points`` photos, a seeded sample of whole identities is drawn (t-SNE is
    quadratic). Raises ``InvalidInput`` on fewer than 3 photos.
    """
    from sklearn.manifold import TSNE

    n = len(emb)
    if n < 3:
        raise InvalidInput(f"embedding_map: need at least 3 photos, got {n}")
    idx = np.arange(n)
    if n > max_points:
        rng = np.random.default_rng(seed)
        people = np.unique(np.asarray(identities))
        chosen: set[str] = set()
        counts: dict[str, int] = {}
        for p in identities:
            counts[p] = counts.get(p, 0) + 1
        total = 0
        for p in rng.permutation(people):
            if total + counts[str(p)] > max_points:
                continue
            chosen.add(str(p))
            total += counts[str(p)]
        idx = np.array([i for i in range(n) if identities[i] in chosen], dtype=np.int64)
    x = np.asarray(emb, dtype=np.float32)[idx]
    keep = [int(i) for i in idx]
    ids = [identities[i] for i in keep]
    perplexity = float(min(30.0, max(2.0, (len(idx) - 1) / 3.0)))
    # Exact gradients below a few hundred points: Barnes-Hut's tree costs more than it saves there (~10 s
    # for 70 points on a busy 2-core machine, against well under one).
    method = "exact" if len(keep) <= 400 else "barnes_hut"
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine", method=method)
    xy = tsne.fit_transform(x)

    show_gender = genders is not None and any(g for g in genders)
    fig = _figure(11.0 if show_gender else 5.5, 5.0)
    axes = fig.subplots(1, 2 if show_gender else 1, squeeze=False)[0]
    ax = axes[0]
    names = sorted(set(ids))
    code = {p: i for i, p in enumerate(names)}
    palette = identity_colours(len(names))
    colours = [palette[code[p]] for p in ids]
    groups: dict[str, list[int]] = {}
    for j, p in enumerate(ids):
        groups.setdefault(p, []).append(j)
    for members in groups.values():
        if len(members) > 1:
            centre = xy[members].mean(axis=0)
            for j in members:
                ax.plot([centre[0], xy[j, 0]], [centre[1], xy[j, 1]], color=colours[j], lw=0.6, alpha=0.6)
    ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=18, edgecolors="none")
    ax.set_title(f"{title} — by identity ({len(names)} people, {len(idx)} photos)".strip(" —"), fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if genders is not None and show_gender:
        g = [genders[i] or "unknown" for i in keep]
        ax = axes[1]
        for name in sorted(set(g)):
            sel = np.array([v == name for v in g])
            ax.scatter(xy[sel, 0], xy[sel, 1], s=18, c=_GENDER_COLOURS.get(name, "#bbbbbb"), label=name,
                       edgecolors="none")  # fmt: skip
        ax.set_title(f"{title} — by gender".strip(" —"), fontsize=10)
        ax.legend(fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def identity_colours(n: int) -> list[tuple[float, float, float]]:
    """``n`` distinct RGB colours, one per person in a map.

    Up to 10: matplotlib's default cycle. Beyond: hues a golden-ratio turn apart (never the same hue twice,
    neighbours far apart) at three lightness levels, where a 20-colour map repeated every 20 people and
    made two people look like one.
    """
    from matplotlib import colors as mcolors

    if n <= 10:
        return [mcolors.to_rgb(f"C{i}") for i in range(n)]
    levels = ((0.85, 0.90), (0.55, 0.75), (0.95, 0.55))  # (saturation, value)
    out = []
    for i in range(n):
        sat, val = levels[i % len(levels)]
        hue = (i * 0.6180339887498949) % 1.0
        r, g, b = mcolors.hsv_to_rgb((hue, sat, val))
        out.append((float(r), float(g), float(b)))
    return out


def neighbour_grid(
    paths: Sequence[Path],
    emb: np.ndarray,
    identities: Sequence[str],
    path: Path,
    *,
    n_queries: int = 6,
    k: int = 5,
    thumb: int = 112,
    title: str = "",
) -> Path:
    """A grid: each row a query photo then its ``k`` nearest other photos (by cosine similarity).

    Neighbours of the same person get a green frame and "same", others a red frame and "other", each with
    its similarity. Queries are spread evenly over the people that have at least two photos (deterministic).
    Composed with Pillow directly: dozens of matplotlib axes would take seconds to lay out.
    """
    from PIL import ImageDraw, ImageFont

    n = len(paths)
    if n < 2:
        raise InvalidInput(f"neighbour_grid: need at least 2 photos, got {n}")
    x = np.asarray(emb, dtype=np.float32)
    ids = np.asarray(identities)
    first: dict[str, int] = {}
    count: dict[str, int] = {}
    for i, p in enumerate(identities):
        first.setdefault(p, i)
        count[p] = count.get(p, 0) + 1
    candidates = [first[p] for p in sorted(first) if count[p] >= 2] or [0]
    pick = np.linspace(0, len(candidates) - 1, num=min(n_queries, len(candidates))).round().astype(int)
    queries = [candidates[i] for i in dict.fromkeys(pick.tolist())]
    k = min(k, n - 1)

    font = ImageFont.load_default(size=13)
    pad, label_h, frame = 8, 18, 4
    cell_w, cell_h = thumb + 2 * frame + pad, thumb + 2 * frame + label_h + pad
    title_h = 26 if title else 0
    gap = 14  # between the query column and its neighbours
    grid = Image.new("RGB", (pad + cell_w * (k + 1) + gap, title_h + pad + cell_h * len(queries)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((pad, 6), title, fill="black", font=font)
    for row, q in enumerate(queries):
        sim = x @ x[q]
        sim[q] = -np.inf
        order = np.argsort(-sim, kind="stable")[:k]
        cells = [(q, None)] + [(int(j), float(sim[j])) for j in order]
        for col, (j, s) in enumerate(cells):
            x0 = pad + col * cell_w + (gap if col else 0)
            y0 = title_h + pad + row * cell_h
            if s is None:
                colour, text = (0, 0, 0), f"query {identities[j]}"
            elif ids[j] == ids[q]:
                colour, text = (44, 160, 44), f"same  {s:.2f}"
            else:
                colour, text = (214, 39, 40), f"other {s:.2f}"
            draw.text((x0, y0), text, fill=colour, font=font)
            top = y0 + label_h
            draw.rectangle((x0, top, x0 + thumb + 2 * frame - 1, top + thumb + 2 * frame - 1), fill=colour)
            grid.paste(Image.fromarray(_thumbnail(paths[j], thumb)), (x0 + frame, top + frame))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return path


def _thumbnail(path: Path, side: int) -> np.ndarray:
    """A ``side`` x ``side`` RGB thumbnail (letterboxed on grey); a file that cannot be read shows as grey."""
    canvas = Image.new("RGB", (side, side), (200, 200, 200))
    try:
        with Image.open(path) as f:
            im = f.convert("RGB")
        im.thumbnail((side, side))
        canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    except OSError as exc:
        log.warning("%s: cannot draw thumbnail: %s", path, exc)
    return np.asarray(canvas)
