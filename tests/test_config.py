"""Configs: Literal options become choices and are checked before any work, nested configs become grouped
``--group.option`` flags, ``device="auto"`` resolves to CUDA when there is one and to the CPU otherwise."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest
import torch

from gaussian_flametalk import config as config_module
from gaussian_flametalk.config import (add_dataclass_args, config_to_dict, dataclass_from_args, resolve_device,
                                       validate)
from gaussian_flametalk.flametalk.train import TalkConfig
from gaussian_flametalk.scripts import gft
from gaussian_flametalk.tracking.track import TrackConfig


@dataclass
class _Inner:
    grad_threshold: float = 2e-4
    mode: Literal["a", "b"] = "a"


@dataclass
class _Outer:
    name: str = "x"
    inner: _Inner = field(default_factory=_Inner, metadata={"help": "the inner group"})

    def __post_init__(self) -> None:
        validate(self)


def test_nested_configs_become_group_flags():
    p = argparse.ArgumentParser()
    add_dataclass_args(p, _Outer)
    cfg = dataclass_from_args(_Outer, p.parse_args(["--inner.grad-threshold", "0.5", "--inner.mode", "b"]))
    assert cfg == _Outer("x", _Inner(0.5, "b"))
    assert config_to_dict(cfg) == {"name": "x", "inner": {"grad_threshold": 0.5, "mode": "b"}}
    assert "inner options" in p.format_help()
    with pytest.raises(SystemExit):
        p.parse_args(["--inner.mode", "c"])
    with pytest.raises(ValueError, match=r"--inner\.mode: 'c' is not one of 'a', 'b'"):
        _Outer(inner=_Inner(mode="c"))


def test_a_bad_enum_fails_before_any_work(tmp_path, capsys):
    missing = tmp_path / "subject"
    with pytest.raises(ValueError, match=r"--infer-mode: 'typo' is not one of 'autoregressive', 'parallel'"):
        TalkConfig(subjects=(missing,), infer_mode="typo")
    with pytest.raises(ValueError, match="--detector"):
        TrackConfig(video=tmp_path / "v.mp4", out=missing, detector="dlib")
    with pytest.raises(SystemExit) as e:
        gft.main(["train-talk", str(missing), "--infer-mode", "typo"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--infer-mode" in err and "autoregressive" in err and "parallel" in err
    assert not missing.exists() and list(tmp_path.iterdir()) == []


def test_device_auto_picks_cuda_when_present(monkeypatch, capsys):
    monkeypatch.setattr(config_module, "_announced", set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert "device: cpu" in capsys.readouterr().err
    assert TalkConfig(subjects=()).device == "cpu"
    with pytest.raises(ValueError, match="--device: 'cuda' asked for, but torch sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="--device: 'gpu0' is not a torch device"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"


def test_every_stage_defaults_to_auto():
    from dataclasses import fields

    from gaussian_flametalk.avatar.sequence import RenderAvatarConfig
    from gaussian_flametalk.avatar.train import AvatarConfig
    from gaussian_flametalk.eval.evaluate import EvalConfig
    from gaussian_flametalk.pipeline.demo import DemoConfig
    from gaussian_flametalk.pipeline.drive import DriveConfig

    for cls in (AvatarConfig, TalkConfig, TrackConfig, EvalConfig, DemoConfig, DriveConfig, RenderAvatarConfig):
        assert next(f for f in fields(cls) if f.name == "device").default == "auto", cls.__name__


def test_stage_groups_model_and_densify_parse_and_validate(tmp_path, capsys):
    """``gft train-talk``'s architecture is ``--model.*`` (the FlameTalkArch the saved spec holds), ``gft
    train-avatar``'s density control ``--densify.*``; an out-of-range value is refused before any work, naming the
    option."""
    from gaussian_flametalk.avatar.train import AvatarConfig, DensifyOptions
    from gaussian_flametalk.flametalk.model import FlameTalkArch

    parser = gft.build_parser()
    args = parser.parse_args(["train-talk", "S", "--model.dim", "32", "--model.heads", "2", "--model.ff-mult", "3"])
    talk = dataclass_from_args(args._config, args)
    assert talk.model == FlameTalkArch(dim=32, heads=2, ff_mult=3) and config_to_dict(talk)["model"]["dim"] == 32
    assert TalkConfig(subjects=()).model == FlameTalkArch()  # the defaults: 64 wide, 4 heads, 1 layer
    args = parser.parse_args(["train-avatar", "S", "--densify.grad-threshold", "1e-3", "--densify.every", "0",
                              "--densify.opacity-resets", "0"])
    avatar = dataclass_from_args(args._config, args)
    assert avatar.densify == DensifyOptions(every=0, grad_threshold=1e-3, opacity_resets=0)
    assert AvatarConfig(subject=tmp_path).densify == DensifyOptions(0.1, 0.5, None, 2e-4, 0.01, 0.005, 0.1, 1)
    missing = tmp_path / "subject"
    for argv, option in ((["train-avatar", str(missing), "--densify.grad-threshold", "-1"], "--densify.grad-threshold"),
                         (["train-talk", str(missing), "--model.dim", "0"], "--model.dim")):
        assert gft.main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[gft")]
        assert len(err) == 1 and err[0].startswith(f"gft {argv[0]}: error: {option}: ") and "out of range" in err[0]
    assert not missing.exists()
    with pytest.raises(SystemExit):  # the flat names are gone
        parser.parse_args(["train-talk", "S", "--dim", "32"])
    capsys.readouterr()
    for command, group in (("train-talk", "model options"), ("train-avatar", "densify options")):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        assert group in capsys.readouterr().out
