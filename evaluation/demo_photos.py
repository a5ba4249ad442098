"""Drawing the demo population's photos: one user's latents (``evaluation.demo_data.DemoUser``) become RGB
pictures that differ in pose (offset, scale, small rotation, head turn), crop, size and aspect, lighting
(brightness, contrast, colour cast, light direction), background and clothes, while face shape, colours, hair,
accessories and attractiveness cues stay those of the user.

Everything is a function of the generator handed in (the population's seed, the user and the photo number), so
files are byte-identical on every run.
"""

from __future__ import annotations

import colorsys
import io
import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageChops, ImageDraw

if TYPE_CHECKING:
    from evaluation.demo_data import DemoUser

MIN_SIDE, MAX_SIDE = 160, 640
SPECKS, SPECK_R = 70, 0.035

# Palettes, light to dark / by hue; a trait in [0, 1] interpolates along one.
_SKIN = np.array(
    [(255, 226, 200), (236, 188, 150), (210, 150, 105), (165, 105, 65), (110, 70, 45), (70, 45, 32)]
)
_HAIR = np.array([(25, 20, 18), (70, 45, 30), (125, 80, 45), (165, 75, 35), (200, 160, 90), (235, 210, 150)])
_EYES = np.array([(70, 40, 25), (120, 85, 40), (75, 120, 60), (60, 110, 175), (120, 135, 150)])
_LIPS = np.array([(190, 100, 100), (200, 70, 90), (150, 70, 60), (120, 55, 60)])
_METALS = ((212, 175, 55), (192, 192, 200), (183, 110, 121))
_HAIR_STYLES = ("short", "long", "bald", "curly", "bun", "side_part")


def _interp(palette: np.ndarray, t: float) -> tuple[int, int, int]:
    x = float(np.clip(t, 0.0, 1.0)) * (len(palette) - 1)
    i = min(int(x), len(palette) - 2)
    c = palette[i] * (1.0 - (x - i)) + palette[i + 1] * (x - i)
    return (int(c[0]), int(c[1]), int(c[2]))


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (int(r * 255), int(g * 255), int(b * 255))


def _shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return (min(255, int(c[0] * f)), min(255, int(c[1] * f)), min(255, int(c[2] * f)))


def render_user_photos(user: DemoUser, seed: int) -> list[tuple[bytes, str, bytes]]:
    """Encoded photos of ``user``: ``(file bytes, "jpg" or "png", the same photo as JPEG bytes)`` each."""
    out = []
    for n in range(1, user.n_photos + 1):
        rng = np.random.default_rng([seed, int(user.user_id.rsplit("_", 1)[1]), n, 0xF0F0])
        png = rng.random() < 0.25
        quality = int(rng.integers(72, 96))
        img = render_photo(user, rng, noise=not png)
        jpeg = _encode(img, "JPEG", quality=quality, subsampling=2, optimize=False, progressive=False)
        if png:
            out.append((_encode(img, "PNG", compress_level=1, optimize=False), "png", jpeg))
        else:
            out.append((jpeg, "jpg", jpeg))
    return out


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def render_photo(user: DemoUser, rng: np.random.Generator, *, noise: bool = True, ss: int = 1) -> Image.Image:
    """One RGB photo of ``user``; ``rng`` decides size, pose, crop, lighting, background and clothes.

    ``noise``: add sensor noise (off for PNGs: it makes them large and slow to encode). ``ss``: supersampling.
    """
    # Log-uniform sides: small photos are common, large ones rarer (and slower to draw).
    w = int(round(math.exp(rng.uniform(math.log(MIN_SIDE), math.log(MAX_SIDE)))))
    aspect = float(rng.choice([0.5625, 0.667, 0.75, 0.8, 1.0, 1.0, 1.25, 1.333]))  # width / height
    h = int(np.clip(round(w / aspect), MIN_SIDE, MAX_SIDE))
    # Draw on a larger canvas (so the rotation never shows its corners), ss times the size, then rotate and
    # crop in one nearest-neighbour affine pass (Pillow's bilinear one costs ~15x more) and shrink by ss with
    # a box filter. ss = 2 antialiases the edges but doubles the time per photo; the default is 1.
    m = int(0.2 * max(w, h)) + 2
    cw, ch = ss * (w + 2 * m), ss * (h + 2 * m)
    bg = _hsv(rng.random(), rng.uniform(0.05, 0.6), rng.uniform(0.35, 0.95))
    canvas = Image.new("RGB", (cw, ch), bg)
    draw = ImageDraw.Draw(canvas)
    _draw_background(draw, rng, cw, ch, bg)

    fh = rng.uniform(0.17, 0.3) * min(w, h) * ss  # face half-height, canvas px
    cx = ss * (m + w / 2 + rng.uniform(-0.12, 0.12) * w)
    cy = ss * (m + h * 0.45 + rng.uniform(-0.08, 0.1) * h)
    yaw = rng.uniform(-0.15, 0.15)  # head turn: features shift sideways
    _draw_person(draw, user, rng, cx, cy, fh, yaw)

    th = math.radians(float(rng.uniform(-12, 12)))
    c, s = math.cos(th), math.sin(th)
    # Output pixel p samples the canvas at R(th) @ (p + ss * (m, m) - centre) + centre.
    px, py = cx - ss * m, cy - ss * m
    coeffs = (c, -s, cx - c * px + s * py, s, c, cy - s * px - c * py)
    img = canvas.transform((ss * w, ss * h), Image.Transform.AFFINE, coeffs, Image.Resampling.NEAREST)
    if ss > 1:
        img = img.reduce(ss)
    return _apply_lighting(img, rng, noise=noise)


def _draw_background(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, cw: int, ch: int, bg: tuple[int, int, int]
) -> None:
    # A horizon band and a few shapes: a room, a street, a wall — anything but a plain field.
    if rng.random() < 0.6:
        y = int(rng.uniform(0.3, 0.8) * ch)
        draw.rectangle((0, y, cw, ch), fill=_shade(bg, rng.uniform(0.55, 0.9)))
    for _ in range(int(rng.integers(0, 5))):
        x0, y0 = rng.uniform(0, cw), rng.uniform(0, ch)
        x1, y1 = x0 + rng.uniform(0.05, 0.4) * cw, y0 + rng.uniform(0.05, 0.4) * ch
        col = _hsv(rng.random(), rng.uniform(0.1, 0.8), rng.uniform(0.2, 1.0))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=col)
        else:
            draw.ellipse((x0, y0, x1, y1), fill=col)


def _draw_person(
    draw: ImageDraw.ImageDraw,
    u: DemoUser,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    fh: float,
    yaw: float,
) -> None:
    """Shoulders, hair, face, features and accessories, drawn in place."""
    t = u.traits
    a = u.attractiveness
    ugly = 1.0 - a
    female = u.gender == "female"
    # Face shape from looks, pulled towards balanced proportions as attractiveness grows.
    ratio = 1.2 + 0.45 * t[3]
    fw0 = fh / ratio  # head width for hair, hat and shoulders: looks only
    ratio = ratio * (1.0 - 0.45 * a) + 1.42 * 0.45 * a
    fw = fh / ratio  # face width: looks and attractiveness
    jaw = 0.75 + 0.35 * t[15]  # width of the lower face relative to the upper
    skin = _interp(_SKIN, t[0])
    hair = _interp(_HAIR, t[1])
    grey = float(np.clip((u.age - 38) / 30.0, 0.0, 0.75))
    hair = tuple(int(c * (1 - grey) + 200 * grey) for c in hair)  # type: ignore[assignment]
    style = _HAIR_STYLES[min(int(t[5] * len(_HAIR_STYLES)), len(_HAIR_STYLES) - 1)]
    if style == "bald" and female:
        style = "long"
    hair_len = t[6] + (0.35 if female else -0.25)
    accent = _hsv(t[14], 0.7, 0.85)
    dx = yaw * fw  # sideways shift of the features on a turned head

    # Shoulders and clothes (clothes change per photo).
    shirt = _hsv(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95))
    draw.ellipse((cx - 2.6 * fw0, cy + 1.05 * fh, cx + 2.6 * fw0, cy + 4.5 * fh), fill=shirt)
    draw.rectangle((cx - 0.35 * fw0, cy + 0.6 * fh, cx + 0.35 * fw0, cy + 1.3 * fh), fill=_shade(skin, 0.9))

    # Hair behind the face.
    if style in ("long", "side_part") and hair_len > 0.35:
        down = fh * (0.6 + 1.4 * min(hair_len, 1.2))
        draw.rounded_rectangle(
            (cx - 1.25 * fw0, cy - 1.1 * fh, cx + 1.25 * fw0, cy + down), radius=int(0.5 * fw0), fill=hair
        )
    if style == "curly":
        for k in range(14):
            ang = math.pi * (0.9 + 1.2 * k / 13)
            r = 0.35 * fw0 * (0.8 + 0.5 * t[6])
            px, py = cx + 1.05 * fw0 * math.cos(ang), cy - 0.2 * fh + 1.0 * fh * math.sin(ang)
            draw.ellipse((px - r, py - r, px + r, py + r), fill=hair)

    # Ears, face (upper ellipse + jaw polygon).
    ear = 0.22 * fw
    for side in (-1, 1):
        ex = cx + side * 0.98 * fw
        draw.ellipse((ex - ear, cy - 0.2 * fh, ex + ear, cy + 0.25 * fh), fill=_shade(skin, 0.93))
    face_box = (cx - fw, cy - fh, cx + fw, cy + 0.35 * fh)
    jaw_poly = [
        (cx - fw, cy - 0.35 * fh),
        (cx + fw, cy - 0.35 * fh),
        (cx + jaw * fw, cy + 0.55 * fh),
        (cx + 0.35 * fw, cy + fh),
        (cx - 0.35 * fw, cy + fh),
        (cx - jaw * fw, cy + 0.55 * fh),
    ]
    draw.ellipse(face_box, fill=skin)
    draw.polygon(jaw_poly, fill=skin)

    # Hair on top.
    if style in ("short", "long", "side_part", "bun", "curly"):
        top = cy - fh * (1.12 + 0.12 * t[6])
        draw.chord((cx - 1.08 * fw0, top, cx + 1.08 * fw0, cy - 0.1 * fh), 180, 360, fill=hair)
        if style == "side_part":
            draw.polygon(
                [(cx - 1.05 * fw0, cy - 0.55 * fh), (cx + 0.2 * fw0, top), (cx - 1.0 * fw0, top)], fill=hair
            )
        if style == "bun":
            r = 0.38 * fw0
            draw.ellipse((cx - r, top - 1.5 * r, cx + r, top + 0.5 * r), fill=hair)

    # Beard (men) or blush (women), from looks.
    if u.gender == "male" and t[13] > 0.55:
        draw.chord(
            (cx - jaw * fw, cy - 0.1 * fh, cx + jaw * fw, cy + 1.05 * fh), 0, 180, fill=_shade(hair, 0.9)
        )
    elif female and t[13] > 0.5:
        for side in (-1, 1):
            bx, by, br = cx + dx + side * 0.55 * fw, cy + 0.2 * fh, 0.2 * fw
            draw.ellipse((bx - br, by - br * 0.6, bx + br, by + br * 0.6), fill=_shade(skin, 0.92))

    # Skin clarity: a speckled texture (new speckles each photo, same density) and moles at fixed face
    # positions, both stronger for lower attractiveness.
    # Their own generator: how many there are must not shift the draws of the lighting that follows.
    srng = np.random.default_rng(int(rng.integers(2**63)))
    n_speck = int(ugly**1.5 * SPECKS)
    su, sv = srng.uniform(-0.85, 0.85, n_speck), srng.uniform(-0.7, 0.9, n_speck)
    inside = su**2 + (sv - 0.1) ** 2 < 0.7  # keep them on the face
    su, sv, sz = su[inside], sv[inside], srng.uniform(0.6, 1.4, int(inside.sum()))
    blemish = _spot_colour(skin)
    for px, py, z in zip(cx + su * fw, cy + sv * fh, sz, strict=True):
        sr = max(1.0, SPECK_R * fw * z)
        draw.ellipse((px - sr, py - sr, px + sr, py + sr), fill=blemish)
    # Moles at fixed face positions; more and larger for lower attractiveness.
    for mu, mv, mr in u.moles:
        r = max(1.0, 0.045 * fw * mr * (0.6 + ugly))
        px, py = cx + dx * 0.5 + mu * fw, cy + mv * fh
        draw.ellipse((px - r, py - r, px + r, py + r), fill=_spot_colour(skin, 55.0, (1.0, 0.95, 0.9)))

    # Features. Asymmetry grows with 1 - attractiveness, in this user's own direction.
    asym = 0.16 * ugly**1.3
    ad = u.asym_dir
    eye_y = cy - 0.18 * fh
    eye_sep = fw * (0.36 + 0.12 * t[12] * 0.5 + 0.06 * (1 - a))
    eye_r = fw * (0.11 + 0.05 * a)
    iris = _interp(_EYES, t[2])
    brow_w = max(1, int(fw * (0.04 + 0.07 * t[10])))
    for i, side in enumerate((-1, 1)):
        ex = cx + dx + side * eye_sep
        ey = eye_y + (ad[0] * asym * fh if i == 0 else 0.0)
        er = eye_r * (1.0 + (ad[1] * asym * 2.0 if i == 1 else 0.0))
        draw.ellipse((ex - 1.5 * er, ey - er, ex + 1.5 * er, ey + er), fill=(245, 245, 240))
        draw.ellipse((ex - 0.8 * er, ey - 0.8 * er, ex + 0.8 * er, ey + 0.8 * er), fill=iris)
        draw.ellipse((ex - 0.35 * er, ey - 0.35 * er, ex + 0.35 * er, ey + 0.35 * er), fill=(15, 12, 10))
        by = ey - 1.9 * er
        draw.line((ex - 1.6 * er, by, ex + 1.6 * er, by - 0.25 * er), fill=_shade(hair, 0.8), width=brow_w)
    nose_len = fh * (0.22 + 0.15 * t[11])
    nose_x = cx + 1.4 * dx + ad[2] * asym * fw
    draw.polygon(
        [
            (nose_x, eye_y + 0.2 * fh),
            (nose_x - 0.12 * fw * (1 + t[11]), eye_y + 0.2 * fh + nose_len),
            (nose_x + 0.12 * fw * (1 + t[11]), eye_y + 0.2 * fh + nose_len),
        ],
        fill=_shade(skin, 0.82),
    )
    mouth_y = cy + 0.5 * fh
    mouth_w = fw * (0.32 + 0.12 * t[12])
    lip_h = fh * (0.04 + 0.05 * a + 0.03 * t[12])
    tilt = ad[3] * asym * fh
    lips = _interp(_LIPS, t[12]) if not (female and t[13] > 0.3) else (200, 50, 80)
    draw.polygon(
        [
            (cx + dx - mouth_w, mouth_y - tilt),
            (cx + dx, mouth_y - lip_h),
            (cx + dx + mouth_w, mouth_y + tilt),
            (cx + dx, mouth_y + lip_h),
        ],
        fill=lips,
    )

    # Accessories, from looks: glasses, earrings, hat.
    if t[7] > 0.7:
        lw = max(1, int(fw * 0.05))
        for side in (-1, 1):
            ex = cx + dx + side * eye_sep
            box = (ex - 2.0 * eye_r, eye_y - 1.5 * eye_r, ex + 2.0 * eye_r, eye_y + 1.5 * eye_r)
            if t[14] > 0.5:
                draw.ellipse(box, outline=accent, width=lw)
            else:
                draw.rectangle(box, outline=accent, width=lw)
        bridge = (cx + dx - eye_sep + 2 * eye_r, eye_y, cx + dx + eye_sep - 2 * eye_r, eye_y)
        draw.line(bridge, fill=accent, width=lw)
    if t[8] > (0.45 if female else 0.85):
        metal = _METALS[int(t[8] * 1000) % len(_METALS)]
        for side in (-1, 1):
            ex, ey, r = cx + side * 1.0 * fw, cy + 0.3 * fh, 0.09 * fw
            draw.ellipse((ex - r, ey - r, ex + r, ey + r), fill=metal)
    if t[9] > 0.78:
        top = cy - 1.15 * fh
        crown, brim = _shade(accent, 0.7), _shade(accent, 0.55)
        draw.rectangle((cx - 1.0 * fw0, top - 0.55 * fh, cx + 1.0 * fw0, top + 0.35 * fh), fill=crown)
        draw.rectangle((cx - 1.5 * fw0, top + 0.25 * fh, cx + 1.5 * fw0, top + 0.42 * fh), fill=brim)


def _spot_colour(
    skin: tuple[int, int, int], contrast: float = 40.0, tint: tuple[float, float, float] = (1.12, 0.95, 0.95)
) -> tuple[int, int, int]:
    """Spots with the same brightness contrast on every skin tone (darker on light and medium skin, lighter
    on the darkest), so attractiveness is about as visible whatever the skin tone. Default: reddish."""
    luma = 0.299 * skin[0] + 0.587 * skin[1] + 0.114 * skin[2]
    scale = (luma - contrast) / luma if luma > 85 else (luma + contrast) / luma
    return tuple(min(255, int(c * scale * k)) for c, k in zip(skin, tint, strict=True))  # type: ignore[return-value]


def _apply_lighting(img: Image.Image, rng: np.random.Generator, *, noise: bool) -> Image.Image:
    """Contrast, brightness and colour cast (one lookup table), light from one side, sensor noise.

    Done with Pillow's C operations rather than float numpy arrays: this is most of the time spent per photo.
    """
    w, h = img.size
    contrast = rng.uniform(0.75, 1.2)
    gain = rng.uniform(0.75, 1.25) * rng.uniform(0.88, 1.12, size=3)
    levels = np.arange(256, dtype=np.float64)
    lut = np.concatenate([np.clip(((levels - 128.0) * contrast + 128.0) * g, 0, 255) for g in gain])
    img = img.point(lut.astype(np.uint8).tolist())
    # Light from one side (a ramp at a random angle, up to +-40 levels) plus sensor noise (a window of a fixed
    # noise tile: Pillow's own noise is not seedable), summed in one grey offset image and added once.
    depth = rng.uniform(0.0, 0.3)
    ramp = Image.linear_gradient("L").rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.NEAREST)
    ramp = ramp.crop((48, 48, 208, 208)).resize((w, h), Image.Resampling.BILINEAR)
    offset = ramp.point([int(round(128 + depth * (v - 128))) for v in range(256)])
    if noise:
        ox, oy = int(rng.integers(0, _NOISE_SIDE - w + 1)), int(rng.integers(0, _NOISE_SIDE - h + 1))
        tile = _noise_tile(int(rng.integers(0, len(_NOISE_SIGMAS)))).crop((ox, oy, ox + w, oy + h))
        offset = ImageChops.add(offset, tile, scale=1.0, offset=-128)
    return ImageChops.add(img, Image.merge("RGB", (offset, offset, offset)), scale=1.0, offset=-128)


_NOISE_SIDE = MAX_SIDE
_NOISE_SIGMAS = (1.0, 2.0, 3.5, 5.0)
_noise_tiles: dict[int, Image.Image] = {}


def _noise_tile(i: int) -> Image.Image:
    """Gaussian noise of sigma ``_NOISE_SIGMAS[i]`` around 128, as an L image; fixed, built once."""
    if i not in _noise_tiles:
        rng = np.random.default_rng(1000 + i)
        x = rng.normal(128.0, _NOISE_SIGMAS[i], size=(_NOISE_SIDE, _NOISE_SIDE))
        _noise_tiles[i] = Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8), "L")
    return _noise_tiles[i]
