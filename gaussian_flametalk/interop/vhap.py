"""VHAP's monocular export layout: read it into a SUBJECT (``gft import-vhap``), write a SUBJECT in it
(``gft export-vhap``).

The layout is the NeRF-style dataset VHAP's export step writes and GaussianAvatars trains on (facts of the format,
learnt from VHAP's public export and dataset code; this reader and writer are the project's own)::

    FOLDER/
      transforms.json            shared intrinsics (fl_x, fl_y, cx, cy, w, h, camera_angle_x, camera_angle_y),
                                 timestep_indices, camera_indices, and frames: one entry per (timestep, camera) with
                                 timestep_index, timestep_index_original, timestep_id, camera_index, camera_id, the
                                 intrinsics again, transform_matrix (4x4 camera-to-world, OpenGL camera axes: x right,
                                 y up, looking down -z), file_path, fg_mask_path, flame_param_path
      transforms_train.json, transforms_val.json, transforms_test.json   the same keys, one split each
      images/TTTTT_CC.png        the frames (timestep TTTTT, camera CC)
      fg_masks/TTTTT_CC.png      8-bit foreground masks
      flame_param/TTTTT.npz      FLAME parameters of one timestep: translation (1, 3), rotation (1, 3),
                                 neck_pose (1, 3), jaw_pose (1, 3), eyes_pose (1, 6), expr (1, E), shape (S,),
                                 static_offset (1, V, 3) (GaussianAvatars reads it from timestep 0), optionally
                                 dynamic_offset (1, V, 3)
      canonical_flame_param.npz  zero pose and expression with the jaw opened 0.3 rad, the shared shape

Conventions mapped: the FLAME parameters are this project's :class:`HeadParams` fields one to one (same joint order,
axis-angle, translation after rotation, metres); the camera is this project's OpenCV world-to-camera ``viewmat``
after flipping the y and z camera axes and inverting. VHAP's per-vertex offsets have no counterpart in the head
models here: an import drops them, says so and records their size in ``meta.json``; an export writes zero offsets.
GaussianAvatars reads the fields named here (``transforms_{train,val,test}.json``: file_path, transform_matrix, w, h,
camera_angle_x, timestep_index, camera_index, flame_param_path; the npz fields) and assumes a centred principal point
with fx = fy (an export warns otherwise). The project's own test split (the
last 20 %) is used both ways: an export writes it as transforms_train/test.json (val empty, as VHAP writes it for one
camera); an import recomputes it from the frame count.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..atomic import finish_folder, save_npz, save_png, start_folder, write_json
from ..config import config_to_dict, validate
from ..errors import GftError
from ..geometry.camera import Camera
from ..headmodel import HeadModel, HeadParams, load_head_model
from ..io.audio import SAMPLE_RATE, load_audio, save_wav
from ..io.meta import StageMeta, package_versions
from ..io.subject import Subject, SubjectWriter, read_params, train_test_split

__all__ = ["ExportVhapConfig", "ImportVhapConfig", "VhapSequence", "export_vhap", "import_vhap", "read_vhap"]

#: VHAP's FLAME parameter names -> this project's HeadParams fields
PARAM_NAMES = {"shape": "shape", "expr": "expression", "rotation": "rotation", "neck_pose": "neck",
               "jaw_pose": "jaw", "eyes_pose": "eyes", "translation": "translation"}
#: OpenGL <-> OpenCV camera axes (y and z flipped); its own inverse
GL_CV = np.diag([1.0, -1.0, -1.0, 1.0])
#: the canonical pose VHAP writes beside the frames: the jaw opened 0.3 rad
CANONICAL_JAW = 0.3


class VhapFormatError(GftError, ValueError):
    """A folder that is not (or not entirely) in VHAP's export layout."""


@dataclass
class VhapSequence:
    """One camera's frames of a VHAP export.

    Attributes:
        images, masks: (T,) image and mask paths in timestep order (a mask path is None when the mask is the image's
            alpha channel).
        params: T frames of FLAME parameters (float32).
        K: (3, 3) intrinsics in pixels; c2w_gl: (4, 4) camera-to-world, OpenGL axes; width, height: image size.
        offset_m: the largest static/dynamic per-vertex offset the files hold (metres; 0 when none).
    """

    root: Path
    images: list[Path]
    masks: list[Path | None]
    params: HeadParams
    K: np.ndarray
    c2w_gl: np.ndarray
    width: int
    height: int
    offset_m: float

    @property
    def n_frames(self) -> int:
        return len(self.images)

    def viewmat(self) -> np.ndarray:
        """(4, 4) world-to-camera in OpenCV axes (the project's convention)."""
        return np.linalg.inv(self.c2w_gl @ GL_CV)


def _npz_params(path: Path) -> tuple[dict[str, np.ndarray], float]:
    """One flame_param npz as HeadParams arrays with a batch of 1, and its largest per-vertex offset (metres)."""
    if not path.is_file():
        raise VhapFormatError(f"{path}: FLAME parameter file missing")
    with np.load(path) as z:
        missing = [k for k in PARAM_NAMES if k not in z.files]
        if missing:
            raise VhapFormatError(f"{path}: lacks {missing} (not a VHAP flame_param file)")
        out = {ours: np.asarray(z[theirs], dtype=np.float32).reshape(1, -1) for theirs, ours in PARAM_NAMES.items()}
        offset = max((float(np.abs(z[k]).max()) for k in ("static_offset", "dynamic_offset")
                      if k in z.files and z[k].size), default=0.0)
    for name, dim in (("rotation", 3), ("neck", 3), ("jaw", 3), ("eyes", 6), ("translation", 3)):
        if out[name].shape[1] != dim:
            raise VhapFormatError(f"{path}: {name} has {out[name].shape[1]} values, FLAME has {dim}")
    return out, offset


def read_vhap(folder: str | os.PathLike, camera_index: int | None = None) -> VhapSequence:
    """Read one camera of a VHAP export (``transforms.json`` and the files it names).

    Args:
        folder: the export folder; camera_index: which camera (needed only when there are several).
    Raises:
        VhapFormatError naming the file and the problem.
    """
    root = Path(folder)
    path = root / "transforms.json"
    if not path.is_file():
        raise VhapFormatError(f"{path}: missing: not a VHAP export folder")
    try:
        db = json.loads(path.read_text())
        frames = db["frames"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise VhapFormatError(f"{path}: not a VHAP transforms.json ({e})") from None
    cameras = sorted({int(f.get("camera_index", 0)) for f in frames})
    if not cameras:
        raise VhapFormatError(f"{path}: no frames")
    if camera_index is None:
        if len(cameras) > 1:
            raise VhapFormatError(f"{path}: {len(cameras)} cameras {cameras}: choose one with --camera-index")
        camera_index = cameras[0]
    elif camera_index not in cameras:
        raise VhapFormatError(f"{path}: no camera {camera_index} (cameras {cameras})")
    mine = sorted((f for f in frames if int(f.get("camera_index", 0)) == camera_index),
                  key=lambda f: int(f["timestep_index"]))
    steps = [int(f["timestep_index"]) for f in mine]
    if steps != list(range(len(steps))):
        raise VhapFormatError(f"{path}: camera {camera_index} has timesteps {steps[:5]}...: expected "
                              f"0..{len(steps) - 1}, each once")
    first = mine[0]
    try:
        K = np.array([[first["fl_x"], 0, first["cx"]], [0, first["fl_y"], first["cy"]], [0, 0, 1]], dtype=np.float64)
        c2w = np.asarray(first["transform_matrix"], dtype=np.float64)
        width, height = int(first["w"]), int(first["h"])
    except KeyError as e:
        raise VhapFormatError(f"{path}: frame 0 lacks {e}") from None
    if c2w.shape != (4, 4):
        raise VhapFormatError(f"{path}: transform_matrix must be 4x4, got {c2w.shape}")
    for f in mine[1:]:
        same = (np.allclose(f["transform_matrix"], c2w, atol=1e-6) and
                np.allclose([f["fl_x"], f["fl_y"], f["cx"], f["cy"], f["w"], f["h"]],
                            [K[0, 0], K[1, 1], K[0, 2], K[1, 2], width, height], atol=1e-6))
        if not same:
            raise VhapFormatError(f"{path}: timestep {f['timestep_index']} has another camera than timestep 0; a "
                                  "SUBJECT has one fixed camera (a monocular VHAP export)")
    images, masks, arrays, offset = [], [], [], 0.0
    for f in mine:
        if "flame_param_path" not in f:
            raise VhapFormatError(f"{path}: timestep {f['timestep_index']} names no flame_param_path (export VHAP's "
                                  "tracking with flame_mode 'param')")
        images.append(root / f["file_path"])
        masks.append(root / f["fg_mask_path"] if f.get("fg_mask_path") else None)
        a, off = _npz_params(root / f["flame_param_path"])
        arrays.append(a)
        offset = max(offset, off)
    stacked = {k: np.concatenate([a[k] for a in arrays]) for k in HeadParams.NAMES}
    if not np.allclose(stacked["shape"], stacked["shape"][:1], atol=1e-6):
        raise VhapFormatError(f"{root / 'flame_param'}: the timesteps have different shape parameters (one identity "
                              "expected)")
    return VhapSequence(root, images, masks, HeadParams.from_numpy(stacked), K, c2w, width, height, offset)


def _read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) uint8 RGB and its (H, W) uint8 alpha channel when the file has one."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise VhapFormatError(f"{path}: missing or unreadable image")
    if img.dtype != np.uint8:
        raise VhapFormatError(f"{path}: {img.dtype} image, expected 8-bit")
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=-1), None
    rgb = img[..., 2::-1].copy()
    return rgb, (img[..., 3].copy() if img.shape[2] == 4 else None)


def _read_mask(path: Path) -> np.ndarray:
    import cv2

    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise VhapFormatError(f"{path}: missing or unreadable mask")
    return m


def _square(img: np.ndarray, size: int, value: int | None) -> np.ndarray:
    """Pad (H, W[, C]) to (size, size[, C]) around the centre: with ``value``, or the edge pixels when None."""
    import cv2

    h, w = img.shape[:2]
    top, left = (size - h) // 2, (size - w) // 2
    border = cv2.BORDER_REPLICATE if value is None else cv2.BORDER_CONSTANT
    return cv2.copyMakeBorder(img, top, size - h - top, left, size - w - left, border, value=value or 0)


def _refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise FileExistsError(f"{out}: exists (--force replaces it)")


def _flame_format(model: HeadModel, what: str) -> None:
    missing = [p for p in ("rotation", "neck", "jaw", "eyes") if p not in model.pose_parts]
    if missing:
        raise ValueError(f"{what}: VHAP's layout holds FLAME parameters, but the {model.kind} head model has no "
                         f"{missing} joints (use a FLAME-format head model)")


@dataclass
class ImportVhapConfig:
    """Options of ``gft import-vhap``."""

    folder: Path = field(metadata={"help": "a VHAP export folder (transforms.json, images/, fg_masks/, flame_param/)"})
    out: Path = field(metadata={"help": "the SUBJECT folder to write"})
    head_model: str = field(metadata={
        "help": "the FLAME file the sequence was tracked with: flame:PATH (generic_model.pkl / flame2023.pkl, with its "
                "landmark embedding beside it)"})
    audio: Path | None = field(default=None, metadata={
        "help": "the sequence's sound (any audio or video file), for gft train-talk; VHAP exports have none"})
    fps: float = field(default=25.0, metadata={"help": "frame rate of the sequence (VHAP's files do not store it)"})
    camera_index: int | None = field(default=None, metadata={"help": "which camera, when the export has several"})
    force: bool = field(default=False, metadata={
        "help": "replace an existing SUBJECT at --out (with everything in it: its avatar, its talk model)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        validate(self)
        if not self.fps > 0:
            raise ValueError(f"--fps: must be positive, got {self.fps}")


def import_vhap(cfg: ImportVhapConfig) -> Path:
    """Write the VHAP export ``cfg.folder`` as a SUBJECT at ``cfg.out`` (frames, masks, params, camera, audio,
    meta.json); ``gft train-avatar`` and ``gft train-talk`` run on it. Non-square frames are padded to a square
    (edge pixels; the mask is 0 there). Returns the SUBJECT folder."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    _refuse_existing(Path(cfg.out), cfg.force)
    seq = read_vhap(cfg.folder, cfg.camera_index)
    model = load_head_model(cfg.head_model, n_shape=seq.params.shape.shape[1],
                            n_expression=seq.params.expression.shape[1])
    _flame_format(model, "--head-model")
    wave = None
    if cfg.audio is not None:
        wave = load_audio(cfg.audio)
        want = seq.n_frames / cfg.fps
        if abs(wave.size / SAMPLE_RATE - want) > max(0.5, 0.05 * want):
            raise ValueError(f"{cfg.audio}: {wave.size / SAMPLE_RATE:.2f} s of sound for {seq.n_frames} frames at "
                             f"{cfg.fps:g} fps ({want:.2f} s): not this sequence's sound, or another --fps")
    if seq.offset_m > 0:
        print(f"[gft] import-vhap: {cfg.folder}: per-vertex FLAME offsets up to {1000 * seq.offset_m:.1f} mm dropped "
              "(the head models here have none)", file=sys.stderr)
    size = max(seq.width, seq.height)
    pad_x, pad_y = (size - seq.width) // 2, (size - seq.height) // 2
    writer = SubjectWriter(cfg.out)
    for t in tqdm(range(seq.n_frames), desc="import-vhap", unit="frame", disable=not cfg.progress):
        rgb, alpha = _read_image(seq.images[t])
        mask = _read_mask(seq.masks[t]) if seq.masks[t] is not None else alpha
        if mask is None:
            raise VhapFormatError(f"{seq.images[t]}: no fg_mask_path and no alpha channel: a SUBJECT needs masks")
        if rgb.shape[:2] != (seq.height, seq.width) or mask.shape != (seq.height, seq.width):
            raise VhapFormatError(f"{seq.images[t]}: {rgb.shape[1]}x{rgb.shape[0]} image or mask, transforms.json says "
                                  f"{seq.width}x{seq.height}")
        writer.frame(t, _square(rgb, size, None))
        writer.mask(t, _square(mask, size, 0))
    K = seq.K.copy()
    K[0, 2] += pad_x
    K[1, 2] += pad_y
    writer.params(seq.params)
    writer.camera(Camera(torch.tensor(seq.viewmat(), dtype=torch.float32), torch.tensor(K, dtype=torch.float32),
                         size, size), cfg.fps)
    if wave is not None:
        save_wav(writer.path("audio.wav"), wave)
    outputs = ["frames/", "masks/", "params.npz", "camera.json"] + (["audio.wav"] if wave is not None else [])
    return writer.finish(StageMeta(
        stage="track", config=config_to_dict(cfg), versions=package_versions(),
        inputs={"vhap": {"path": str(Path(cfg.folder).resolve()), "width": seq.width, "height": seq.height,
                         "padded_to": size}, "audio": str(cfg.audio) if cfg.audio else None},
        outputs=outputs, timings={"total_s": time.perf_counter() - t0},
        figures={"dropped_offset_m": seq.offset_m},
        extra={"head_model": {"spec": cfg.head_model, "kind": model.kind, "n_shape": model.n_shape,
                              "n_expression": model.n_expression},
               "n_frames": seq.n_frames, "fps": cfg.fps, "resolution": size, "has_audio": wave is not None,
               "imported_from": "vhap"}))


@dataclass
class ExportVhapConfig:
    """Options of ``gft export-vhap``."""

    subject: Path = field(metadata={"help": "a SUBJECT tracked with a FLAME-format head model"})
    out: Path = field(metadata={"help": "the folder to write (VHAP's export layout)"})
    params: Path | None = field(default=None, metadata={
        "help": "head parameters to export (default the tracked SUBJECT/params.npz; e.g. SUBJECT/avatar/params.npz "
                "for the avatar's optimised ones)"})
    background: Literal["white", "keep"] = field(default="white", metadata={
        "help": "white: the frames composited over white by their masks, as VHAP exports them for GaussianAvatars; "
                "keep: the frames as they are"})
    force: bool = field(default=False, metadata={"help": "replace an existing folder at --out"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        validate(self)


def _frame_entry(t: int, camera: Camera, c2w_gl: np.ndarray) -> dict:
    fx, fy, cx, cy = (float(camera.K[0, 0]), float(camera.K[1, 1]), float(camera.K[0, 2]), float(camera.K[1, 2]))
    return {
        "timestep_index": t, "timestep_index_original": t, "timestep_id": f"{t:05d}", "camera_index": 0,
        "camera_id": "0", **_intrinsics(fx, fy, cx, cy, camera.width, camera.height),
        "transform_matrix": c2w_gl.tolist(), "file_path": f"images/{t:05d}_00.png",
        "fg_mask_path": f"fg_masks/{t:05d}_00.png", "flame_param_path": f"flame_param/{t:05d}.npz",
    }


def _intrinsics(fx: float, fy: float, cx: float, cy: float, w: int, h: int) -> dict:
    return {"cx": cx, "cy": cy, "fl_x": fx, "fl_y": fy, "h": h, "w": w,
            "camera_angle_x": 2 * math.atan(w / (2 * fx)), "camera_angle_y": 2 * math.atan(h / (2 * fy))}


def export_vhap(cfg: ExportVhapConfig) -> Path:
    """Write SUBJECT ``cfg.subject`` in VHAP's export layout at ``cfg.out`` (built under ``OUT.partial``, renamed when
    complete; an existing ``OUT`` is replaced). Returns ``cfg.out``."""
    from tqdm.auto import tqdm

    _refuse_existing(Path(cfg.out), cfg.force)
    subject = Subject.open(cfg.subject)
    model = subject.head_model()
    _flame_format(model, str(subject.root / "meta.json"))
    params = read_params(cfg.params) if cfg.params is not None else subject.params()
    if params.batch != subject.n_frames:
        raise ValueError(f"{cfg.params}: {params.batch} frames of parameters for a SUBJECT of {subject.n_frames}")
    camera = subject.camera(dtype=torch.float64)
    c2w_gl = np.linalg.inv(camera.viewmat.numpy()) @ GL_CV
    out = Path(cfg.out)
    work = start_folder(out)
    arrays = params.to_numpy()
    # GaussianAvatars reads static_offset from the first timestep unless told not to: zeros over the FLAME file's own
    # vertices (it pads them to its mesh with teeth)
    no_offset = np.zeros((1, getattr(model, "n_file_vertices", model.n_vertices), 3), dtype=np.float32)
    K = camera.K.numpy()
    if abs(K[0, 2] - camera.width / 2) > 0.5 or abs(K[1, 2] - camera.height / 2) > 0.5 or abs(K[0, 0] - K[1, 1]) > 1e-3:
        print(f"[gft] export-vhap: {subject.root / 'camera.json'}: principal point ({K[0, 2]:.1f}, {K[1, 2]:.1f}) or "
              f"fx != fy: GaussianAvatars reads only camera_angle_x and assumes a centred principal point",
              file=sys.stderr)
    frames = []
    for t in tqdm(range(subject.n_frames), desc="export-vhap", unit="frame", disable=not cfg.progress):
        entry = _frame_entry(t, camera, c2w_gl)
        rgb, mask = subject.frame(t), subject.mask(t)
        if rgb.shape[:2] != mask.shape:
            raise ValueError(f"{subject.root}: frame {t} and its mask differ in size")
        if cfg.background == "white":
            a = np.round(mask * 255).astype(np.float32)[..., None] / 255
            rgb = (a * rgb + (1 - a) * 255).astype(np.uint8)
        save_png(work / entry["file_path"], rgb)
        save_png(work / entry["fg_mask_path"], np.round(mask * 255).astype(np.uint8))
        save_npz(work / entry["flame_param_path"], shape=arrays["shape"][t], static_offset=no_offset,
                 **{theirs: arrays[ours][t:t + 1] for theirs, ours in PARAM_NAMES.items() if theirs != "shape"})
        frames.append(entry)
    zeros = {theirs: np.zeros_like(arrays[ours][:1]) for theirs, ours in PARAM_NAMES.items() if theirs != "shape"}
    zeros["jaw_pose"][0, 0] = CANONICAL_JAW
    save_npz(work / "canonical_flame_param.npz", shape=arrays["shape"][0], static_offset=no_offset, **zeros)
    shared = _intrinsics(float(camera.K[0, 0]), float(camera.K[1, 1]), float(camera.K[0, 2]), float(camera.K[1, 2]),
                         camera.width, camera.height)
    train, test = train_test_split(subject.n_frames, subject.fps)
    splits = {"": (frames, list(range(subject.n_frames)), [0]),
              "_train": ([frames[i] for i in train], train.tolist(), [0]),
              "_val": ([], train.tolist(), []),
              "_test": ([frames[i] for i in test], test.tolist(), [0])}
    for suffix, (entries, steps, cams) in splits.items():
        write_json(work / f"transforms{suffix}.json",
                   {"frames": entries, **shared, "timestep_indices": steps, "camera_indices": cams})
    return finish_folder(out)


def main_import(cfg: ImportVhapConfig) -> int:
    out = import_vhap(cfg)
    print(f"[gft] import-vhap: wrote SUBJECT {out} ({Subject.open(out).n_frames} frames)", file=sys.stderr)
    return 0


def main_export(cfg: ExportVhapConfig) -> int:
    out = export_vhap(cfg)
    print(f"[gft] export-vhap: wrote {out} (VHAP's export layout; GaussianAvatars reads it)", file=sys.stderr)
    return 0
