"""Inference with a trained FlameTalk: load a ``gft train-talk`` folder (:func:`load_talk`) and predict expression +
jaw motion from any speech (:class:`TalkModel`), with the PTalker style from a reference (:func:`load_reference_motion`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.meta import read_meta
from ..io.subject import Subject
from ..io.training import Checkpoint
from ..headmodel import HeadModel
from ..io.audio import load_audio
from .encoders import AudioEncoder, load_encoder
from ..headmodel.motion import motion_from_params, motion_to_kwargs, motion_vertices
from .model import FlameTalk, FlameTalkSpec, predict
from .projection import MotionProjector

__all__ = ["TalkModel", "load_reference_motion", "load_talk", "subject_template"]


@dataclass
class TalkModel:
    """A trained FlameTalk with what inference needs (``load_talk``). PTalker models also keep the speaker's
    training-subject index (None: unseen) and the reference motion (T_ref, M) its motion style comes from."""

    model: FlameTalk
    encoder: AudioEncoder
    head: HeadModel
    template: torch.Tensor
    shape: torch.Tensor
    fps: float
    window: int
    overlap: int
    subject_index: int | None = None
    reference: torch.Tensor | None = None
    projector: MotionProjector | None = None

    def predict(self, wave: np.ndarray, mode: str = "autoregressive") -> np.ndarray:
        """(S,) 16 kHz -> (T, M) motion, mapped by ``projector`` (the subject's tracked distribution) when set.

        The whole speech is known here, so it is handed to the encoder first (``phonetic`` decodes it once and the
        windows take their phones from that, as in training and in train-talk's test figures; the streaming
        predictor instead decodes each window with its context, which costs twice the decoding)."""
        self.encoder.prepare(wave)
        try:
            motion = predict(self.model, self.encoder, wave, self.template, self.fps, mode, self.window,
                             self.overlap, subject=self.subject_index, reference=self.reference)
        finally:
            self.encoder.release(wave)
        return self.projector(motion) if self.projector is not None else motion

    def predict_file(self, path: str | os.PathLike, mode: str = "autoregressive") -> dict[str, np.ndarray]:
        """Any audio file -> ``expression`` (T, E) and ``jaw`` (T, 3) (zero without a jaw joint). A silent file gives
        the model's closed-mouth motion."""
        motion = torch.from_numpy(self.predict(load_audio(path, allow_silent=True), mode))
        kw = motion_to_kwargs(motion, self.head)
        return {"expression": kw["expression"].numpy(), "jaw": kw.get("jaw", torch.zeros(len(motion), 3)).numpy()}


def load_reference_motion(path: str | os.PathLike, head: HeadModel) -> torch.Tensor:
    """A speaker's motion (T, M) for a PTalker style: a SUBJECT folder (its tracked parameters) or an ``.npz`` with
    ``expression`` (T, E) and, for head models with a jaw joint, ``jaw`` (T, 3) (a ``params.npz``, or the
    ``test/*.npz`` and ``gft drive`` outputs)."""
    path = Path(path)
    if path.is_dir():
        subject = Subject.open(path)
        hm = subject.meta["head_model"]
        if hm["n_expression"] != head.n_expression:
            raise ValueError(f"{path}: tracked with {hm['spec']} ({hm['n_expression']} expressions), but the model "
                             f"drives {head.n_expression}")
        return motion_from_params(subject.params(), head)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such style reference (a SUBJECT folder or a motion .npz)")
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in ("expression", "jaw") if k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npz motion file ({e})") from e
    need = ["expression"] + (["jaw"] if "jaw" in head.pose_parts else [])
    missing = [k for k in need if k not in arrays]
    if missing:
        raise ValueError(f"{path}: style reference lacks {missing} (needs {need} per frame)")
    expr = arrays["expression"]
    if expr.ndim != 2 or expr.shape[1] != head.n_expression or len(expr) == 0:
        raise ValueError(f"{path}: expression must be (T, {head.n_expression}) with T >= 1, got {expr.shape}")
    parts = [expr] + ([arrays["jaw"]] if "jaw" in need else [])
    if "jaw" in need and arrays["jaw"].shape != (len(expr), 3):
        raise ValueError(f"{path}: jaw must be ({len(expr)}, 3), got {arrays['jaw'].shape}")
    motion = torch.from_numpy(np.concatenate(parts, axis=1).astype(np.float32))
    if not torch.isfinite(motion).all():
        raise ValueError(f"{path}: style reference contains NaN or infinite values")
    return motion


@torch.no_grad()
def subject_template(head: HeadModel, motion: torch.Tensor, shape: torch.Tensor, train_idx) -> torch.Tensor:
    """The style input: the subject's mean mesh over its *training* frames (the test split is never seen), (V, 3).

    Args: motion (T, M) tracked; shape (n_shape,) the identity; train_idx the training frame indices."""
    idx = torch.as_tensor(np.asarray(train_idx), dtype=torch.long)
    return motion_vertices(head, motion[idx][None], shape).mean(dim=(0, 1))


def load_talk(folder: str | os.PathLike, subject: str | os.PathLike | None = None, device: str = "cpu",
              style_reference: str | os.PathLike | None = None, *, project: str | None = None,
              pca_variance: float | None = None) -> TalkModel:
    """A trained FlameTalk from a ``talk/`` folder, driving the identity of ``subject`` (default: the first SUBJECT
    it was trained on).

    A PTalker model also needs the speaker's motion style: from ``style_reference`` (a SUBJECT folder or a motion
    ``.npz``, see :func:`load_reference_motion`) if given, else from ``subject``'s own training frames. A ``subject``
    the model was not trained on is an unseen subject (no personal one-hot style): its style comes from the reference,
    without fine-tuning.

    ``project`` (none | clip | pca, see :mod:`.projection`) and ``pca_variance`` keep the predictions inside
    ``subject``'s tracked training motion; default: the training run's ``--project`` / ``--pca-variance`` (none for
    runs from before the option)."""
    folder = Path(folder)
    meta_path, ckpt_path = folder / "meta.json", folder / "checkpoint.pt"
    if not meta_path.is_file() or not ckpt_path.is_file():
        raise FileNotFoundError(f"{folder}: not a finished gft train-talk folder (no meta.json or checkpoint.pt)")
    meta = read_meta(meta_path, "train-talk")
    state = Checkpoint(ckpt_path).read(device)
    subj = Subject.open(subject if subject is not None else meta["subjects"][0])
    head = subj.head_model()
    encoder = load_encoder(state["audio_encoder"], state["encoder_dim"]).to(device)  # its own saved init config
    encoder.load_state_dict(state["encoder"])
    spec = FlameTalkSpec.from_dict(state["spec"])  # a flat dict from before FlameTalkArch too
    if spec.motion_dim != head.motion_dim:
        raise ValueError(f"{subj.root}: its head model has motion size {head.motion_dim}, the model in {folder} "
                         f"{spec.motion_dim}: drive a subject tracked with the training head model")
    model = FlameTalk(spec, head if spec.ptalker else None).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        older = spec.ptalker is not None and any(k.startswith("ptalker.mesh.") for k in state["model"])
        raise ValueError(f"{ckpt_path}: " + ("trained with the earlier PTalker approximation (a template-mesh encoder), "
                                             "not PTalker as the paper describes it: retrain it with gft train-talk "
                                             "--ptalker" if older else f"the weights do not fit the saved spec ({e})")
                         ) from None
    model.eval()
    encoder.eval()
    params = subj.params()
    motion = motion_from_params(params, head)
    shape = params.shape.mean(0)
    template = subject_template(head, motion, shape, subj.split()[0])
    index, reference = None, None
    if spec.ptalker:
        trained = [Path(s).resolve() for s in meta["subjects"]]
        index = trained.index(subj.root.resolve()) if subj.root.resolve() in trained else None
        reference = (load_reference_motion(style_reference, head) if style_reference is not None
                     else motion[subj.split()[0]]).to(device)
    elif style_reference is not None:
        raise ValueError(f"{folder}: trained without --ptalker: a style reference needs a PTalker model")
    cfg = meta["config"]
    project = cfg.get("project", "none") if project is None else project
    pca_variance = float(cfg.get("pca_variance", 0.95)) if pca_variance is None else pca_variance
    projector = MotionProjector.fit(motion[subj.split()[0]], head, project, pca_variance)
    return TalkModel(model, encoder, head, template.to(device), shape, float(meta["fps"]), cfg["window"],
                     cfg["overlap"], index, reference, projector)
