"""Parametric head models shared by every stage (FLAME, ICT-FaceKit, synthetic), behind one interface.

Choose one with a spec string, as the ``--head-model`` option does:
``flame:PATH`` (official FLAME 2020/2023 pickle), ``ict:PATH`` (an ICT-FaceKit ``FaceXModel`` folder)
or ``synthetic`` (a small procedural head in FLAME's format, for tests and the demo).
"""

from __future__ import annotations

import os

from .base import IBUG68_PARTS, REGION_NAMES, HeadModel, HeadParams, barycentric_points, vertex_normals
from .flame import FlameModel
from .synthetic import make_synthetic_head, save_synthetic_flame

__all__ = [
    "IBUG68_PARTS",
    "REGION_NAMES",
    "FlameModel",
    "HeadModel",
    "HeadParams",
    "barycentric_points",
    "load_head_model",
    "make_synthetic_head",
    "save_synthetic_flame",
    "vertex_normals",
]


def load_head_model(spec: str, n_shape: int | None = None, n_expression: int | None = None) -> HeadModel:
    """Build a head model from ``flame:PATH``, ``ict:PATH`` or ``synthetic``.

    ``flame`` and ``ict`` without a path fall back to the ``GFT_FLAME`` / ``GFT_ICT`` environment variables.
    ``n_shape``/``n_expression`` choose how many components to use (default: FLAME 300/100, all for ICT;
    the synthetic head always has 10/10).
    """
    kind, _, path = spec.partition(":")
    if kind == "synthetic":
        if path:
            raise ValueError(f"head model '{spec}': the synthetic head takes no path")
        return make_synthetic_head()
    if kind == "flame":
        path = path or os.environ.get("GFT_FLAME", "")
        if not path:
            raise ValueError("head model 'flame' needs a path: flame:/path/to/generic_model.pkl (or set GFT_FLAME)")
        return FlameModel.from_files(path, n_shape=300 if n_shape is None else n_shape,
                                     n_expression=100 if n_expression is None else n_expression)
    if kind == "ict":
        from .ict import IctModel

        path = path or os.environ.get("GFT_ICT", "")
        if not path:
            raise ValueError("head model 'ict' needs a path: ict:/path/to/ICT-FaceKit/FaceXModel (or set GFT_ICT)")
        model = IctModel(path, n_shape=n_shape)
        if n_expression is not None and n_expression != model.n_expression:
            raise ValueError(f"{path}: ICT-FaceKit uses all {model.n_expression} expression blend shapes of its folder")
        return model
    raise ValueError(f"unknown head model '{spec}': use flame:PATH, ict:PATH or synthetic")
