"""Image metrics of gft eval: PSNR and SSIM against values worked out by hand, LPIPS weight loading and behaviour."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from gaussian_flametalk.eval.image import (
    LPIPS,
    LPIPS_CHANNELS,
    AlexNetFeatures,
    ImageQuality,
    WeightsUnavailableError,
    load_lpips,
)

C1, C2 = 0.01**2, 0.03**2  # SSIM constants for a dynamic range of 1 (Wang et al. 2004)

# torchvision's alexnet state dict: the features.* parameter names and shapes
TORCHVISION_ALEXNET = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
}
# its classifier.* tensors (4096 x 9216, ...) are ignored by the loader: small stand-ins keep the test fast
CLASSIFIER_STANDINS = {"classifier.1.weight": (8, 16), "classifier.6.bias": (10,)}
# the lpips package's v0.1 alex.pth: one 1x1 linear layer per AlexNet ReLU, stored as linK.model.1.weight
LPIPS_LINEAR = {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate((64, 192, 384, 256, 256))}


def _const(value: int, size: int = 48) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def test_psnr_of_constant_and_random_images_by_hand():
    q = ImageQuality(batch=1)
    q.add(_const(51), _const(76))  # MSE = (25/255)^2 everywhere
    assert q.psnr[0] == pytest.approx(10 * math.log10(1 / (25 / 255) ** 2), abs=1e-4)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    q.add(a, b)
    mse = np.mean(((a.astype(np.float64) - b) / 255) ** 2)
    assert q.psnr[1] == pytest.approx(10 * math.log10(1 / mse), abs=1e-3)
    s = q.summary()
    assert s["frames"] == 2 and s["psnr"] == pytest.approx(np.mean(q.psnr)) and "lpips" not in s
    with pytest.raises(ValueError, match="sizes differ"):
        q.add(a, a[:-2])


def test_ssim_of_a_constant_shift_by_formula():
    """Two constant images x = a, y = b. The 11x11 Gaussian window (sigma 1.5) is cut off at the borders by the zero
    padding: with w the window mass inside the image at a pixel, mu = a w, var = a^2 w (1 - w), cov = a b w (1 - w),
    so SSIM = (2ab w^2 + C1)(2ab w(1-w) + C2) / (((a^2+b^2) w^2 + C1)((a^2+b^2) w(1-w) + C2)); in the interior
    (w = 1) that is (2ab + C1) / (a^2 + b^2 + C1)."""
    size, a, b = 48, 51 / 255, 76 / 255
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    g /= g.sum()
    inside = np.array([g[max(0, 5 - i): 11 - max(0, i + 6 - size)].sum() for i in range(size)])
    w = inside[:, None] * inside[None, :]
    ab, aa = 2 * a * b, a * a + b * b
    expected = ((ab * w**2 + C1) * (ab * w * (1 - w) + C2)) / ((aa * w**2 + C1) * (aa * w * (1 - w) + C2))
    assert expected[size // 2, size // 2] == pytest.approx((ab + C1) / (aa + C1))
    q = ImageQuality(batch=2)
    q.add(_const(51, size), _const(76, size))
    q.add(_const(51, size), _const(51, size))
    q.per_frame()
    assert q.ssim[0] == pytest.approx(expected.mean(), rel=1e-4)
    assert q.ssim[1] == pytest.approx(1.0, abs=1e-6)


def _weights_folder(tmp_path, seed: int = 0, skip: str | None = None, bad_shape: bool = False):
    gen = torch.Generator().manual_seed(seed)
    tmp_path.mkdir(parents=True, exist_ok=True)
    alex = {k: 0.05 * torch.randn(s, generator=gen) for k, s in {**TORCHVISION_ALEXNET, **CLASSIFIER_STANDINS}.items()}
    lin = {k: torch.rand(s, generator=gen) for k, s in LPIPS_LINEAR.items()}  # non-negative, as trained
    if bad_shape:
        alex["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    if skip != "alexnet":
        torch.save(alex, tmp_path / "alexnet-owt-7be5be79.pth")
    if skip != "lin":
        torch.save(lin, tmp_path / "alex.pth")
    (tmp_path / "notes.pth").write_text("not a torch file")  # ignored
    return alex, lin


def test_module_names_match_torchvision_and_lpips():
    feats = set(AlexNetFeatures().state_dict())
    assert feats == set(TORCHVISION_ALEXNET)
    model = LPIPS()
    heads = {k: tuple(v.shape) for k, v in model.heads.state_dict().items()}
    assert heads == {k.replace(".model.1.", "."): s for k, s in LPIPS_LINEAR.items()}
    assert tuple(LPIPS_CHANNELS) == tuple(s[1] for s in LPIPS_LINEAR.values())
    out = AlexNetFeatures()(torch.zeros(1, 3, 64, 64))
    assert [o.shape[1] for o in out] == list(LPIPS_CHANNELS)


def test_lpips_loads_user_weights_and_measures_distance(tmp_path):
    alex, lin = _weights_folder(tmp_path)
    model = load_lpips(tmp_path)
    torch.testing.assert_close(model.backbone.features[6].weight, alex["features.6.weight"])
    torch.testing.assert_close(model.heads.lin2.weight, lin["lin2.model.1.weight"])
    rng = np.random.default_rng(1)
    img = rng.uniform(0.2, 0.8, (2, 64, 64, 3)).astype(np.float32)
    x = torch.from_numpy(img)
    with torch.no_grad():
        assert model(x, x).abs().max().item() < 1e-7
        d = [model(x, (x + s * torch.from_numpy(rng.standard_normal(img.shape).astype(np.float32))).clamp(0, 1))
             for s in (0.02, 0.05, 0.1, 0.2)]
    means = [float(v.mean()) for v in d]
    assert all(v.shape == (2,) for v in d)
    assert all(m1 < m2 for m1, m2 in itertools.pairwise(means)) and means[0] > 0
    q = ImageQuality(model)
    frame = (img[0] * 255).astype(np.uint8)
    q.add(frame, frame)
    assert q.summary()["lpips"] == pytest.approx(0.0, abs=1e-6)


def test_lpips_missing_or_wrong_weights_say_why(tmp_path):
    (tmp_path / "a").mkdir()
    _weights_folder(tmp_path / "a", skip="lin")
    with pytest.raises(WeightsUnavailableError, match="alex.pth"):
        load_lpips(tmp_path / "a")
    (tmp_path / "b").mkdir()
    _weights_folder(tmp_path / "b", skip="alexnet")
    with pytest.raises(WeightsUnavailableError, match="alexnet-owt-7be5be79.pth"):
        load_lpips(tmp_path / "b")
    (tmp_path / "c").mkdir()
    _weights_folder(tmp_path / "c", bad_shape=True)
    with pytest.raises(ValueError, match="features.3.weight|3.weight"):
        load_lpips(tmp_path / "c")
    with pytest.raises(WeightsUnavailableError, match="no such folder"):
        load_lpips(tmp_path / "missing")


def test_lpips_loads_the_lpips_package_layout(tmp_path):
    """One saved lpips.LPIPS(net='alex') state dict (backbone as net.sliceK.N.*, heads as linK.model.1.weight, plus
    its scaling-layer buffers) gives the same metric as torchvision's AlexNet file + alex.pth."""
    alex, lin = _weights_folder(tmp_path / "two")
    slice_of = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
    packed = {f"net.slice{slice_of[int(k.split('.')[1])]}.{k[len('features.'):]}": v
              for k, v in alex.items() if k.startswith("features.")}
    packed.update(lin)
    packed.update({"scaling_layer.shift": torch.zeros(1, 3, 1, 1), "scaling_layer.scale": torch.ones(1, 3, 1, 1)})
    (tmp_path / "one").mkdir()
    torch.save(packed, tmp_path / "one" / "lpips_alex_full.pth")
    a, b = load_lpips(tmp_path / "two"), load_lpips(tmp_path / "one")
    x = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    y = (x + 0.1).clamp(0, 1)
    with torch.no_grad():
        assert float(a(x, y)) > 0
        torch.testing.assert_close(a(x, y), b(x, y))


def test_silhouette_errors_see_frayed_outlines_and_floaters():
    """A render matching the mask scores 0; fraying its outline raises only `edge`, a blob far outside only
    `outside`; pixels of weight 0 are not counted."""
    from gaussian_flametalk.metrics.image import boundary_band, silhouette_errors

    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    mask = (((yy - 32) ** 2 + (xx - 32) ** 2) < 20.0**2).float()[None, ..., None]
    band = boundary_band(mask, 2)
    assert band.any() and not band[0, 32, 32, 0] and not band[0, 2, 2, 0] and band[0, 32, 12, 0]
    assert silhouette_errors(mask.clone(), mask) == {"edge": 0.0, "outside": 0.0}
    g = torch.Generator().manual_seed(0)
    frayed = torch.where(band & (torch.rand(mask.shape, generator=g) < 0.5), 1 - mask, mask)
    e = silhouette_errors(frayed, mask)
    assert 0.3 < e["edge"] < 0.7 and e["outside"] == 0.0
    floater = mask.clone()
    floater[0, 0:8, 0:8] = 0.8
    f = silhouette_errors(floater, mask)
    assert f["edge"] == 0.0 and f["outside"] > 0.02
    weight = torch.ones_like(mask)
    weight[0, 0:8, 0:8] = 0
    assert silhouette_errors(floater, mask, weight)["outside"] == 0.0
