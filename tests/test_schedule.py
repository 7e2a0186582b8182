"""The avatar's training schedule: relative to the run length, no opacity reset near the end, bad combinations refused
before any work, and a default-schedule run that ends with live opacities and the quality of a hand-tuned run."""

from __future__ import annotations

import pytest
import torch

from gaussian_flametalk.avatar.schedule import MIN_RECOVERY, resolve_schedule
from gaussian_flametalk.avatar.train import AvatarConfig, DensifyOptions, fit_avatar
from gaussian_flametalk.scripts.gft import main as gft_main

from test_avatar import _cfg, _train_data


@pytest.mark.parametrize("iterations", [10, 100, 300, 1000, 3000, 6000, 30000])
def test_default_schedule_never_resets_near_the_end(tmp_path, iterations):
    sched = AvatarConfig(subject=tmp_path, iterations=iterations).schedule()
    assert sched.reset_steps, "the default schedule has one opacity reset"
    for r in sched.reset_steps:
        assert r <= (1 - MIN_RECOVERY) * iterations
        assert any(d > r for d in sched.densify_steps), "a densification step after the reset prunes what stayed dark"
        assert not sched.reset_at(iterations)
    assert sched.sh_degree(iterations - 1) == 3
    assert max(sched.densify_steps) < iterations
    assert len(sched.densify_steps) >= 4


def test_schedule_positions_for_3000_iterations():
    s = resolve_schedule(3000, 0.1, 0.5, None, 1, 3, 0.3)
    assert s.densify_steps == tuple(range(300, 1500, 100))
    assert s.reset_steps == (900,)
    assert s.sh_steps == (300, 600, 900) and s.sh_degree(299) == 0 and s.sh_degree(900) == 3
    assert s.collect_gradients(1399) and not s.collect_gradients(1400)  # nothing to collect after the last step


@pytest.mark.parametrize("kw, option", [
    ({"densify": DensifyOptions(end=1.0, opacity_resets=9)}, "--densify.opacity-resets"),  # a reset at 90 % of the run
    ({"densify": DensifyOptions(every=0)}, "--densify.opacity-resets"),  # a reset with nothing to prune after it
    ({"densify": DensifyOptions(start=0.6, end=0.5)}, "--densify.start"),
    ({"sh_degree": 4}, "--sh-degree"),
])
def test_bad_schedules_are_refused_when_the_config_is_made(tmp_path, kw, option):
    with pytest.raises(ValueError, match=option):
        AvatarConfig(subject=tmp_path, iterations=3000, **kw)


def test_densify_options_are_one_group_checked_when_made(tmp_path):
    with pytest.raises(ValueError, match=r"--densify\.grad-threshold: -1\.0 is out of range \(allowed: > 0\)"):
        DensifyOptions(grad_threshold=-1.0)
    with pytest.raises(ValueError, match=r"--densify: expected a DensifyOptions, got dict"):
        AvatarConfig(subject=tmp_path, densify={"every": 0})
    cfg = AvatarConfig(subject=tmp_path, densify=DensifyOptions(every=0, opacity_resets=0))
    assert cfg.schedule().densify_steps == () and cfg.densify.grad_threshold == 2e-4  # the other defaults kept


def test_cli_refuses_a_bad_schedule_before_reading_anything(tmp_path, capsys):
    missing = tmp_path / "no_such_subject"
    assert gft_main(["train-avatar", str(missing), "--densify.end", "1.0", "--densify.opacity-resets", "9"]) == 2
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if not line.startswith("[gft"))
    assert err.startswith("gft train-avatar: error: ") and len(err.splitlines()) == 1
    assert "--densify.opacity-resets" in err and "Traceback" not in err
    assert not missing.exists()


def test_default_schedule_scaled_down_matches_a_hand_tuned_run(tmp_path):
    """The default schedule at 300 iterations (densifying every 24, five steps in its window) against the hand-tuned
    self-consistency run (no densification, no reset): the final opacities are not clamped and the PSNR is reached."""
    data, model = _train_data()
    hand = fit_avatar(data, model, _cfg(tmp_path, iterations=200, densify=dict(start=0.5, end=1.0, every=100),
                                        tune_params=False), tmp_path / "hand")
    defaults = AvatarConfig(subject=tmp_path, iterations=300, tune_params=False, regions=(), progress=False,
                            checkpoint_every=10**6)
    assert defaults.schedule().densify_steps == (48, 72, 96, 120, 144)
    assert defaults.schedule().reset_steps == (90,)
    result = fit_avatar(data, model, defaults, tmp_path / "defaults")
    opacity = torch.sigmoid(result.gaussians.opacity.detach())
    state = torch.load(tmp_path / "defaults" / "checkpoint.pt", weights_only=False)
    saved = torch.sigmoid(state["gaussians"]["opacity"])
    print(f"\ndefault schedule x0.1: test PSNR {result.test['psnr']:.2f} dB (hand-tuned {hand.test['psnr']:.2f}), "
          f"{len(result.gaussians)} Gaussians, median opacity {opacity.median():.3f}")
    assert state["iteration"] == 300
    assert saved.median() > 0.05 and (saved > 0.0101).float().mean() > 0.9  # a reset leaves all at <= 0.01
    assert result.test["psnr"] >= hand.test["psnr"] - 0.5
