"""Common corruptions, CIFAR-10-C style: a loader for the released files and an offline generator.

Two data sources, never to be confused in a results table:

* ``load_cifar_c``: the released CIFAR-10-C / CIFAR-100-C files (Hendrycks & Dietterich, 2019).
  Layout: a directory with one ``<corruption>.npy`` per corruption, uint8 of shape
  (5 * n, 32, 32, 3) holding severities 1..5 stacked in that order (n = 10000 in the release),
  plus ``labels.npy`` of shape (5 * n,) (the labels repeated per severity).
* ``corrupt`` / ``generate_corrupted_set``: a re-implementation with numpy/scipy/torch of
  ``make_cifar_c.py`` (github.com/hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py), for
  when the released files are absent. Call its results "generated-c" (``GENERATED_DATASET_NAME``),
  never "CIFAR-10-C": the distributions match the recipe, the pixels do not match the release.

Generated corruptions, with the CIFAR (32x32) severity constants of make_cifar_c.py (read from
commit ca36008 of that repository; the ImageNet-C constants are much harsher and are not used).
"vs release" points to the notes below; "draws" means the random draws differ, as they must.

name               constants, severities 1..5                                   vs release
-----------------  -----------------------------------------------------------  ----------
gaussian_noise     x + N(0, s^2), s = .04 .06 .08 .09 .10                       draws
shot_noise         Poisson(x r) / r, r = 500 250 100 75 50                      draws
impulse_noise      salt & pepper per element, amount = .01 .02 .03 .05 .07     (a)
defocus_blur       (disk radius, alias sigma) = (.3,.4) (.4,.5) (.5,.6) (1,.2)  (b)
                   (1.5,.1)
glass_blur         (sigma, max_delta, passes) = (.05,1,1) (.25,1,1) (.4,1,1)    (c), draws
                   (.25,1,2) (.4,1,2)
motion_blur        (radius, sigma) = (6,1) (6,1.5) (6,2) (8,2) (9,2.5),         (d), draws
                   angle ~ U(-45, 45) degrees
zoom_blur          mean of x and its zooms by np.arange(1, e, .01),             (e)
                   e = 1.06 1.11 1.16 1.21 1.26
snow               (loc, scale, zoom, threshold, blur radius, blur sigma, mix)  (d), draws
                   = (.1,.2,1,.6,8,3,.95) (.1,.2,1,.5,10,4,.9)
                   (.15,.3,1.75,.55,10,4,.9) (.25,.3,2.25,.6,12,6,.85)
                   (.3,.3,1.25,.65,14,12,.8), blur angle ~ U(-135, -45)
fog                (strength, wibble decay) = (.2,3) (.5,3) (.75,2.5) (1,2)     draws
                   (1.5,1.75), 32x32 diamond-square plasma
brightness         HSV value + c, c = .05 .1 .15 .2 .3                          (f)
contrast           (x - m) c + m, m the channel mean, c = .75 .5 .4 .3 .15      (f)
elastic_transform  32 * (alpha, sigma, affine) = 32 * (0,0,.08) (.05,.2,.07)    (g), draws
                   (.08,.06,.06) (.1,.04,.05) (.1,.03,.03)
pixelate           PIL BOX down to int(32 c), BOX up; c = .95 .9 .85 .75 .65    (h)
jpeg_compression   quality = 80 65 58 50 40                                     (i)
speckle_noise      x + x N(0, s^2), s = .06 .1 .12 .16 .2                       draws
gaussian_blur      gaussian_filter(sigma, mode nearest), sigma = .4 .6 .7 .8 1  (f)
saturate           HSV saturation * a + b, (a, b) = (.3,0) (.1,0) (1.5,0)       (f)
                   (2,.1) (2.5,.2)

The recipe is not monotone in pixel distance for every corruption, in the original as here:
glass_blur grows sigma within one shuffle pass (more blur pulls a shuffled image back toward the
clean one) before going to two passes; elastic_transform shrinks the random affine (2.56 -> 0.96
px) while the elastic field grows; saturate desaturates at severities 1-2 and saturates at 3-5.

Not generated: ``frost`` (needs the frost photographs the original ships) and ``spatter`` (needs
OpenCV's Canny edges, distance transform and histogram equalization, not reproducible with numpy/scipy
without guessing). Without frost the generated benchmark has 14 of the 15 corruptions
(``GENERATED_BENCHMARK``): report its mean over 14 x 5, not as the CIFAR-10-C mean over 15 x 5.

How the generated images differ from the released files (which were made with PIL, scikit-image,
OpenCV and Wand/ImageMagick at unrecorded 2018 versions, and stored as uint8 by truncation):

(a) current scikit-image semantics: each element flips with probability ``amount``, half to 1 and
    half to 0. Older scikit-image releases instead placed exactly ceil(amount * size / 2) salt and
    pepper points at coordinates drawn with ``randint(0, dim - 1)`` (never the last row, column or
    channel). Which version made the release is not recorded.
(b) OpenCV's ``GaussianBlur`` (3x3) of the aliased disk and ``filter2D`` (reflect-101 border) are
    reproduced up to float rounding.
(c) the original's pixel "swap" ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy views copies
    x[h', w'] into x[h, w] and leaves x[h', w'] unchanged; that (released) behaviour is reproduced.
(d) ImageMagick's ``MotionBlurImage`` re-implemented from its source: a one-sided Gaussian of width
    2 * ceil(radius) + 1 along the angle, edge pixels repeated past the border. The snow layer keeps
    the original's uint8 round trips (PIL truncation before the blur, 8-bit PNG rounding after);
    the motion-blurred image itself is not rounded to 8 bits.
(e) ``scipy.ndimage.zoom`` (order 1, corners aligned) written as an interpolation matrix; it equals
    current scipy's zoom to 1e-15 (tested); whether the 2018 scipy gave the same border values is not
    checked. ``np.arange`` includes the end points 1.06 and 1.11 for severities 1 and 2 (float
    rounding), as in the original; a zoom of 1.01 leaves the 32x32 image unchanged there too.
(f) float64 arithmetic, no 8-bit rounding of the output.
(g) ``cv2.warpAffine`` (reflect-101) and ``map_coordinates(order=1, mode="reflect")`` are done by
    one bilinear gather (equal to scipy's ``map_coordinates``, tested); OpenCV quantizes bilinear
    weights to 1/32 pixel, and scipy before 1.6 extended borders slightly differently.
(h) PIL's BOX resampling coefficients reproduced exactly, in float: PIL rounds each pass to uint8.
(i) libjpeg through ``torchvision.io.encode_jpeg`` / ``decode_jpeg`` instead of PIL. With the
    Pillow and torchvision this was tested with, the images equal PIL's ``save(..., "JPEG",
    quality=q)`` round trip exactly; the 2018 libjpeg may differ by a few levels. The input is
    rounded to uint8 first (JPEG has no float input).

Randomness: every call draws from ``np.random.default_rng((seed, crc32(name)))``, nothing global.
The stream depends on the seed and the corruption, not on the severity, so the five severities of
one corruption share their random draws (common random numbers: severity curves compare like with
like). Draws depend on the whole batch: corrupt a data set in one call, or give each batch its own
seed (two batches corrupted with one seed get the same noise at the same positions).

For the evaluation suite, ``corruption_plan`` picks the source a trial can use (released files or
the generator), ``corrupted_sets`` yields its (corruption, severity, points) and ``corruption_rows``
gives a model's accuracy on each: the rows of corruptions.parquet.
"""

from __future__ import annotations

import os
import warnings
import zlib
from types import MappingProxyType
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from scipy import ndimage

from ..config import ExperimentConfig
from ..data import DatasetInfo, DatasetSplits, Split, to_float
from ..devices import Precision
from ..distributed import LocalEnvironment
from .accuracy import correct_counts, subsample

GENERATED_DATASET_NAME = "generated-c"

CIFAR_C_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
CIFAR_C_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)
_IMAGE_SIDE = 32  # every geometric constant below is for 32x32 images


class CorruptionError(ValueError):
    """Bad corruption name, severity, input or file; the message says what is allowed."""


# ----------------------------------------------------------------------------- released files

def _check_severity(severity: int) -> None:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise CorruptionError(f"severity {severity!r}: must be an integer in 1..5")


def _check_released_name(corruption: str) -> None:
    known = CIFAR_C_CORRUPTIONS + CIFAR_C_EXTRA
    if corruption not in known:
        raise CorruptionError(f"unknown corruption {corruption!r}; known: {', '.join(known)}")


def load_cifar_c(root: str | os.PathLike, corruption: str, severity: int,
                 n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one severity of one corruption from the released CIFAR-10-C / CIFAR-100-C files.

    Rows [(severity - 1) * m, severity * m) of ``root/<corruption>.npy`` (shape (5m, H, W, 3), uint8),
    the first ``n`` of them if given. Returns (images uint8 (n, 3, H, W) channel-first,
    labels int64 (n,)). Files are memory-mapped and never unpickled.
    """
    _check_released_name(corruption)
    _check_severity(severity)
    images = _load_npy(os.path.join(os.fspath(root), f"{corruption}.npy"))
    labels = _load_npy(os.path.join(os.fspath(root), "labels.npy"))
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] % 5 != 0 or images.dtype != np.uint8:
        raise CorruptionError(
            f"{corruption}.npy in {root}: shape {images.shape}, dtype {images.dtype}; expected uint8 of "
            f"shape (5 * n, H, W, 3), e.g. (50000, 32, 32, 3) for the released files")
    if labels.shape != (images.shape[0],):
        raise CorruptionError(
            f"labels.npy in {root}: shape {labels.shape}; expected ({images.shape[0]},) to match "
            f"{corruption}.npy")
    per_severity = images.shape[0] // 5
    if n is None:
        n = per_severity
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= per_severity:
        raise CorruptionError(f"n={n!r}: must be an integer in 1..{per_severity} (images per severity)")
    start = (severity - 1) * per_severity
    x = np.ascontiguousarray(images[start:start + n].transpose(0, 3, 1, 2))
    y = np.asarray(labels[start:start + n]).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def _load_npy(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise CorruptionError(
            f"missing file {path}; download CIFAR-10-C (zenodo.org/record/2535967) into that directory, "
            f"or use the offline generator corrupt() and report it as {GENERATED_DATASET_NAME!r}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:  # object arrays (would need pickle) or a corrupt header
        raise CorruptionError(f"{path}: not a plain .npy array ({err})") from err


def available_cifar_c(root: str | os.PathLike) -> list[str]:
    """Corruptions (benchmark order, then extras) whose ``<name>.npy`` exists under ``root``."""
    root = os.fspath(root)
    return [c for c in CIFAR_C_CORRUPTIONS + CIFAR_C_EXTRA if os.path.isfile(os.path.join(root, f"{c}.npy"))]


# ----------------------------------------------------------------------------- helpers
# Arrays are float64 (N, C, H, W) in [0, 1] unless said otherwise.

def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """skimage.filters.gaussian(..., multichannel=True): blur H and W only (its default mode 'nearest')."""
    sig = (0,) * (x.ndim - 2) + (sigma, sigma)
    return ndimage.gaussian_filter(x, sigma=sig, mode=mode, truncate=truncate)


def _rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    """skimage.color.rgb2hsv along axis 1 (ties between channels resolved as there: blue > green > red)."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.max(axis=1)
    delta = v - x.min(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(delta == 0, 0.0, delta / v)
        h = np.zeros_like(v)
        h = np.where(r == v, (g - b) / delta, h)
        h = np.where(g == v, 2.0 + (b - r) / delta, h)
        h = np.where(b == v, 4.0 + (r - g) / delta, h)
        h = (h / 6.0) % 1.0
    h = np.where(delta == 0, 0.0, h)
    return np.stack([h, s, v], axis=1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """skimage.color.hsv2rgb along axis 1."""
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    hi = hi.astype(np.int64) % 6
    r = np.choose(hi, [v, q, p, p, t, v])
    g = np.choose(hi, [t, v, v, q, p, p])
    b = np.choose(hi, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=1)


def _zoom_matrix(in_size: int, zoom: float) -> np.ndarray:
    """(out, in) matrix of scipy.ndimage.zoom(order=1) along one axis, out = round(in * zoom).

    Output pixel o samples input coordinate o (in - 1) / (out - 1) (corners aligned) linearly; as a
    matrix it runs in one matmul instead of a 4-D spline evaluation.
    """
    out_size = int(round(in_size * zoom))
    pos = np.arange(out_size) * ((in_size - 1) / (out_size - 1)) if out_size > 1 else np.zeros(1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, in_size - 1)
    frac = pos - lo
    hi = np.minimum(lo + 1, in_size - 1)
    m = np.zeros((out_size, in_size))
    np.add.at(m, (np.arange(out_size), lo), 1 - frac)
    np.add.at(m, (np.arange(out_size), hi), frac)
    return m


def _clipped_zoom(x: np.ndarray, zoom: float) -> np.ndarray:
    """Zoom the centre crop of side ceil(h / zoom) by ``zoom`` (linear) and trim back to h x h."""
    h = x.shape[-2]
    ch = int(np.ceil(h / zoom))
    top = (h - ch) // 2
    m = _zoom_matrix(ch, zoom).astype(x.dtype)
    out = m @ x[..., top:top + ch, top:top + ch] @ m.T
    trim = (out.shape[-2] - h) // 2
    return out[..., trim:trim + h, trim:trim + h]


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
    """ImageMagick MotionBlurImage, one angle (degrees) per image.

    out(y, x) = sum_i k_i img(y + oy_i, x + ox_i), i = 0..w-1, w = 2 ceil(radius) + 1,
    k_i ∝ exp(-i^2 / (2 sigma^2)), ox_i = ceil(i cos(angle) - 1/2), oy_i = ceil(i sin(angle) - 1/2),
    coordinates clamped to the image (ImageMagick's default 'edge' virtual pixels).
    """
    width = int(2 * np.ceil(radius) + 1)
    taps = np.arange(width, dtype=np.float64)
    kernel = np.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    rad = np.deg2rad(angles)
    px, py = width * np.sin(rad), width * np.cos(rad)
    hyp = np.hypot(px, py)
    off_x = np.ceil(taps[:, None] * py[None] / hyp[None] - 0.5).astype(np.int64)  # (width, N)
    off_y = np.ceil(taps[:, None] * px[None] / hyp[None] - 0.5).astype(np.int64)
    n, _, h, w = x.shape
    nhwc = x.transpose(0, 2, 3, 1)
    rows, cols = np.arange(h), np.arange(w)
    idx = np.arange(n)[:, None, None]
    out = np.zeros_like(nhwc)
    for i in range(width):
        rr = np.clip(rows[None, :, None] + off_y[i][:, None, None], 0, h - 1)
        cc = np.clip(cols[None, None, :] + off_x[i][:, None, None], 0, w - 1)
        out += kernel[i] * nhwc[idx, rr, cc]
    return out.transpose(0, 3, 1, 2)


def _plasma_fractal(n: int, rng: np.random.Generator, mapsize: int = 32, wibbledecay: float = 3) -> np.ndarray:
    """Diamond-square height maps (n, mapsize, mapsize) in [0, 1], as in make_cifar_c.py (mapsize 32).

    The perturbation is wibble * U(-wibble, wibble) (wibble^2 scale), as in the original.
    """
    maparray = np.zeros((n, mapsize, mapsize))
    stepsize = mapsize
    wibble = 100.0

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        # squares: centre = mean of 4 corners + wibble
        corner = maparray[:, 0:mapsize:stepsize, 0:mapsize:stepsize]
        square = corner + np.roll(corner, shift=-1, axis=1)
        square += np.roll(square, shift=-1, axis=2)
        maparray[:, half:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(square)
        # diamonds: edge midpoints = mean of 4 neighbours + wibble
        dr = maparray[:, half:mapsize:stepsize, half:mapsize:stepsize]
        ul = maparray[:, 0:mapsize:stepsize, 0:mapsize:stepsize]
        lt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2)
        maparray[:, 0:mapsize:stepsize, half:mapsize:stepsize] = wibbledmean(lt)
        tt = dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1)
        maparray[:, half:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(tt)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min(axis=(1, 2), keepdims=True)
    return maparray / maparray.max(axis=(1, 2), keepdims=True)


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """make_cifar_c.disk: normalized aliased disk on a 17x17 grid, then cv2.GaussianBlur(3x3, alias_blur).

    Trimmed to its non-zero support (the trim leaves the correlation unchanged).
    """
    grid = np.arange(-8, 8 + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-np.array([-1.0, 0.0, 1.0]) ** 2 / (2 * alias_blur ** 2))
    g /= g.sum()
    k = ndimage.correlate1d(ndimage.correlate1d(disk, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")
    r = int(np.abs(np.argwhere(k > 0) - 8).max())
    return k[8 - r:8 + r + 1, 8 - r:8 + r + 1]


def _pil_box_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix of PIL's BOX resampling (Resample.c precompute_coeffs, box support 1/2).

    Input pixel j counts in output pixel i iff (j + 1/2 - centre_i) / max(scale, 1) lies in (-1/2, 1/2],
    centre_i = (i + 1/2) scale, scale = in/out; weights normalized to sum 1.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    w = np.zeros((out_size, in_size))
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        for j in range(lo, hi):
            u = (j - centre + 0.5) / filterscale
            w[i, j] = 1.0 if -0.5 < u <= 0.5 else 0.0
        w[i] /= w[i].sum()
    return w


# ----------------------------------------------------------------------------- corruptions
# Each takes (x float64 (N, 3, 32, 32) in [0, 1], severity constant, rng) and returns the same shape.

def _gaussian_noise(x, c, rng):
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1)


def _shot_noise(x, c, rng):
    return np.clip(rng.poisson(x * c) / c, 0, 1)


def _impulse_noise(x, c, rng):
    flipped = rng.random(x.shape) < c
    salted = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out


def _speckle_noise(x, c, rng):
    return np.clip(x + x * rng.normal(size=x.shape, scale=c), 0, 1)


def _gaussian_blur(x, c, rng):
    return np.clip(_gaussian(x, c), 0, 1)


def _glass_blur(x, c, rng):
    sigma, max_delta, iterations = c
    # With max_delta = 1 (all CIFAR severities) the offsets are in {-1, 0} and the scan runs from the
    # bottom-right corner, so every pixel is read before it is overwritten: one pass is one gather.
    assert max_delta == 1
    x = np.floor(_gaussian(x, sigma) * 255)  # np.uint8(... * 255) truncates
    n, _, h, w = x.shape
    hs = np.arange(h - max_delta, max_delta, -1)
    ws = np.arange(w - max_delta, max_delta, -1)
    idx = np.arange(n)[:, None, None]
    for _ in range(iterations):
        dx = rng.integers(-max_delta, max_delta, size=(n, hs.size, ws.size))
        dy = rng.integers(-max_delta, max_delta, size=(n, hs.size, ws.size))
        nhwc = x.transpose(0, 2, 3, 1)
        out = nhwc.copy()
        out[idx, hs[None, :, None], ws[None, None, :]] = nhwc[idx, hs[None, :, None] + dy, ws[None, None, :] + dx]
        x = out.transpose(0, 3, 1, 2)
    return np.clip(_gaussian(x / 255.0, sigma), 0, 1)


def _defocus_blur(x, c, rng):
    kernel = _disk_kernel(*c)
    return np.clip(ndimage.correlate(x, kernel[None, None], mode="mirror"), 0, 1)


def _motion_blur_corruption(x, c, rng):
    angles = rng.uniform(-45, 45, size=x.shape[0])
    return np.clip(_motion_blur(x, c[0], c[1], angles), 0, 1)


def _zoom_blur(x, c, rng):
    zooms = np.arange(1, c, 0.01)
    x = x.astype(np.float32)
    out = np.zeros_like(x)
    for z in zooms:
        out += _clipped_zoom(x, float(z))
    return np.clip((x + out) / (len(zooms) + 1), 0, 1).astype(np.float64)


def _snow(x, c, rng):
    loc, scale, zoom, threshold, radius, sigma, mix = c
    n, _, h, w = x.shape
    layer = rng.normal(size=(n, 1, h, w), loc=loc, scale=scale)
    layer = _clipped_zoom(layer, zoom)
    layer[layer < threshold] = 0
    layer = np.floor(np.clip(layer, 0, 1) * 255) / 255  # PIL 'L' image via astype(uint8)
    layer = _motion_blur(layer, radius, sigma, rng.uniform(-135, -45, size=n))
    layer = np.round(layer * 255) / 255  # ImageMagick writes an 8-bit PNG
    gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # cv2 COLOR_RGB2GRAY
    x = mix * x + (1 - mix) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + layer + layer[..., ::-1, ::-1], 0, 1)


def _fog(x, c, rng):
    strength, decay = c
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    plasma = _plasma_fractal(x.shape[0], rng, mapsize=32, wibbledecay=decay)[:, None, :x.shape[2], :x.shape[3]]
    x = x + strength * plasma
    return np.clip(x * max_val / (max_val + strength), 0, 1)


def _brightness(x, c, rng):
    hsv = _rgb_to_hsv(x)
    hsv[:, 2] = np.clip(hsv[:, 2] + c, 0, 1)
    return np.clip(_hsv_to_rgb(hsv), 0, 1)


def _saturate(x, c, rng):
    hsv = _rgb_to_hsv(x)
    hsv[:, 1] = np.clip(hsv[:, 1] * c[0] + c[1], 0, 1)
    return np.clip(_hsv_to_rgb(hsv), 0, 1)


def _contrast(x, c, rng):
    means = x.mean(axis=(2, 3), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1)


def _elastic_transform(x, c, rng):
    alpha, sigma, affine = c
    n, ch, h, w = x.shape
    # random affine: cv2.getAffineTransform(pts1, pts2) then cv2.warpAffine (points are (x, y))
    centre = np.array([h, w], dtype=np.float64) // 2
    size = min(h, w) // 3
    pts1 = np.array([centre + size, [centre[0] + size, centre[1] - size], centre - size])
    pts2 = pts1[None] + rng.uniform(-affine, affine, size=(n, 3, 2))
    src = np.concatenate([pts1, np.ones((3, 1))], axis=1)  # rows (x, y, 1)
    m = np.linalg.solve(np.broadcast_to(src, (n, 3, 3)), pts2).transpose(0, 2, 1)  # (n, 2, 3): dst = M src
    a_inv = np.linalg.inv(m[:, :, :2])
    b_inv = -np.einsum("nij,nj->ni", a_inv, m[:, :, 2])
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    src_x = a_inv[:, 0, 0, None, None] * xx + a_inv[:, 0, 1, None, None] * yy + b_inv[:, 0, None, None]
    src_y = a_inv[:, 1, 0, None, None] * xx + a_inv[:, 1, 1, None, None] * yy + b_inv[:, 1, None, None]
    x = _remap(x, src_y, src_x, mode="mirror")  # BORDER_REFLECT_101
    # smooth random displacement field, alpha * gaussian(U(-1, 1), sigma, mode reflect, truncate 3)
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, size=(n, h, w)), sigma=(0, sigma, sigma),
                                 mode="reflect", truncate=3) * alpha
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, size=(n, h, w)), sigma=(0, sigma, sigma),
                                 mode="reflect", truncate=3) * alpha
    x = _remap(x, yy + dy, xx + dx, mode="reflect")
    return np.clip(x, 0, 1)


def _extend_index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Map integer indices outside 0..n-1 back inside, as scipy.ndimage extends a signal.

    mirror (OpenCV BORDER_REFLECT_101): d c b | a b c d | c b a;
    reflect (half-sample symmetric):    c b a | a b c d | d c b.
    """
    if mode == "mirror":
        period = 2 * n - 2
        i = np.mod(i, period)
        return np.where(i >= n, period - i, i)
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i >= n, period - 1 - i, i)


def _remap(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str) -> np.ndarray:
    """Bilinear out[n, c, i, j] = x[n, c, rows[n, i, j], cols[n, i, j]] on the extended image.

    Equals scipy.ndimage.map_coordinates(order=1, mode=mode) per channel (tested), without its
    (4, N, C, H, W) coordinate array.
    """
    n, _, h, w = x.shape
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    ra, rb = _extend_index(r0, h, mode), _extend_index(r0 + 1, h, mode)
    ca, cb = _extend_index(c0, w, mode), _extend_index(c0 + 1, w, mode)
    nhwc = x.transpose(0, 2, 3, 1)
    idx = np.arange(n)[:, None, None]
    out = ((1 - fr) * ((1 - fc) * nhwc[idx, ra, ca] + fc * nhwc[idx, ra, cb])
           + fr * ((1 - fc) * nhwc[idx, rb, ca] + fc * nhwc[idx, rb, cb]))
    return out.transpose(0, 3, 1, 2)


def _pixelate(x, c, rng):
    side = x.shape[-1]
    small = int(side * c)
    down, up = _pil_box_weights(side, small), _pil_box_weights(small, side)
    return np.clip(up @ (down @ x @ down.T) @ up.T, 0, 1)


def _jpeg_compression(x, c, rng):
    from torchvision.io import decode_jpeg, encode_jpeg  # torchvision only needed for this one

    u8 = torch.from_numpy(np.round(x * 255).astype(np.uint8))
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its codecs in favour of TorchCodec; they still work. If they go,
        # PIL (a torchvision dependency, and what the original used) gives the same bytes (tested).
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        decoded = decode_jpeg(encode_jpeg(list(u8), quality=int(c)))
    return torch.stack(decoded).numpy().astype(np.float64) / 255


class _Corruption(NamedTuple):
    fn: Callable[[np.ndarray, object, np.random.Generator], np.ndarray]
    constants: tuple  # one entry per severity 1..5


_S = _IMAGE_SIDE
_GENERATORS: dict[str, _Corruption] = {
    "gaussian_noise": _Corruption(_gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),
    "shot_noise": _Corruption(_shot_noise, (500, 250, 100, 75, 50)),
    "impulse_noise": _Corruption(_impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07)),
    "defocus_blur": _Corruption(_defocus_blur, ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))),
    "glass_blur": _Corruption(_glass_blur, ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))),
    "motion_blur": _Corruption(_motion_blur_corruption, ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))),
    "zoom_blur": _Corruption(_zoom_blur, (1.06, 1.11, 1.16, 1.21, 1.26)),  # np.arange(1, c, 0.01)
    "snow": _Corruption(_snow, ((0.1, 0.2, 1, 0.6, 8, 3, 0.95),
                                (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                                (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                                (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                                (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))),
    "fog": _Corruption(_fog, ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))),
    "brightness": _Corruption(_brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
    "contrast": _Corruption(_contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
    "elastic_transform": _Corruption(_elastic_transform, ((_S * 0, _S * 0, _S * 0.08),
                                                          (_S * 0.05, _S * 0.2, _S * 0.07),
                                                          (_S * 0.08, _S * 0.06, _S * 0.06),
                                                          (_S * 0.1, _S * 0.04, _S * 0.05),
                                                          (_S * 0.1, _S * 0.03, _S * 0.03))),
    "pixelate": _Corruption(_pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
    "jpeg_compression": _Corruption(_jpeg_compression, (80, 65, 58, 50, 40)),
    "speckle_noise": _Corruption(_speckle_noise, (0.06, 0.1, 0.12, 0.16, 0.2)),
    "gaussian_blur": _Corruption(_gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1)),
    "saturate": _Corruption(_saturate, ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))),
}

GENERATED_CORRUPTIONS = tuple(_GENERATORS)
GENERATED_BENCHMARK = tuple(c for c in CIFAR_C_CORRUPTIONS if c in _GENERATORS)  # the 15 less frost
SEVERITY_CONSTANTS = MappingProxyType({name: g.constants for name, g in _GENERATORS.items()})


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """Apply one generated corruption at one severity (1..5) to float images (N, 3, 32, 32) in [0, 1].

    Returns a tensor of the same shape, dtype and device, in [0, 1]; deterministic given
    (images, name, severity, seed). See the module docstring for the constants and the differences
    from the released CIFAR-10-C files.
    """
    entry = _GENERATORS.get(name)
    if entry is None:
        hint = " (in the released files only: use load_cifar_c)" if name in ("frost", "spatter") else ""
        raise CorruptionError(
            f"corruption {name!r} is not generated{hint}; implemented: {', '.join(GENERATED_CORRUPTIONS)}")
    _check_severity(severity)
    _check_images(images)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CorruptionError(f"seed {seed!r}: must be a non-negative integer")
    rng = np.random.default_rng((int(seed), zlib.crc32(name.encode())))
    x = images.detach().to("cpu", torch.float64).numpy()
    out = entry.fn(x, entry.constants[severity - 1], rng)
    return torch.from_numpy(np.ascontiguousarray(out)).to(device=images.device, dtype=images.dtype)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise CorruptionError(f"images must be a floating-point torch.Tensor, got {type(images).__name__}"
                              f"{'' if not isinstance(images, torch.Tensor) else ' of ' + str(images.dtype)}")
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, _IMAGE_SIDE, _IMAGE_SIDE):
        raise CorruptionError(f"images of shape {tuple(images.shape)}: expected (N, 3, 32, 32); the severity "
                              f"constants are those of CIFAR-10-C and only make sense for 32x32 RGB")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise CorruptionError(f"images range [{images.min().item():g}, {images.max().item():g}]: expected [0, 1] "
                              f"(un-normalized pixels; normalization belongs inside the model)")


def generate_corrupted_set(images: torch.Tensor, labels: torch.Tensor,
                           names: Sequence[str] = GENERATED_CORRUPTIONS,
                           severities: Sequence[int] = SEVERITIES,
                           seed: int = 0) -> Iterator[tuple[str, int, torch.Tensor, torch.Tensor]]:
    """Yield (name, severity, corrupt(images, name, severity, seed), labels) for every pair, lazily.

    Names and severities are checked before anything is generated. Results are the
    "generated-c" data set (``GENERATED_DATASET_NAME``), not CIFAR-10-C.
    """
    if isinstance(names, str):
        names = (names,)
    unknown = [n for n in names if n not in _GENERATORS]
    if unknown:
        raise CorruptionError(f"corruptions {unknown} are not generated; implemented: "
                              f"{', '.join(GENERATED_CORRUPTIONS)}")
    for s in severities:
        _check_severity(s)
    _check_images(images)
    if labels.shape[:1] != images.shape[:1]:
        raise CorruptionError(f"labels of shape {tuple(labels.shape)} for {images.shape[0]} images")

    def _iterate() -> Iterator[tuple[str, int, torch.Tensor, torch.Tensor]]:
        for name in names:
            for s in severities:
                yield name, int(s), corrupt(images, name, int(s), seed), labels

    return _iterate()


# ------------------------------------------------------------------ the evaluation suite's sets

#: the datasets whose released corrupted test sets `load_cifar_c` reads, and their source names
RELEASED_CORRUPTION_SOURCES = {"cifar10": "cifar10-c", "cifar100": "cifar100-c"}
#: seed of the generated corruptions: fixed, so every trial sees the same corrupted images (as with
#: the released files) and variants are compared on identical data
CORRUPTION_SEED = 0


def corruption_plan(cfg: ExperimentConfig, info: DatasetInfo) -> tuple[str | None, str]:
    """(source, note): `cifar10-c` / `cifar100-c` from cfg.corruption_root, GENERATED_DATASET_NAME
    from the offline generator, or None with the reason nothing can run."""
    if cfg.corruption_root and cfg.dataset in RELEASED_CORRUPTION_SOURCES:
        return RELEASED_CORRUPTION_SOURCES[cfg.dataset], f"released files in {cfg.corruption_root}"
    note = ""
    if cfg.corruption_root:
        note = f"corruption_root ignored: no released corrupted test set for dataset {cfg.dataset!r}; "
    if tuple(info.image_shape) != (3, 32, 32):
        return None, note + (f"generated corruptions need (3, 32, 32) images (CIFAR-10-C constants); "
                             f"{cfg.dataset!r} has {tuple(info.image_shape)}")
    return GENERATED_DATASET_NAME, note + ("offline generator (dpnp_ray.evaluate.corruptions), "
                                           "not the released CIFAR-C files")


def corrupted_sets(cfg: ExperimentConfig, data: DatasetSplits, source: str
                   ) -> tuple[Split, Iterator[tuple[str, int, Split]]]:
    """(the clean points, lazily every (corruption, severity, corrupted points)) for a source:
    cfg.eval_corruption_n test points, all 14 generated corruptions (seed CORRUPTION_SEED) or every
    released file in cfg.corruption_root, at every severity."""
    if source == GENERATED_DATASET_NAME:
        clean = subsample(data.test, cfg.eval_corruption_n)
        images = to_float(clean.images)

        def generated() -> Iterator[tuple[str, int, Split]]:
            for name in GENERATED_BENCHMARK:
                for severity in SEVERITIES:
                    corrupted = corrupt(images, name, severity, CORRUPTION_SEED)
                    yield name, severity, Split(corrupted, clean.labels)

        return clean, generated()
    # released files: the first n test images in test-set order (the files follow it)
    n = cfg.eval_corruption_n if 0 < cfg.eval_corruption_n < len(data.test) else len(data.test)
    clean = Split(data.test.images[:n], data.test.labels[:n])
    present = available_cifar_c(cfg.corruption_root)
    names = [c for c in CIFAR_C_CORRUPTIONS if c in present]  # the 15 of the benchmark mean

    def released() -> Iterator[tuple[str, int, Split]]:
        for name in names:
            for severity in SEVERITIES:
                images, labels = load_cifar_c(cfg.corruption_root, name, severity, n)
                yield name, severity, Split(images, labels)

    return clean, released()


def corruption_rows(net: torch.nn.Module, sets: Iterator[tuple[str, int, Split]], *, source: str,
                    env: LocalEnvironment, batch_size: int, precision: Precision,
                    clean_labels: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Clean-forward accuracy on each corrupted set (sharded like every evaluation).

    With `clean_labels`, each row also records the fraction of the set's labels equal to them
    (`label_agreement`): 1.0 unless released files belong to another data set or order.
    """
    rows = []
    for name, severity, split in sets:
        correct, total = correct_counts(net, split, None, env=env, batch_size=batch_size, precision=precision)
        row = {"source": source, "corruption": name, "severity": int(severity), "n": total,
               "accuracy": correct / max(total, 1)}
        if clean_labels is not None:
            row["label_agreement"] = float((split.labels.cpu() == clean_labels.cpu()).float().mean())
        rows.append(row)
    return rows
