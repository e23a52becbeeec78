"""Tests of dpnp_ray.evaluate.corruptions: the released-file loader and the offline ("generated-c") generator."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from dpnp_ray.evaluate import corruptions as C
from dpnp_ray.evaluate.corruptions import CorruptionError, corrupt

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur",
          "snow", "fog", "elastic_transform"}
# Not monotone in pixel distance by the recipe's own constants (module docstring); tested separately.
NON_MONOTONE = {"glass_blur", "elastic_transform", "saturate"}
# Blurs and geometric transforms: a constant image has nothing to blur or move.
KEEP_CONSTANT = ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "elastic_transform", "pixelate",
                 "gaussian_blur"]


def natural_batch(n: int = 8, seed: int = 0) -> torch.Tensor:
    """Random images with a natural-image (1/f amplitude) spectrum, each rescaled to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    f = torch.fft.fftfreq(32, dtype=torch.float64)
    radius = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).clamp_min(1 / 32)
    img = torch.fft.ifft2(torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64) / radius ** 1.5).real
    img = img - img.amin(dim=(2, 3), keepdim=True)
    return (img / img.amax(dim=(2, 3), keepdim=True)).float()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return natural_batch()


@pytest.fixture(scope="module")
def outputs(batch) -> dict[tuple[str, int], torch.Tensor]:
    return {(name, s): corrupt(batch, name, s, seed=0) for name in C.GENERATED_CORRUPTIONS for s in C.SEVERITIES}


def full(value: float, n: int = 4) -> torch.Tensor:
    return torch.full((n, 3, 32, 32), value, dtype=torch.float64)


# ----------------------------------------------------------------------------- names

def test_name_tuples():
    assert len(C.CIFAR_C_CORRUPTIONS) == 15 and len(C.CIFAR_C_EXTRA) == 4
    assert set(C.GENERATED_CORRUPTIONS) <= set(C.CIFAR_C_CORRUPTIONS + C.CIFAR_C_EXTRA)
    assert "frost" not in C.GENERATED_CORRUPTIONS and "spatter" not in C.GENERATED_CORRUPTIONS
    assert C.GENERATED_BENCHMARK == tuple(c for c in C.CIFAR_C_CORRUPTIONS if c != "frost")
    assert C.GENERATED_DATASET_NAME == "generated-c"
    assert all(len(v) == 5 for v in C.SEVERITY_CONSTANTS.values())


# ----------------------------------------------------------------------------- generic properties

@pytest.mark.parametrize("name", C.GENERATED_CORRUPTIONS)
def test_shape_dtype_range(outputs, batch, name):
    for s in C.SEVERITIES:
        y = outputs[name, s]
        assert y.shape == batch.shape and y.dtype == batch.dtype
        assert y.min() >= 0 and y.max() <= 1
        assert not torch.equal(y, batch), (name, s)


@pytest.mark.parametrize("name", sorted(set(C.GENERATED_CORRUPTIONS) - NON_MONOTONE))
def test_distance_grows_with_severity(outputs, batch, name):
    d = [(outputs[name, s] - batch).abs().mean().item() for s in C.SEVERITIES]
    assert all(a <= b for a, b in zip(d, d[1:])), (name, d)
    assert d[-1] > d[0]


def test_float64_in_float64_out():
    x = natural_batch(2).double()
    for name in ("gaussian_noise", "zoom_blur", "jpeg_compression"):
        assert corrupt(x, name, 3, seed=1).dtype == torch.float64


@pytest.mark.parametrize("name", C.GENERATED_CORRUPTIONS)
def test_deterministic_under_seed(outputs, batch, name):
    assert torch.equal(corrupt(batch, name, 3, seed=0), outputs[name, 3])
    other = corrupt(batch, name, 3, seed=1)
    if name in RANDOM:
        assert not torch.equal(other, outputs[name, 3])
    else:
        assert torch.equal(other, outputs[name, 3])


def test_no_global_rng_use(batch):
    torch.manual_seed(0)
    np.random.seed(0)
    a = corrupt(batch, "gaussian_noise", 2, seed=5)
    torch.manual_seed(123)
    np.random.seed(123)
    np.random.rand(10)
    assert torch.equal(a, corrupt(batch, "gaussian_noise", 2, seed=5))


@pytest.mark.parametrize("name", KEEP_CONSTANT)
def test_constant_image_unchanged(name):
    x = full(0.3)
    atol = 1 / 255 if name == "glass_blur" else 1e-6  # glass_blur truncates to uint8 mid-way, as released
    for s in C.SEVERITIES:
        assert torch.allclose(corrupt(x, name, s, seed=0), x, atol=atol), (name, s)


# ----------------------------------------------------------------------------- noise constants

def test_gaussian_noise_std_and_common_random_numbers():
    x = full(0.5, 16)
    for s, sigma in zip(C.SEVERITIES, (0.04, 0.06, 0.08, 0.09, 0.10)):
        noise = corrupt(x, "gaussian_noise", s, seed=0) - 0.5
        assert noise.std().item() == pytest.approx(sigma, rel=0.03)
        if s > 1:  # severities share their draws: the noise is the same pattern, rescaled
            unclipped = (noise.abs() < 0.5 - 1e-9) & (first.abs() < 0.5 - 1e-9)
            assert torch.allclose(noise[unclipped] / sigma, first[unclipped] / 0.04)
        else:
            first = noise


def test_shot_noise_is_poisson():
    x = full(0.5, 16)
    for s, rate in zip(C.SEVERITIES, (500, 250, 100, 75, 50)):
        y = corrupt(x, "shot_noise", s, seed=0)
        assert y.mean().item() == pytest.approx(0.5, abs=0.01)
        assert y.var().item() == pytest.approx(0.5 / rate, rel=0.05)
        assert torch.allclose(y * rate, (y * rate).round())  # counts / rate


def test_impulse_noise_amount():
    x = full(0.5, 16)
    for s, amount in zip(C.SEVERITIES, (0.01, 0.02, 0.03, 0.05, 0.07)):
        y = corrupt(x, "impulse_noise", s, seed=0)
        salt, pepper = (y == 1).double().mean().item(), (y == 0).double().mean().item()
        assert ((y == 0.5) | (y == 0) | (y == 1)).all()
        assert salt + pepper == pytest.approx(amount, rel=0.1)
        assert salt == pytest.approx(pepper, rel=0.25)


def test_speckle_noise_is_multiplicative():
    x = full(0.5, 16)
    x[:, :, :4] = 0
    for s, sigma in zip(C.SEVERITIES, (0.06, 0.1, 0.12, 0.16, 0.2)):
        y = corrupt(x, "speckle_noise", s, seed=0)
        assert (y[:, :, :4] == 0).all()
        assert (y[:, :, 4:] / 0.5 - 1).std().item() == pytest.approx(sigma, rel=0.03)


# ----------------------------------------------------------------------------- photometric, by hand

def test_contrast_formula(batch):
    x = batch.double()
    for s, c in zip(C.SEVERITIES, (0.75, 0.5, 0.4, 0.3, 0.15)):
        m = x.mean(dim=(2, 3), keepdim=True)
        assert torch.allclose(corrupt(x, "contrast", s, seed=0), (x - m) * c + m)


def test_brightness_raises_hsv_value(batch):
    # With hue and saturation fixed, each channel is V (1 - S k(H)): it scales by V' / V.
    x = batch.double() * 0.9 + 0.05
    v = x.amax(dim=1, keepdim=True)
    for s, c in zip(C.SEVERITIES, (0.05, 0.1, 0.15, 0.2, 0.3)):
        expected = x * (v + c).clamp(max=1) / v
        assert torch.allclose(corrupt(x, "brightness", s, seed=0), expected, atol=1e-12)


def test_saturate(batch):
    # Severities 1-2 scale saturation by a < 1 at fixed hue and value: channel -> V - a (V - channel).
    x = batch.double()
    v = x.amax(dim=1, keepdim=True)
    for s, a in ((1, 0.3), (2, 0.1)):
        assert torch.allclose(corrupt(x, "saturate", s, seed=0), v - a * (v - x), atol=1e-12)
    # Severities 3-5 saturate: the channel spread (max - min = V S) grows, and more with severity.
    spread = [(y.amax(dim=1) - y.amin(dim=1)).mean().item() for y in
              (x, *(corrupt(x, "saturate", s, seed=0) for s in (3, 4, 5)))]
    assert spread == sorted(spread) and spread[1] > spread[0]


def test_gaussian_blur_impulse_response():
    x = full(0.0, 1)
    x[0, :, 16, 16] = 1
    for s, sigma in zip(C.SEVERITIES, (0.4, 0.6, 0.7, 0.8, 1.0)):
        r = int(4 * sigma + 0.5)  # scipy truncates at 4 sigma
        g = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
        g /= g.sum()
        y = corrupt(x, "gaussian_blur", s, seed=0)[0, 0]
        assert y[16 - r:16 + r + 1, 16 - r:16 + r + 1].numpy() == pytest.approx(np.outer(g, g), abs=1e-12)
        assert y.sum().item() == pytest.approx(1.0)


def test_defocus_blur_kernels_by_hand():
    x = full(0.0, 1)
    x[0, :, 10, 20] = 1
    # Severity 1: radius .3 keeps only the centre pixel, then a 3x3 Gaussian of sigma .4.
    e = math.exp(-1 / (2 * 0.4 ** 2))
    g = np.array([e, 1, e]) / (1 + 2 * e)
    y = corrupt(x, "defocus_blur", 1, seed=0)[0, 1]
    assert y[9:12, 19:22].numpy() == pytest.approx(np.outer(g, g), abs=1e-12)
    assert y.sum().item() == pytest.approx(1.0)
    # Severity 4: radius 1 is a plus of 5 pixels; sigma .2 barely spreads it (exp(-12.5) ~ 4e-6).
    y = corrupt(x, "defocus_blur", 4, seed=0)[0, 0]
    plus = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]) / 5
    assert y[9:12, 19:22].numpy() == pytest.approx(plus, abs=1e-5)
    # Severity 5: radius 1.5 covers the 3x3 square.
    y = corrupt(x, "defocus_blur", 5, seed=0)[0, 2]
    assert y[9:12, 19:22].numpy() == pytest.approx(np.full((3, 3), 1 / 9), abs=1e-12)


def test_motion_blur_kernel_is_imagemagick():
    # One-sided Gaussian along the angle: out(y, x) = sum_i k_i img(y + i sin a, x + i cos a).
    img = np.zeros((1, 1, 32, 32))
    img[0, 0, 16, 20] = 1
    width = 13  # 2 * ceil(radius 6) + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * 1.5 ** 2))
    k /= k.sum()
    out = C._motion_blur(img, 6, 1.5, np.array([0.0]))[0, 0]
    assert out[16, 20 - width + 1:21][::-1] == pytest.approx(k, abs=1e-12)
    assert out.sum() == pytest.approx(1.0)
    out = C._motion_blur(img, 6, 1.5, np.array([90.0]))[0, 0]
    assert out[16 - width + 1:17, 20][::-1] == pytest.approx(k, abs=1e-12)


# ----------------------------------------------------------------------------- recipe-specific

def test_glass_blur_grows_with_passes(outputs, batch):
    d = [(outputs["glass_blur", s] - batch).abs().mean().item() for s in C.SEVERITIES]
    assert min(d[3], d[4]) > max(d[:3])  # severities 4-5 shuffle twice, 1-3 once


def test_elastic_severity_one_is_affine():
    # Severity 1 has no elastic field: a linear ramp stays linear away from the reflected border.
    ramp = (0.25 + 0.5 * torch.arange(32, dtype=torch.float64) / 31).expand(2, 3, 32, 32).contiguous()
    inner = (slice(None), slice(None), slice(10, 22), slice(10, 22))

    def curvature(y):
        return (y[..., 2:] - 2 * y[..., 1:-1] + y[..., :-2]).abs().amax().item()

    assert curvature(corrupt(ramp, "elastic_transform", 1, seed=0)[inner]) < 1e-9
    assert curvature(corrupt(ramp, "elastic_transform", 5, seed=0)[inner]) > 1e-3


def test_snow_never_darkens(outputs, batch):
    for s in C.SEVERITIES:
        assert (outputs["snow", s] >= batch - 1e-6).all()


def test_fog_keeps_black_black():
    # x * max / (max + strength) with max = 0: the recipe cannot fog an all-black image.
    assert (corrupt(full(0.0), "fog", 5, seed=0) == 0).all()


def test_zoom_matrix_matches_scipy():
    rng = np.random.default_rng(0)
    zooms = [float(z) for e in (1.06, 1.11, 1.16, 1.21, 1.26) for z in np.arange(1, e, 0.01)] + [1.75, 2.25]
    for z in zooms:
        ch = int(np.ceil(32 / z))
        a = rng.random((2, ch, ch))
        m = C._zoom_matrix(ch, z)
        ref = ndimage.zoom(a, (1, z, z), order=1)
        assert ref.shape == (2, m.shape[0], m.shape[0])
        np.testing.assert_allclose(m @ a @ m.T, ref, atol=1e-12)


@pytest.mark.parametrize("mode", ["mirror", "reflect"])
def test_remap_matches_map_coordinates(mode):
    rng = np.random.default_rng(1)
    x = rng.random((2, 3, 32, 32))
    rows, cols = rng.uniform(-40, 72, (2, 2, 32, 32))
    ref = np.stack([np.stack([ndimage.map_coordinates(x[n, c], [rows[n], cols[n]], order=1, mode=mode)
                              for c in range(3)]) for n in range(2)])
    np.testing.assert_allclose(C._remap(x, rows, cols, mode), ref, atol=1e-12)


def _uint8_batch(seed: int = 0) -> np.ndarray:
    return (natural_batch(4, seed).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def test_pixelate_matches_pil():
    Image = pytest.importorskip("PIL.Image")
    u8 = _uint8_batch()
    x = torch.from_numpy(u8).permute(0, 3, 1, 2).double() / 255
    for s, c in zip(C.SEVERITIES, (0.95, 0.9, 0.85, 0.75, 0.65)):
        side = int(32 * c)
        ref = np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.BOX).resize((32, 32), Image.BOX))
                        for im in u8])
        ref = torch.from_numpy(ref).permute(0, 3, 1, 2).double() / 255
        # PIL rounds to uint8 after each of its passes; we do not.
        assert (corrupt(x, "pixelate", s, seed=0) - ref).abs().max().item() <= 1.5 / 255


def test_jpeg_matches_pil():
    Image = pytest.importorskip("PIL.Image")
    u8 = _uint8_batch(1)
    x = torch.from_numpy(u8).permute(0, 3, 1, 2).double() / 255
    for s, q in zip(C.SEVERITIES, (80, 65, 58, 50, 40)):
        ref = []
        for im in u8:
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, "JPEG", quality=q)
            ref.append(np.asarray(Image.open(buf)))
        ref = torch.from_numpy(np.stack(ref)).permute(0, 3, 1, 2).double() / 255
        diff = (corrupt(x, "jpeg_compression", s, seed=0) - ref).abs()
        assert diff.mean().item() <= 0.5 / 255 and diff.max().item() <= 4 / 255  # libjpeg builds may differ


# ----------------------------------------------------------------------------- generate_corrupted_set

def test_generate_corrupted_set(batch):
    labels = torch.arange(8)
    items = list(C.generate_corrupted_set(batch, labels, names=("contrast", "shot_noise"), severities=(1, 3), seed=4))
    assert [(n, s) for n, s, _, _ in items] == [("contrast", 1), ("contrast", 3), ("shot_noise", 1), ("shot_noise", 3)]
    for name, s, images, y in items:
        assert torch.equal(images, corrupt(batch, name, s, seed=4)) and torch.equal(y, labels)


def test_generate_corrupted_set_checks_eagerly(batch):
    with pytest.raises(CorruptionError, match="frost"):
        C.generate_corrupted_set(batch, torch.arange(8), names=("contrast", "frost"))
    with pytest.raises(CorruptionError, match="1..5"):
        C.generate_corrupted_set(batch, torch.arange(8), severities=(0,))
    with pytest.raises(CorruptionError, match="labels"):
        C.generate_corrupted_set(batch, torch.arange(7))


# ----------------------------------------------------------------------------- generator errors

def test_corrupt_errors(batch):
    with pytest.raises(CorruptionError, match="implemented: gaussian_noise"):
        corrupt(batch, "rain", 1, seed=0)
    with pytest.raises(CorruptionError, match="load_cifar_c"):
        corrupt(batch, "frost", 1, seed=0)
    for bad in (0, 6, True, 2.0):
        with pytest.raises(CorruptionError, match="severity"):
            corrupt(batch, "contrast", bad, seed=0)
    with pytest.raises(CorruptionError, match="seed"):
        corrupt(batch, "contrast", 1, seed=-1)
    for shape in ((2, 1, 32, 32), (2, 3, 28, 28), (3, 32, 32)):
        with pytest.raises(CorruptionError, match=r"\(N, 3, 32, 32\)"):
            corrupt(torch.rand(shape), "contrast", 1, seed=0)
    with pytest.raises(CorruptionError, match="floating-point"):
        corrupt((batch * 255).to(torch.uint8), "contrast", 1, seed=0)
    with pytest.raises(CorruptionError, match=r"\[0, 1\]"):
        corrupt(batch * 2 - 0.5, "contrast", 1, seed=0)


# ----------------------------------------------------------------------------- released-file loader

def _write_release(root, names=("gaussian_noise", "fog"), per=4):
    """Tiny files in the released layout: 5 severities x `per` images, pixel value encodes its position."""
    k, h, w, c = np.meshgrid(np.arange(5 * per), np.arange(32), np.arange(32), np.arange(3), indexing="ij")
    images = ((k * 37 + h * 3 + w * 5 + c * 11) % 256).astype(np.uint8)
    for name in names:
        np.save(root / f"{name}.npy", images)
    np.save(root / "labels.npy", np.tile(np.arange(per, dtype=np.uint8) + 2, 5))  # uint8 as released
    return images


def test_load_cifar_c_reads_severity_slice_channel_first(tmp_path):
    raw = _write_release(tmp_path)
    x, y = C.load_cifar_c(tmp_path, "fog", 3)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and y.tolist() == [2, 3, 4, 5]
    assert torch.equal(x, torch.from_numpy(raw[8:12]).permute(0, 3, 1, 2))
    # one pixel by hand: image 1 of severity 3 is row 9; (h, w, c) = (4, 7, 2)
    assert x[1, 2, 4, 7].item() == (9 * 37 + 4 * 3 + 7 * 5 + 2 * 11) % 256
    x5, _ = C.load_cifar_c(tmp_path, "gaussian_noise", 5, n=2)
    assert torch.equal(x5, torch.from_numpy(raw[16:18]).permute(0, 3, 1, 2))


def test_available_cifar_c(tmp_path):
    assert C.available_cifar_c(tmp_path) == []
    _write_release(tmp_path, names=("fog", "saturate", "gaussian_noise"))
    assert C.available_cifar_c(tmp_path) == ["gaussian_noise", "fog", "saturate"]


def test_load_cifar_c_errors(tmp_path):
    _write_release(tmp_path)
    with pytest.raises(CorruptionError, match="known: gaussian_noise"):
        C.load_cifar_c(tmp_path, "rain", 1)
    for bad in (0, 6, True):
        with pytest.raises(CorruptionError, match="severity"):
            C.load_cifar_c(tmp_path, "fog", bad)
    with pytest.raises(CorruptionError, match="snow.npy"):
        C.load_cifar_c(tmp_path, "snow", 1)
    for bad_n in (0, 5):
        with pytest.raises(CorruptionError, match="n="):
            C.load_cifar_c(tmp_path, "fog", 1, n=bad_n)
    np.save(tmp_path / "snow.npy", np.zeros((21, 32, 32, 3), np.uint8))
    with pytest.raises(CorruptionError, match=r"\(21, 32, 32, 3\)"):
        C.load_cifar_c(tmp_path, "snow", 1)
    np.save(tmp_path / "snow.npy", np.zeros((20, 32, 32), np.uint8))
    with pytest.raises(CorruptionError, match="expected uint8"):
        C.load_cifar_c(tmp_path, "snow", 1)
    np.save(tmp_path / "snow.npy", np.zeros((10, 32, 32, 3), np.uint8))
    with pytest.raises(CorruptionError, match="labels.npy"):
        C.load_cifar_c(tmp_path, "snow", 1)
    np.save(tmp_path / "snow.npy", np.array([{"a": 1}] * 5, dtype=object))
    with pytest.raises(CorruptionError, match="not a plain .npy"):
        C.load_cifar_c(tmp_path, "snow", 1)
    (tmp_path / "labels.npy").unlink()
    with pytest.raises(CorruptionError, match="labels.npy"):
        C.load_cifar_c(tmp_path, "fog", 1)
