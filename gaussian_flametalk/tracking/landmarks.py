"""Face landmarks: a pluggable detector interface, the mediapipe and face-alignment detectors, per-clip results.

Every detector returns, per face, the 68 points of the iBUG-300W layout in pixel coordinates (x right, y down,
continuous: the image spans ``[0, W] x [0, H]``) — point 0 is the jaw point on the *subject's right* (image left
in a non-mirrored photo), 17-21 the subject's right brow, 27-30 the nose bridge, 31-35 the nose bottom, 36-41
the subject's right eye, 42-47 the left eye, 48-59 the outer and 60-67 the inner lip contour — plus, for
mediapipe, the dense 478-point mesh.

mediapipe 478 -> iBUG 68
------------------------
mediapipe's face mesh has no vertex at the iBUG points, so each iBUG point is one mesh vertex or the mean of two
(:data:`MEDIAPIPE_TO_IBUG68`). The table was chosen by looking at the numbered mesh on real frontal faces and
placing each iBUG point where the 300-W annotation puts it:

* jaw 0-16: vertices of mediapipe's face oval, from the subject's right at eye height (127) over the chin (152)
  to the left (356), picked so that the 17 points are spaced along the contour like iBUG's (about even in
  arc length: 127, 234, 93+132, 58, 172, 136, 149, 176, 152 and the mirror images). The oval is a fixed mesh
  contour, not the visible silhouette, so on a turned head the far-side jaw points are less reliable: their
  confidence is lowered (see below).
* brows 17-26: the upper brow contour (70, 63, 105, 66, 107 | 336, 296, 334, 293, 300), outer to inner.
* nose bridge 27-30: 168 (between the eyes), 197, 195+5, 4 (tip); nose bottom 31-35: 98, 97, 2 (subnasale),
  326, 327.
* eyes 36-47: corners 33/133 and 362/263; lids at a third and two thirds of the eye width: 160+159, 158+157
  (upper), 153, 144 (lower), mirrored on the left eye (385+384, 387+386, 373, 380).
* lips 48-67: corners 61/291 (outer), 78/308 (inner); Cupid's bow 37/267, midline 0/17 (outer) and 13/14
  (inner); 40+39, 269+270, 321+405, 91+181 between; inner 81, 311, 402, 178.

Confidence (per point, 0..1): mediapipe's legacy face mesh gives none, so it is geometric: 1 for the inner
points; the jaw points start at 0.8 and fall towards 0.2 on the side of the face that turns away from the
camera (estimated from where the nose tip sits between the two cheek-edge vertices 234 and 454). ``score`` is
1.0 for every face mediapipe returns (it has already passed its presence threshold and reports no score).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import GftError
from ..registry import Registry

__all__ = [
    "FACE_ALIGNMENT_FILES",
    "LANDMARK_DETECTORS",
    "MEDIAPIPE_TO_IBUG68",
    "ClipLandmarks",
    "DetectorUnavailableError",
    "FaceAlignmentDetector",
    "FaceDetection",
    "LandmarkDetector",
    "MediapipeDetector",
    "MultipleFacesError",
    "NoFaceError",
    "check_faces",
    "detect_clip",
    "interpolate_missing",
    "make_detector",
    "mediapipe_to_ibug68",
    "pick_face",
]


class NoFaceError(GftError, ValueError):
    """No face found in a clip (or image); the message names the source."""


class MultipleFacesError(GftError, ValueError):
    """Several faces in too many frames of a clip; the message names the source."""


class DetectorUnavailableError(GftError, RuntimeError):
    """A detector's package or model weights are missing; the message says what to get and where to put it."""


# ----------------------------------------------------------------------------------------------- mapping

#: For each iBUG-68 point, the mediapipe face-mesh vertices whose mean gives it (see the module docstring).
MEDIAPIPE_TO_IBUG68: tuple[tuple[int, ...], ...] = (
    # jaw 0-16, subject's right -> chin -> subject's left
    (127,), (234,), (93, 132), (58,), (172,), (136,), (149,), (176,), (152,),
    (400,), (378,), (365,), (397,), (288,), (323, 361), (454,), (356,),
    # brows 17-21 (right, outer -> inner), 22-26 (left, inner -> outer)
    (70,), (63,), (105,), (66,), (107,),
    (336,), (296,), (334,), (293,), (300,),
    # nose bridge 27-30, nose bottom 31-35
    (168,), (197,), (195, 5), (4,),
    (98,), (97,), (2,), (326,), (327,),
    # right eye 36-41: outer corner, upper outer, upper inner, inner corner, lower inner, lower outer
    (33,), (160, 159), (158, 157), (133,), (153,), (144,),
    # left eye 42-47: inner corner, upper inner, upper outer, outer corner, lower outer, lower inner
    (362,), (385, 384), (387, 386), (263,), (373,), (380,),
    # outer lips 48-59: right corner, upper lip to the left corner, lower lip back
    (61,), (40, 39), (37,), (0,), (267,), (269, 270), (291,), (321, 405), (314,), (17,), (84,), (91, 181),
    # inner lips 60-67
    (78,), (81,), (13,), (311,), (308,), (402,), (14,), (178,),
)

_MAP_MATRIX: np.ndarray | None = None


def _map_matrix() -> np.ndarray:
    """(68, 478) float32 averaging matrix of :data:`MEDIAPIPE_TO_IBUG68`."""
    global _MAP_MATRIX
    if _MAP_MATRIX is None:
        m = np.zeros((68, 478), np.float32)
        for i, idx in enumerate(MEDIAPIPE_TO_IBUG68):
            m[i, list(idx)] = 1.0 / len(idx)
        _MAP_MATRIX = m
    return _MAP_MATRIX


def mediapipe_to_ibug68(dense: np.ndarray) -> np.ndarray:
    """(..., 468 or 478, D) mediapipe mesh points -> (..., 68, D) iBUG-68 points (float32)."""
    d = np.asarray(dense, np.float32)
    m = _map_matrix()[:, : d.shape[-2]]
    return np.einsum("kn,...nd->...kd", m, d)


def _mediapipe_confidence(dense: np.ndarray) -> np.ndarray:
    """(478,3) mesh in pixels -> (68,) per-point confidence (geometric heuristic, module docstring)."""
    conf = np.ones(68, np.float32)
    right, left, nose = dense[234, :2], dense[454, :2], dense[4, :2]
    axis = left - right
    length = float(np.dot(axis, axis))
    if length <= 0:
        conf[:17] = 0.2
        return conf
    t = float(np.dot(nose - right, axis)) / length  # 0.5 when frontal; < 0.5: subject's right side turned away
    turn = np.clip(2.0 * (t - 0.5), -1.0, 1.0)  # < 0: right side far
    right_c = np.clip(0.8 - 1.2 * max(0.0, -turn), 0.2, 0.8)
    left_c = np.clip(0.8 - 1.2 * max(0.0, turn), 0.2, 0.8)
    conf[0:8] = right_c
    conf[9:17] = left_c
    conf[8] = 0.8
    return conf


# ----------------------------------------------------------------------------------------------- interface

@dataclass
class FaceDetection:
    """One face in one image.

    points68: (68,2) float32 pixel coords (x, y), iBUG-68 layout.
    dense: (N,3) float32 or None — mediapipe's 478 points: x, y in pixels, z in the same pixel scale
        (relative depth, smaller = nearer the camera, roughly zero at the face centre).
    confidence: (68,) float32 per-point confidence in 0..1.
    score: detection score in 0..1.
    bbox: (4,) float32 x0, y0, x1, y1 — the tight box of the 68 points.
    """

    points68: np.ndarray
    dense: np.ndarray | None
    confidence: np.ndarray
    score: float
    bbox: np.ndarray

    @property
    def center(self) -> np.ndarray:
        return 0.5 * (self.bbox[:2] + self.bbox[2:])

    @property
    def area(self) -> float:
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))


@runtime_checkable
class LandmarkDetector(Protocol):
    """What the tracker needs from a landmark detector."""

    name: str
    #: number of dense points it reports (0 when it reports none)
    n_dense: int

    def detect(self, frame: np.ndarray) -> list[FaceDetection]:
        """uint8 RGB (H,W,3) -> the faces in it, largest first (empty list when none)."""
        ...

    def reset(self) -> None:
        """Forget tracking state (call between clips, and before frames that are not consecutive)."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...


def _check_frame(frame: np.ndarray) -> np.ndarray:
    f = np.asarray(frame)
    if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB image (H,W,3), got {f.dtype} {f.shape}")
    return np.ascontiguousarray(f)


def _bbox(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points.min(0), points.max(0)]).astype(np.float32)


class MediapipeDetector:
    """mediapipe face mesh (legacy ``mediapipe.solutions`` API, models bundled in the wheel, offline).

    ``refine_landmarks=True`` gives the 478-point mesh (irises included). ``static_image_mode=False`` (default)
    tracks across consecutive video frames: the face detector runs only when a face is lost or fewer than
    ``max_num_faces`` faces are being tracked; call :meth:`reset` between clips. ``max_num_faces=2`` lets a
    second face be reported (to reject clips with several people); 1 is faster on video.
    """

    name = "mediapipe"
    n_dense = 478

    def __init__(self, static_image_mode: bool = False, max_num_faces: int = 2, refine_landmarks: bool = True,
                 min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5) -> None:
        try:
            import mediapipe as mp
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise DetectorUnavailableError(
                "the 'mediapipe' landmark detector needs the mediapipe package: pip install mediapipe==0.10.21") from e
        if not hasattr(mp, "solutions"):  # pragma: no cover
            raise DetectorUnavailableError("this mediapipe has no legacy 'solutions' API with bundled models; "
                                           "install mediapipe==0.10.21")
        self._mp = mp
        self.n_dense = 478 if refine_landmarks else 468
        self._kwargs = dict(static_image_mode=static_image_mode, max_num_faces=max_num_faces,
                            refine_landmarks=refine_landmarks, min_detection_confidence=min_detection_confidence,
                            min_tracking_confidence=min_tracking_confidence)
        self._mesh = None
        self._shape: tuple[int, int] | None = None

    def _model(self):
        if self._mesh is None:
            self._mesh = self._mp.solutions.face_mesh.FaceMesh(**self._kwargs)
        return self._mesh

    def detect(self, frame: np.ndarray) -> list[FaceDetection]:
        frame = _check_frame(frame)
        h, w = frame.shape[:2]
        if self._shape is not None and self._shape != (h, w):
            self.reset()  # tracking state is tied to one frame size
        self._shape = (h, w)
        result = self._model().process(frame)
        faces = []
        for lm in result.multi_face_landmarks or []:
            dense = np.array([(p.x, p.y, p.z) for p in lm.landmark], np.float32) * np.array([w, h, w], np.float32)
            pts = mediapipe_to_ibug68(dense[:, :2])
            faces.append(FaceDetection(points68=pts, dense=dense, confidence=_mediapipe_confidence(dense),
                                       score=1.0, bbox=_bbox(pts)))
        faces.sort(key=lambda f: -f.area)
        return faces

    def reset(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None
        self._shape = None

    def close(self) -> None:
        self.reset()

    def __enter__(self) -> MediapipeDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: files face-alignment (>= 1.3 with torch >= 1.7) fetches on first use into torch's hub cache
#: ``<torch.hub.get_dir()>/checkpoints``: the SFD face detector and the 2D FAN landmark network.
FACE_ALIGNMENT_FILES = {
    "s3fd-619a316812.pth": "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
    "2DFAN4-cd938726ad.zip": "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-cd938726ad.zip",
}


def _face_alignment_files(module) -> dict[str, str]:
    """File name -> URL of the weights the installed face-alignment will load (its own table when it has one)."""
    files = dict(FACE_ALIGNMENT_FILES)
    urls = getattr(getattr(module, "api", None), "default_model_urls", None)
    if isinstance(urls, dict) and isinstance(urls.get("2DFAN-4"), str):
        files = {k: v for k, v in files.items() if not k.startswith("2DFAN4")}
        files[urls["2DFAN-4"].rsplit("/", 1)[-1]] = urls["2DFAN-4"]
    return files


def _torch_hub_checkpoints() -> Path:
    try:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints"
    except Exception:  # pragma: no cover
        return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"


class FaceAlignmentDetector:
    """The optional face-alignment detector (2D FAN + SFD face detector; 68 iBUG points, no dense points).

    Nothing is downloaded unless ``allow_download=True``: the weights must already be in torch's hub cache,
    otherwise :class:`DetectorUnavailableError` names the files, their URLs and the folder to put them in.
    """

    name = "face-alignment"
    n_dense = 0

    def __init__(self, device: str = "cpu", allow_download: bool = False, face_detector: str = "sfd") -> None:
        try:
            import face_alignment
        except ImportError as e:
            raise DetectorUnavailableError(
                "the 'face-alignment' landmark detector needs the face-alignment package: "
                "pip install face-alignment (then its weights, see FACE_ALIGNMENT_FILES)") from e
        folder = _torch_hub_checkpoints()
        files = _face_alignment_files(face_alignment)
        missing = [n for n in files if not (folder / n).is_file()]
        if missing and not allow_download:
            lines = "; ".join(f"{files[n]} -> {folder / n}" for n in missing)
            raise DetectorUnavailableError(
                f"face-alignment weights not found in {folder}: download {lines} "
                "(or pass allow_download=True to let face-alignment fetch them)")
        lm_type = getattr(face_alignment.LandmarksType, "TWO_D", None) or face_alignment.LandmarksType._2D
        self._fa = face_alignment.FaceAlignment(lm_type, device=device, face_detector=face_detector)

    def detect(self, frame: np.ndarray) -> list[FaceDetection]:
        frame = _check_frame(frame)
        preds, scores, _ = self._fa.get_landmarks_from_image(frame, return_landmark_score=True, return_bboxes=True)
        faces = []
        for i, p in enumerate(preds or []):
            pts = np.asarray(p, np.float32)[:, :2]
            conf = np.clip(np.asarray(scores[i], np.float32).reshape(-1), 0.0, 1.0) if scores is not None \
                else np.ones(68, np.float32)
            faces.append(FaceDetection(points68=pts, dense=None, confidence=conf, score=float(conf.mean()),
                                       bbox=_bbox(pts)))
        faces.sort(key=lambda f: -f.area)
        return faces

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self._fa = None


LANDMARK_DETECTORS = Registry("landmark detector", "--detector")


def _importable(module: str, why_missing: str) -> tuple[bool | None, str]:
    import importlib.util

    return (True, f"{module} importable") if importlib.util.find_spec(module) else (None, why_missing)


@LANDMARK_DETECTORS.register("mediapipe", help="mediapipe face mesh (bundled model, offline)",
                             available=lambda: _importable("mediapipe", "pip install mediapipe==0.10.21"))
def _mediapipe(arg: str | None, **kwargs) -> LandmarkDetector:
    return MediapipeDetector(**kwargs)


@LANDMARK_DETECTORS.register("face-alignment", aliases=("fan", "face_alignment"),
                             help="face-alignment FAN (downloads its weights on first use)",
                             available=lambda: _importable("face_alignment", "pip install gaussian-flametalk[face-alignment]"))
def _face_alignment(arg: str | None, **kwargs) -> LandmarkDetector:
    return FaceAlignmentDetector(**kwargs)


def make_detector(name: str = "mediapipe", **kwargs) -> LandmarkDetector:
    """``"mediapipe"`` (default, offline) or ``"face-alignment"`` (optional package and weights):
    :data:`LANDMARK_DETECTORS`."""
    return LANDMARK_DETECTORS.build(name, **kwargs)


def pick_face(faces: Sequence[FaceDetection], previous: FaceDetection | None = None) -> FaceDetection | None:
    """The face to follow: the one whose box centre is nearest the previous frame's face, else the largest."""
    if not faces:
        return None
    if previous is None or len(faces) == 1:
        return faces[0]
    d = [float(np.linalg.norm(f.center - previous.center)) for f in faces]
    return faces[int(np.argmin(d))]


# ----------------------------------------------------------------------------------------------- clips

@dataclass
class ClipLandmarks:
    """Per-frame landmarks of a clip (T frames).

    points68: (T,68,2) float32 pixels (NaN where no face until :func:`interpolate_missing`);
    dense: (T,N,3) float32 or None; confidence: (T,68) float32 (0 where no face);
    found: (T,) bool — a face was detected in the frame; n_faces: (T,) int — faces in the frame;
    image_size: (width, height) of the frames the points refer to; detector: its name;
    seconds: time the detection took.
    """

    points68: np.ndarray
    dense: np.ndarray | None
    confidence: np.ndarray
    found: np.ndarray
    n_faces: np.ndarray
    image_size: tuple[int, int] = (0, 0)
    detector: str = ""
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.found.shape[0])

    def save(self, path: str | os.PathLike) -> None:
        """Write one .npz (temporary name, then rename)."""
        import json

        from ..atomic import save_npz

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = dict(points68=self.points68, confidence=self.confidence, found=self.found, n_faces=self.n_faces,
                      image_size=np.asarray(self.image_size, np.int64), detector=np.asarray(self.detector),
                      seconds=np.asarray(self.seconds), meta=np.asarray(json.dumps(self.meta)))
        if self.dense is not None:
            arrays["dense"] = self.dense
        save_npz(path, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ClipLandmarks:
        import json

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such landmark file")
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(points68=z["points68"], dense=z["dense"] if "dense" in z.files else None,
                           confidence=z["confidence"], found=z["found"].astype(bool), n_faces=z["n_faces"],
                           image_size=(int(z["image_size"][0]), int(z["image_size"][1])), detector=str(z["detector"]),
                           seconds=float(z["seconds"]), meta=json.loads(str(z["meta"])))
        except (KeyError, ValueError, OSError) as e:
            raise ValueError(f"{path}: not a landmark cache written by ClipLandmarks.save ({e})") from e


def detect_clip(frames: Iterable[np.ndarray], detector: LandmarkDetector, progress: bool = True,
                total: int | None = None, desc: str = "landmarks") -> ClipLandmarks:
    """Run ``detector`` over consecutive frames (uint8 (H,W,3), all the same size) -> :class:`ClipLandmarks`.

    When a frame shows several faces, the one nearest the previous frame's face (else the largest) is kept;
    ``n_faces`` records how many there were. The detector's tracking state is reset before and after.
    """
    from tqdm.auto import tqdm

    detector.reset()
    n_dense = int(getattr(detector, "n_dense", 0))
    pts, dense, conf, found, counts = [], [], [], [], []
    prev: FaceDetection | None = None
    size = (0, 0)
    t0 = time.perf_counter()
    for frame in tqdm(frames, total=total, desc=desc, unit="frame", disable=not progress):
        size = (int(frame.shape[1]), int(frame.shape[0]))
        faces = detector.detect(frame)
        counts.append(len(faces))
        face = pick_face(faces, prev)
        if face is None:
            pts.append(np.full((68, 2), np.nan, np.float32))
            conf.append(np.zeros(68, np.float32))
            found.append(False)
            if n_dense:
                dense.append(np.full((n_dense, 3), np.nan, np.float32))
            continue
        prev = face
        pts.append(face.points68.astype(np.float32))
        conf.append(face.confidence.astype(np.float32))
        found.append(True)
        if n_dense:
            d = face.dense if face.dense is not None else np.full((n_dense, 3), np.nan, np.float32)
            dense.append(d.astype(np.float32))
    detector.reset()
    T = len(found)
    return ClipLandmarks(points68=np.asarray(pts, np.float32).reshape(T, 68, 2),
                         dense=np.asarray(dense, np.float32).reshape(T, n_dense, 3) if n_dense else None,
                         confidence=np.asarray(conf, np.float32).reshape(T, 68),
                         found=np.asarray(found, bool), n_faces=np.asarray(counts, np.int64),
                         image_size=size, detector=getattr(detector, "name", type(detector).__name__),
                         seconds=time.perf_counter() - t0)


def check_faces(clip: ClipLandmarks, source_name: str | os.PathLike, max_multi_share: float = 0.1,
                min_found_share: float = 0.0) -> None:
    """Reject clips the tracker cannot handle: :class:`NoFaceError` when no frame has a face (or fewer than
    ``min_found_share`` of them), :class:`MultipleFacesError` when more than ``max_multi_share`` of the frames
    show two or more faces. Messages name ``source_name``.

    Takes a :class:`ClipLandmarks` or anything with the same ``found`` (T,) and ``n_faces`` (T,) arrays, such as
    the :class:`~gaussian_flametalk.tracking.crop.FaceScan` of the crop pass (to fail before the full pass).
    """
    found = np.asarray(clip.found, bool)
    n_faces = np.asarray(clip.n_faces)
    T = int(found.shape[0])
    n_found = int(found.sum())
    if T == 0:
        raise NoFaceError(f"{source_name}: no frames")
    if n_found == 0:
        raise NoFaceError(f"{source_name}: no face found in any of its {T} frames")
    if n_found < min_found_share * T:
        raise NoFaceError(f"{source_name}: a face was found in only {n_found} of {T} frames "
                          f"({100 * n_found / T:.0f} %, need {100 * min_found_share:.0f} %)")
    multi = int((n_faces >= 2).sum())
    if multi > max_multi_share * T:
        raise MultipleFacesError(f"{source_name}: {multi} of {T} frames ({100 * multi / T:.0f} %) show two or more "
                                 f"faces; the tracker needs a video of one person")


def _interp_series(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Fill rows where ``found`` is False by linear interpolation along axis 0 (edges: nearest). (T, ...)"""
    T = values.shape[0]
    idx = np.flatnonzero(found)
    missing = np.flatnonzero(~found)
    flat = values.reshape(T, -1).astype(np.float64)
    out = flat.copy()
    for j in range(flat.shape[1]):
        out[missing, j] = np.interp(missing, idx, flat[idx, j])
    return out.reshape(values.shape).astype(values.dtype)


def interpolate_missing(clip: ClipLandmarks, fill_confidence: float = 0.0) -> ClipLandmarks:
    """A copy of ``clip`` whose frames without a face get points (and dense points) linearly interpolated from
    the nearest frames with one (before the first / after the last found frame: copied from it).

    ``found`` keeps flagging those frames; their confidence is set to ``fill_confidence`` (0: a fitter gives
    them no landmark weight and lets its temporal terms carry them). Raises NoFaceError when no frame has a face.
    """
    found = clip.found.astype(bool)
    if not found.any():
        raise NoFaceError("cannot interpolate landmarks: no frame has a face")
    if found.all():
        return ClipLandmarks(**{**clip.__dict__, "points68": clip.points68.copy(),
                                "dense": None if clip.dense is None else clip.dense.copy(),
                                "confidence": clip.confidence.copy(), "meta": dict(clip.meta)})
    points = _interp_series(clip.points68, found)
    dense = _interp_series(clip.dense, found) if clip.dense is not None else None
    conf = clip.confidence.copy()
    conf[~found] = fill_confidence
    return ClipLandmarks(points68=points, dense=dense, confidence=conf, found=found.copy(), n_faces=clip.n_faces.copy(),
                         image_size=clip.image_size, detector=clip.detector, seconds=clip.seconds,
                         meta={**clip.meta, "interpolated_frames": int((~found).sum())})
