"""The densification strategy: gradients are collected, Gaussians densified and opacities reset exactly at the
schedule's iterations, and nowhere else."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from gaussian_flametalk.avatar.gaussians import BoundGaussians
from gaussian_flametalk.avatar.schedule import resolve_schedule
from gaussian_flametalk.avatar.strategy import DefaultStrategy


def _setup(n=6):
    g = BoundGaussians.init(torch.arange(n), n, opacity=0.5)
    opt = torch.optim.Adam([{"params": [getattr(g, f)], "name": f} for f in
                            ("xyz", "rotation", "log_scale", "opacity", "sh_dc", "sh_rest")], lr=1e-3)
    sched = resolve_schedule(100, 0.1, 0.5, 10, 1, 0, 0.3)  # densify at 10..40, reset at 30
    strategy = DefaultStrategy(sched, torch.ones(n), grad_threshold=1e-3, split_size=10.0, min_opacity=0.005,
                               max_size=100.0)
    return g, opt, strategy


def test_strategy_follows_the_schedule():
    g, opt, strategy = _setup()
    state = strategy.initialize_state(g)
    events = {}
    for it in range(60):
        info = SimpleNamespace(means2d=SimpleNamespace(grad=torch.ones(1, len(g), 2)),
                               visible=torch.ones(1, len(g), dtype=torch.bool))
        strategy.step_post_backward(state, info, it, 64, 64)
        counts = strategy.step_post_update(g, opt, state, it, torch.Generator().manual_seed(0))
        if counts is not None:
            events[it + 1] = counts["cloned"]
        if it + 1 == 30:
            assert torch.sigmoid(g.opacity.detach()).max() <= 0.0101  # the reset
    assert sorted(events) == [10, 20, 30, 40]
    assert all(c > 0 for c in events.values())  # every Gaussian was hot: cloned (small)
    n = len(g)
    assert not strategy.schedule.collect_gradients(50) and state.count.sum() == 0 and len(g) == n


def test_pre_backward_keeps_the_screen_space_gradient():
    _, _, strategy = _setup()
    xyz = torch.randn(1, 4, 2, requires_grad=True)
    means2d = xyz * 2  # not a leaf, as the rasterizer's output
    strategy.step_pre_backward(SimpleNamespace(means2d=means2d))
    means2d.sum().backward()
    assert torch.equal(means2d.grad, torch.ones(1, 4, 2))
    strategy.step_pre_backward(SimpleNamespace(means2d=torch.zeros(1, 4, 2)))  # no gradient asked: nothing to keep
