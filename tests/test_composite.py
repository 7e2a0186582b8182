"""Compositing below the head: the torso cut (a row, and the shoulders beside the neck) clamps the head's alpha, the
same ramp weighs the training loss."""

import numpy as np
import pytest

from gaussian_flametalk.avatar.composite import (
    TORSO_RAMP,
    TorsoCut,
    composite,
    head_region,
    torso_keep,
    training_target,
)


def _scene(size=64, cut=TorsoCut(40.0)):
    mask = np.zeros((size, size), np.float32)
    mask[8:, 16:48] = 1.0  # a person: head and neck above the cut, torso (collar) below
    source = np.zeros((size, size, 3), np.uint8)
    source[..., 2] = 200  # blue background
    source[mask >= 0.5] = (30, 60, 90)  # dark shirt / skin in the source
    static = np.full((size, size, 3), 128, np.uint8)  # grey plate (inpainted where the person always is)
    return mask, source, static, cut


def test_torso_keep_ramp():
    k = torso_keep(TorsoCut(40.0), 64, 8)
    assert k.shape == (64, 8) and k.dtype == np.float32
    span = TORSO_RAMP * 64
    y = np.arange(64) + 0.5
    assert np.all(k[y >= 40.0] == 0.0)
    assert np.all(k[y <= 40.0 - span] == 1.0)
    inside = (y > 40.0 - span) & (y < 40.0)
    assert inside.any() and np.all((k[inside, 0] > 0) & (k[inside, 0] < 1))
    assert np.all(np.diff(k[:, 0]) <= 0)  # monotone: never fades back in below


def test_no_head_alpha_over_the_collar():
    """A head whose (untrained) white Gaussians spill over the torso leaves the collar exactly as in the source."""
    mask, source, static, cut = _scene()
    head = np.ones((64, 64, 3), np.float32)  # premultiplied white, alpha 1 everywhere: the worst spill
    alpha = np.ones((64, 64, 1), np.float32)
    region = head_region(mask, cut, dilate=3)
    keep = torso_keep(cut, 64, 64)
    out = composite(head, alpha, source, region, static, keep)
    below = (np.arange(64) + 0.5) >= cut.row
    np.testing.assert_array_equal(out[below], source[below])  # collar, torso and background beside it untouched
    assert np.all(region[below] == 0.0)  # the dilated head region stops at the cut too
    above = (np.arange(64) + 0.5) <= cut.row - TORSO_RAMP * 64
    assert np.all(out[above] == 255)  # the head itself is shown as rendered
    # without the clamp the smear is there (this is what the test guards against)
    smeared = composite(head, alpha, source, region, static)
    assert np.all(smeared[below] == 255)


def test_shoulders_beside_the_neck_come_from_the_source():
    """Below the neck top, the person beyond the neck column is torso: a head spilling white everywhere leaves the
    shoulders as in the source there, keeps the neck column (and everything above the neck top) as rendered, and the
    training weight is 0 on them too; a driven jaw lowers the neck top."""
    mask, source, static, _ = _scene()
    cut = TorsoCut(56.0, neck_top=24.0, neck_x=32.0, neck_half=8.0)
    head = np.ones((64, 64, 3), np.float32)
    alpha = np.ones((64, 64, 1), np.float32)
    keep = torso_keep(cut, 64, 64)
    out = composite(head, alpha, source, head_region(mask, cut, dilate=3), static, keep)
    y, x = np.mgrid[0:64, 0:64] + 0.5
    shoulders = (y > 24.0 + TORSO_RAMP * 64) & (np.abs(x - 32.0) >= 8.0) & (y < 56.0)
    np.testing.assert_array_equal(out[shoulders], source[shoulders])
    column = (np.abs(x - 32.0) <= 8.0 - TORSO_RAMP * 64) & (y <= 56.0 - TORSO_RAMP * 64)
    assert np.all(out[column] == 255) and np.all(out[y < 24.0] == 255)
    # monotone away from the neck column, no fading back in
    assert np.all(np.diff(keep[40, 32:]) <= 0) and np.all(np.diff(keep[40, :33]) >= 0)
    _, weight = training_target(source, mask, cut, np.zeros(3, np.float32))
    person = mask >= 0.5
    np.testing.assert_allclose(weight[person], keep[person])
    assert np.all(weight[shoulders & person] == 0.0)
    low = cut.lowered_to(50.0, 30.0)
    assert (low.row, low.neck_top, low.neck_x, low.neck_half) == (56.0, 30.0, 32.0, 8.0)
    assert TorsoCut(40.0).lowered_to(45.0, 30.0) == TorsoCut(45.0)


def test_torso_beside_the_neck_begins_under_the_jaw():
    """Beside the neck column the torso begins right under the jaw outline (a collar or shoulder leaning up past the
    chin row next to the jaw comes from the source), at most ``rise`` above the chin and at that height beyond the
    outline's ends; the face above the outline, the neck column and everything above the rise stay head; a driven jaw
    moves the outline down."""
    mask, source, static, _ = _scene()
    mask[:, :] = 1.0
    source[...] = (30, 60, 90)
    jaw = ((20.0, 20.0), (24.0, 34.0), (32.0, 40.0), (40.0, 34.0), (44.0, 20.0))  # ear, jaw angle, chin, ...
    cut = TorsoCut(60.0, neck_top=40.0, neck_x=32.0, neck_half=4.0, jaw=jaw, rise=12.0)
    head = np.ones((64, 64, 3), np.float32)
    alpha = np.ones((64, 64, 1), np.float32)
    keep = torso_keep(cut, 64, 64)
    out = composite(head, alpha, source, head_region(mask, cut, dilate=3), static, keep)
    y, x = np.mgrid[0:64, 0:64] + 0.5
    span = TORSO_RAMP * 64
    top = cut.side_top(x[0])[None, :]
    side = np.abs(x - 32.0) > 4.0 + span
    shoulder = side & (y >= top + span) & (y < 60.0)
    assert shoulder[y < 34.0].any()  # under the jaw angle, above the chin row
    np.testing.assert_array_equal(out[shoulder], source[shoulder])
    assert np.all(out[(y <= top) & (y <= 60.0 - span)] == 255)  # the face above the outline
    assert np.all(out[y < 40.0 - 12.0] == 255)  # never above the rise: ears and hair stay head
    assert np.all(out[(np.abs(x - 32.0) <= 4.0 - span) & (y < 60.0 - span)] == 255)  # the neck column
    # under the outline, held to [chin - rise, chin]; beyond its ends at the rise
    np.testing.assert_allclose(cut.side_top(np.array([5.0, 22.0, 24.0, 28.0, 32.0, 42.0])),
                               [28.0, 28.0, 34.0, 37.0, 40.0, 28.0])
    low = cut.lowered_to(50.0, 44.0)
    np.testing.assert_allclose(low.side_top(np.array([5.0, 24.0, 32.0])), [32.0, 38.0, 44.0])
    assert (low.row, low.neck_top) == (60.0, 44.0)
    assert cut.lowered_to(50.0, 30.0).jaw == jaw  # a jaw closed tighter than the source's leaves it


def test_training_weight_matches_composite_keep():
    mask, source, _, cut = _scene()
    target, weight = training_target(source, mask, cut, np.zeros(3, np.float32))
    keep = torso_keep(cut, 64, 64)
    person = mask >= 0.5
    np.testing.assert_allclose(weight[person], keep[person])  # the loss counts the head where the composite shows it
    assert np.all(weight[~person] == 1.0)  # background stays black (and transparent) everywhere
    assert np.all(target[~person] == 0.0)


def test_torso_cut_stops_below_the_chin():
    """A neck mesh reaching below the frame (ICT's goes to the collarbones) no longer puts the shirt in the head."""
    import torch

    from gaussian_flametalk.avatar.composite import (
        NECK_HALF_WIDTH, NECK_SPAN, SHOULDER_RISE, chin_rows, torso_cut_rows, torso_cuts,
    )
    from gaussian_flametalk.geometry.camera import Camera
    from gaussian_flametalk.headmodel import HeadParams, make_synthetic_head

    model = make_synthetic_head()
    cam = Camera.look_at((0, -0.03, 0.75), (0, -0.03, 0), focal=64 * 0.75 / 0.36, width=64, height=64)
    v = model.forward_params(HeadParams.zeros(model, 1))
    lowest = torso_cut_rows(v, cam)
    lmk = model.landmarks(v)
    chin, height = chin_rows(lmk, cam)
    cut = torso_cut_rows(v, cam, lmk)
    assert float(lowest[0]) > float(chin[0] + NECK_SPAN * height[0])  # the synthetic neck also reaches further down
    assert torch.allclose(cut, chin + NECK_SPAN * height)
    assert float(chin[0]) < float(cut[0]) < float(lowest[0])
    (c,) = torso_cuts(v, cam, lmk)
    jaw = cam.project(lmk)[0, 0:17, 0]
    assert c.row == pytest.approx(float(cut[0])) and c.neck_top == pytest.approx(float(chin[0]))
    assert c.neck_half == pytest.approx(NECK_HALF_WIDTH * float(jaw.max() - jaw.min()))
    assert c.neck_x == pytest.approx(float(cam.project(lmk)[0, 8, 0]))
    np.testing.assert_allclose(np.array(c.jaw), cam.project(lmk)[0, 0:17].numpy(), rtol=1e-5)
    assert c.rise == pytest.approx(SHOULDER_RISE * float(height[0]))
