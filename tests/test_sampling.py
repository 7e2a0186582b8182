"""Training-frame samplers: uniform draws as before, balanced draws rare face states more often."""

from __future__ import annotations

import numpy as np
import torch

from gaussian_flametalk.avatar.sampling import BalancedFrames, UniformFrames, face_state_features, make_sampler
from gaussian_flametalk.headmodel import make_synthetic_head
from gaussian_flametalk.headmodel.base import HeadParams
from gaussian_flametalk.geometry.camera import Camera


def test_balanced_sampling_draws_rare_states_more_often_and_starves_none():
    rng = np.random.default_rng(0)
    n = 200
    mouth = np.where(np.arange(n) < 10, 0.6, 0.1) + 0.01 * rng.standard_normal(n)  # 10 frames with the teeth bared
    eyes = 0.3 + 0.01 * rng.standard_normal(n)
    train_idx = np.arange(n) + 5
    s = BalancedFrames(train_idx, np.stack([mouth, eyes], 1), mix=0.5)
    p = s.probabilities.numpy()
    assert abs(p.sum() - 1) < 1e-9 and p.min() >= 0.5 / n
    assert p[:10].sum() > 0.12  # 5 % of the frames get more than 12 % of the draws (uniform: 5 %)
    draws = s.draw(20000, torch.Generator().manual_seed(0)).numpy()
    assert set(np.unique(draws)) <= set(train_idx.tolist())
    assert abs(np.mean(draws < 15) - p[:10].sum()) < 0.02
    u = UniformFrames(train_idx)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(u.draw(7, g1), torch.as_tensor(train_idx)[torch.randint(n, (7,), generator=g2)])
    assert isinstance(make_sampler("balanced", train_idx, None, 0.5), UniformFrames)


def test_face_state_features_follow_the_jaw():
    """The mouth feature of the projected synthetic head rises with the jaw opening."""
    model = make_synthetic_head()
    p = HeadParams.zeros(model, 3)
    p.jaw[:, 0] = torch.tensor([0.0, 0.15, 0.3])
    cam = Camera.look_at((0, 0, 0.6), (0, 0, 0), focal=800, width=256, height=256)
    with torch.no_grad():
        f = face_state_features(cam.project(model.landmarks(model.forward_params(p))))
    assert f.shape == (3, 2)
    assert f[0, 0] < f[1, 0] < f[2, 0]
    assert np.allclose(f[:, 1], f[0, 1], atol=0.02)
