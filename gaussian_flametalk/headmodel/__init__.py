"""Parametric head models shared by every stage (FLAME, ICT-FaceKit, synthetic), behind one interface.

Choose one with a spec string, as the ``--head-model`` option does:
``flame:PATH`` (official FLAME 2020/2023 pickle), ``ict:PATH`` (an ICT-FaceKit ``FaceXModel`` folder)
or ``synthetic`` (a small procedural head in FLAME's format, for tests and the demo).
"""

from __future__ import annotations

import os

from ..registry import Registry
from .base import (IBUG68_PARTS, REGION_NAMES, HeadModel, HeadParams, barycentric_points, blink_components,
                   eye_components, eye_openness, inter_ocular, vertex_normals)
from .flame import FlameModel
from .synthetic import make_synthetic_head, save_synthetic_flame

__all__ = [
    "HEAD_MODELS",
    "IBUG68_PARTS",
    "REGION_NAMES",
    "FlameModel",
    "HeadModel",
    "HeadParams",
    "barycentric_points",
    "blink_components",
    "eye_components",
    "eye_openness",
    "inter_ocular",
    "load_head_model",
    "make_synthetic_head",
    "save_synthetic_flame",
    "vertex_normals",
]


HEAD_MODELS = Registry("head model", "--head-model")


def _env_path(arg: str | None, kind: str, env: str, example: str) -> str:
    path = arg or os.environ.get(env, "")
    if not path:
        raise ValueError(f"--head-model: '{kind}' needs a path: {kind}:{example} (or set {env})")
    return path


def _env_available(env: str) -> tuple[bool | None, str]:
    return (None, f"set {env} or pass a path") if not os.environ.get(env) else (True, f"{env}={os.environ[env]}")


@HEAD_MODELS.register("synthetic", help="a small procedural head in FLAME's format, for tests and the demo")
def _synthetic(arg: str | None, n_shape: int | None = None, n_expression: int | None = None) -> HeadModel:
    return make_synthetic_head()


@HEAD_MODELS.register("flame", arg="optional", arg_help="PATH", available=lambda: _env_available("GFT_FLAME"),
                      help="FLAME 2020 generic_model.pkl or FLAME 2023 flame2023.pkl (licensed; bring your own)")
def _flame(arg: str | None, n_shape: int | None = None, n_expression: int | None = None) -> HeadModel:
    path = _env_path(arg, "flame", "GFT_FLAME", "/path/to/generic_model.pkl")
    return FlameModel.from_files(path, n_shape=300 if n_shape is None else n_shape,
                                 n_expression=100 if n_expression is None else n_expression)


@HEAD_MODELS.register("ict", arg="optional", arg_help="PATH", available=lambda: _env_available("GFT_ICT"),
                      help="an ICT-FaceKit FaceXModel folder (open, MIT)")
def _ict(arg: str | None, n_shape: int | None = None, n_expression: int | None = None) -> HeadModel:
    from .ict import IctModel

    path = _env_path(arg, "ict", "GFT_ICT", "/path/to/ICT-FaceKit/FaceXModel")
    model = IctModel(path, n_shape=n_shape)
    if n_expression is not None and n_expression != model.n_expression:
        raise ValueError(f"{path}: ICT-FaceKit uses all {model.n_expression} expression blend shapes of its folder")
    return model


def load_head_model(spec: str, n_shape: int | None = None, n_expression: int | None = None) -> HeadModel:
    """Build a head model from ``flame:PATH``, ``ict:PATH`` or ``synthetic`` (:data:`HEAD_MODELS`).

    ``flame`` and ``ict`` without a path fall back to the ``GFT_FLAME`` / ``GFT_ICT`` environment variables.
    ``n_shape``/``n_expression`` choose how many components to use (default: FLAME 300/100, all for ICT;
    the synthetic head always has 10/10).
    """
    return HEAD_MODELS.build(spec, n_shape=n_shape, n_expression=n_expression)
