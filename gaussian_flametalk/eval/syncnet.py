"""SyncNet lip-sync scores (LSE-D, LSE-C) computed as the public SyncNet evaluation computes them.

The network is the public SyncNet of Chung & Zisserman ("Out of time: automated lip sync in the wild", ACCV
workshops 2016) whose weights file ``syncnet_v2.model`` (a PyTorch state dict of 13.6 M parameters) is published at
http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model; nothing is downloaded here: the user
passes the file (``load_syncnet``). Layer and parameter names follow that file (``netcnnaud.*``, ``netfcaud.*``,
``netcnnlip.*``, ``netfclip.*``), so it loads with ``load_state_dict(strict=True)``.

What the public evaluation does, and what is reproduced here
------------------------------------------------------------
* Audio: 16 kHz mono 16-bit PCM; 13 MFCC at 100 Hz with python_speech_features' ``mfcc`` defaults (25 ms
  rectangular windows, 10 ms step, 26 mel filters, 512-point FFT, pre-emphasis 0.97, lifter 22, the first
  coefficient replaced by the log frame energy), computed on the int16 sample values. Same here: the float wave
  is scaled to int16 and fed to the same function of the same package.
* Video: 25 fps; window i is frames i..i+4 (BGR, 0-255, not normalised) against MFCC frames 4i..4i+19
  (0.2 s); there are ``min(frames, floor(samples / 640)) - 5`` windows. Audio stream: (N, 1, 13, 20); lip stream:
  (N, 3, 5, 224, 224); both give (N, 1024) embeddings.
* Scoring (:func:`sync_offset_scores`): for every window and every shift j in -15..15 the Euclidean distance
  between the video embedding and the audio embedding j windows later (zero vectors past the ends, which the
  public code pads with and counts), averaged over windows; min_dist = the smallest mean distance (LSE-D),
  confidence = median over shifts - min_dist (LSE-C), offset = the shift of the minimum.
  **Sign**: here offset > 0 means the sound is late (as :func:`..lipsync.envelope_sync`); the public code
  prints the opposite sign (its "AV offset" = -offset).

Face crops (the one deliberate difference)
------------------------------------------
The public pipeline finds faces with its S3FD detector, median-filters the box centre and half size over 13
frames, pads the frame with grey (110), and cuts a square of side 2.8 half-sizes that starts at the box centre
minus one half-size and extends 1.8 half-sizes below it (horizontally +-1.4 half-sizes): the whole face with
extra room below the chin, resized to 224 x 224 (bilinear). The crops are whole faces, not lower halves. Here
the box comes from our iBUG-68 landmarks instead of S3FD: the tight box of the 68 points with its top raised by
``forehead`` (0.2) of its height, to reach up the forehead as a face detector's box does (S3FD's exact box is not
reproduced); the rest (median filter, padding, crop geometry, resize) is the same. The public pipeline also
passes frames through JPEG and an XVID-encoded crop video, which adds compression that is not reproduced. Frames
without a face get the box interpolated from the nearest frames with one (the public tracker interpolates over
missed detections too).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import GftError

__all__ = ["SyncNet", "SyncNetError", "face_crops", "load_syncnet", "mfcc_features", "sync_offset_scores",
           "syncnet_scores"]

SYNCNET_URL = "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"
FPS = 25.0
SAMPLE_RATE = 16000
#: the public pipeline's median filter over the face track (frames) and its shortest scored track (frames)
MEDIAN_FRAMES = 13
MIN_TRACK_FRAMES = 100
#: MFCC frames (100 Hz) per video frame (25 fps), and per 5-frame window
MFCC_PER_FRAME = 4
MFCC_WINDOW = 20
VIDEO_WINDOW = 5
CROP_SIZE = 224


class SyncNetError(GftError, ValueError):
    """A SyncNet weights file that cannot be used, or input SyncNet cannot score; the message says why."""


def _stack(layers: list[tuple]) -> nn.Sequential:
    """Build an nn.Sequential from ("conv2"|"conv3"|"bn2"|"bn3"|"bn1"|"fc"|"relu"|"pool2"|"pool3", *args, kwargs)."""
    make = {"conv2": nn.Conv2d, "conv3": nn.Conv3d, "bn1": nn.BatchNorm1d, "bn2": nn.BatchNorm2d,
            "bn3": nn.BatchNorm3d, "fc": nn.Linear, "relu": nn.ReLU, "pool2": nn.MaxPool2d, "pool3": nn.MaxPool3d}
    mods = []
    for kind, *args in layers:
        kwargs = args.pop() if args and isinstance(args[-1], dict) else {}
        mods.append(make[kind](*args, **kwargs))
    return nn.Sequential(*mods)


def _conv_bn_relu(kind: str, cin: int, cout: int, **kw) -> list[tuple]:
    return [(f"conv{kind}", cin, cout, kw), (f"bn{kind}", cout), ("relu",)]


class SyncNet(nn.Module):
    """The public SyncNet ("syncnet_v2.model"): an audio stream on MFCC windows and a lip stream on 5 stacked
    face crops, both ending in ``embed_dim``-dimensional embeddings compared by Euclidean distance.

    audio: (N, 1, 13, 20) MFCC windows -> (N, embed_dim);  video: (N, 3, 5, 224, 224) BGR 0-255 -> (N, embed_dim).
    """

    def __init__(self, embed_dim: int = 1024) -> None:
        super().__init__()
        k3 = {"kernel_size": 3, "padding": 1}
        self.netcnnaud = _stack([
            *_conv_bn_relu("2", 1, 64, **k3), ("pool2", 1, 1),
            *_conv_bn_relu("2", 64, 192, **k3), ("pool2", 3, {"stride": (1, 2)}),
            *_conv_bn_relu("2", 192, 384, **k3),
            *_conv_bn_relu("2", 384, 256, **k3),
            *_conv_bn_relu("2", 256, 256, **k3), ("pool2", 3, {"stride": 2}),
            *_conv_bn_relu("2", 256, 512, kernel_size=(5, 4)),
        ])
        self.netfcaud = self._head(embed_dim)
        self.netfclip = self._head(embed_dim)
        s122 = {"stride": (1, 2, 2)}
        k133 = {"kernel_size": (1, 3, 3), "padding": (0, 1, 1)}
        self.netcnnlip = _stack([
            *_conv_bn_relu("3", 3, 96, kernel_size=(5, 7, 7), **s122), ("pool3", (1, 3, 3), s122),
            *_conv_bn_relu("3", 96, 256, kernel_size=(1, 5, 5), padding=(0, 1, 1), **s122),
            ("pool3", (1, 3, 3), {"stride": (1, 2, 2), "padding": (0, 1, 1)}),
            *_conv_bn_relu("3", 256, 256, **k133),
            *_conv_bn_relu("3", 256, 256, **k133),
            *_conv_bn_relu("3", 256, 256, **k133), ("pool3", (1, 3, 3), s122),
            *_conv_bn_relu("3", 256, 512, kernel_size=(1, 6, 6)),
        ])

    @staticmethod
    def _head(embed_dim: int) -> nn.Sequential:
        return _stack([("fc", 512, 512), ("bn1", 512), ("relu",), ("fc", 512, embed_dim)])

    def forward_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(N, 1, 13, 20) -> (N, embed_dim)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_video(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 3, 5, 224, 224) -> (N, embed_dim)."""
        return self.netfclip(self.netcnnlip(crops).flatten(1))

    def forward(self, crops: torch.Tensor, mfcc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, 5, 224, 224), (N, 1, 13, 20) -> video and audio embeddings, (N, embed_dim) each."""
        return self.forward_video(crops), self.forward_audio(mfcc)


def load_syncnet(path: str | os.PathLike, device: str | torch.device = "cpu") -> SyncNet:
    """The SyncNet with the weights of ``path`` (the public ``syncnet_v2.model``), in eval mode on ``device``.

    Raises FileNotFoundError (saying where to get it) or :class:`SyncNetError` (not a SyncNet state dict).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SyncNet weights not found; download syncnet_v2.model from {SYNCNET_URL} "
                                "and pass its path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unpickling errors all mean: not a usable weights file
        raise SyncNetError(f"{path}: not a PyTorch weights file ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SyncNetError(f"{path}: not a state dict of tensors (got {type(state).__name__})")
    for prefix in ("module.", "__S__."):  # wrappers some redistributions saved with
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    fc = state.get("netfcaud.3.weight")
    model = SyncNet(embed_dim=int(fc.shape[0]) if fc is not None and fc.ndim == 2 else 1024)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise SyncNetError(f"{path}: not the public SyncNet (syncnet_v2.model) weights: "
                           f"{str(e).splitlines()[0]} {_key_diff(model, state)}") from e
    return model.to(device).eval()


def _key_diff(model: nn.Module, state: dict) -> str:
    want, got = set(model.state_dict()), set(state)
    missing = sorted(k for k in want - got if not k.endswith("num_batches_tracked"))
    unexpected = sorted(got - want)
    return f"(missing {len(missing)}: {missing[:4]}; unexpected {len(unexpected)}: {unexpected[:4]})"


def sync_offset_scores(video_emb: torch.Tensor, audio_emb: torch.Tensor, max_offset: int = 15) -> dict:
    """The public evaluation's scoring of per-window embeddings, (N, D) each (module docstring).

    Returns ``{"offset", "min_dist", "confidence", "dists", "offsets"}``: ``dists`` the mean distance per offset
    (list over ``offsets`` = -max_offset..max_offset); offset > 0 means the sound is late.
    """
    v = torch.as_tensor(video_emb).detach().float().cpu()
    a = torch.as_tensor(audio_emb).detach().float().cpu()
    if v.ndim != 2 or v.shape != a.shape or len(v) == 0:
        raise SyncNetError(f"need video and audio embeddings of the same shape (N >= 1, D), got "
                           f"{tuple(v.shape)} and {tuple(a.shape)}")
    width = 2 * max_offset + 1
    padded = torch.nn.functional.pad(a, (0, 0, max_offset, max_offset))  # (N + 2m, D), zeros at both ends
    shifted = padded.unfold(0, width, 1).permute(0, 2, 1)  # (N, width, D): audio windows i-m .. i+m
    dist = torch.nn.functional.pairwise_distance(v[:, None, :].expand_as(shifted), shifted)  # (N, width)
    mean = dist.mean(0)
    min_dist, idx = torch.min(mean, 0)
    conf = torch.median(mean) - min_dist
    return {"offset": int(idx) - max_offset, "min_dist": float(min_dist), "confidence": float(conf),
            "dists": mean.tolist(), "offsets": list(range(-max_offset, max_offset + 1))}


def mfcc_features(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(S,) float wave in [-1, 1] -> (13, M) MFCC at 100 Hz as the public evaluation computes them (on int16)."""
    try:
        from python_speech_features import mfcc
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("SyncNet scores need the MFCC of the python_speech_features package (the one the public "
                          "evaluation uses): pip install python_speech_features") from e
    pcm = np.clip(np.round(np.asarray(wave, np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    return np.asarray(mfcc(pcm, sample_rate), np.float64).T


def _box_track(points68: np.ndarray, forehead: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per-frame face box centre x, y and half size (T,) each, from iBUG-68 points (T, 68, 2), median-filtered
    over 13 frames as the public pipeline does (scipy's medfilt, zero-padded at the ends, whatever the clip length);
    frames without a face interpolated. Also the count of those."""
    from scipy.signal import medfilt

    pts = np.asarray(points68, np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (68, 2):
        raise SyncNetError(f"need (T, 68, 2) landmarks, got {pts.shape}")
    found = np.isfinite(pts).all(axis=(1, 2))
    if not found.any():
        raise SyncNetError("no frame has a face: SyncNet needs face crops")
    lo, hi = pts.min(1), pts.max(1)  # (T, 2)
    lo[:, 1] -= forehead * (hi[:, 1] - lo[:, 1])
    half = 0.5 * np.maximum(hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1])
    cx, cy = 0.5 * (lo[:, 0] + hi[:, 0]), 0.5 * (lo[:, 1] + hi[:, 1])
    t = np.arange(len(pts))
    series = [np.interp(t, t[found], s[found]) for s in (cx, cy, half)]
    # always, short clips too; scipy zero-pads the ends, which in a clip of under 7 frames leaves zeros at its ends:
    # there the unfiltered value stands
    cx, cy, half = (np.where(f > 0, f, r) for f, r in ((medfilt(r, kernel_size=MEDIAN_FRAMES), r) for r in series))
    return cx, cy, half, int((~found).sum())


def _cut(frame: np.ndarray, x0: int, y0: int, x1: int, y1: int, fill: int) -> np.ndarray:
    """frame[y0:y1, x0:x1] where parts outside the frame are ``fill``. (H, W, 3) -> (y1-y0, x1-x0, 3)."""
    h, w = frame.shape[:2]
    out = np.full((y1 - y0, x1 - x0, 3), fill, np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    return out


def face_crops(frames: np.ndarray | Iterable[np.ndarray], points68: np.ndarray, *, crop_scale: float = 0.4,
               forehead: float = 0.2, size: int = CROP_SIZE, progress: bool = False) -> tuple[np.ndarray, int]:
    """The public pipeline's face crops from our landmarks (module docstring).

    frames: uint8 RGB (H, W, 3) each (T of them, an array or an iterable); points68: (T, 68, 2) pixels.
    Returns (T', size, size, 3) uint8 RGB crops (T' = min(T, len(points68))) and the count of frames without a face.
    """
    import cv2
    from tqdm.auto import tqdm

    cx, cy, half, missing = _box_track(points68, forehead)
    crops = []
    for i, frame in enumerate(tqdm(frames, total=len(cx), desc="syncnet crops", unit="frame", disable=not progress)):
        if i >= len(cx):
            break
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise SyncNetError(f"frame {i}: expected uint8 RGB (H, W, 3), got {frame.dtype} {frame.shape}")
        bs, pad = half[i], int(half[i] * (1 + 2 * crop_scale))
        my, mx = cy[i] + pad, cx[i] + pad  # coordinates in the padded frame, as the public pipeline computes them
        y0, y1 = int(my - bs), int(my + bs * (1 + 2 * crop_scale))
        x0, x1 = int(mx - bs * (1 + crop_scale)), int(mx + bs * (1 + crop_scale))
        face = _cut(frame, x0 - pad, y0 - pad, x1 - pad, y1 - pad, fill=110)
        crops.append(cv2.resize(face, (size, size)))  # bilinear, OpenCV's default as in the public pipeline
    if not crops:
        raise SyncNetError("no frames to crop")
    return np.stack(crops), missing


def syncnet_scores(frames: np.ndarray | Iterable[np.ndarray], points68: np.ndarray, wave: np.ndarray, fps: float,
                   model: SyncNet, device: str | torch.device = "cpu", *, max_offset: int = 15,
                   batch_size: int = 20, sample_rate: int = SAMPLE_RATE, progress: bool = True) -> dict:
    """SyncNet offset, LSE-D (= min_dist) and LSE-C (= confidence) of a talking-head clip.

    frames: uint8 RGB (H, W, 3) at 25 fps (read with ``iter_frames(path, fps=25)``); points68: (T, 68, 2) their
    iBUG-68 landmarks (NaN where no face); wave: (S,) float mono at 16 kHz (``load_audio``).
    Returns :func:`sync_offset_scores`' dict plus ``lse_d``, ``lse_c``, ``windows`` and ``frames_without_face``.
    """
    from tqdm.auto import tqdm

    if abs(fps - FPS) > 1e-3:
        raise SyncNetError(f"SyncNet scores 25 fps video, got {fps:g} fps: read the frames with "
                           "iter_frames(path, fps=25) and detect the landmarks on those")
    if sample_rate != SAMPLE_RATE:
        raise SyncNetError(f"SyncNet needs 16 kHz audio, got {sample_rate} Hz: load it with load_audio(path)")
    wave = np.asarray(wave, np.float32).reshape(-1)
    hop = int(SAMPLE_RATE / FPS)
    n = min(len(points68), wave.size // hop) - VIDEO_WINDOW  # the public evaluation's window count
    if n < 1:
        raise SyncNetError(f"clip too short for SyncNet: {len(points68)} frames and {wave.size / SAMPLE_RATE:.2f} s "
                           f"of sound give {max(n, 0)} five-frame windows")
    crops, missing = face_crops(frames, points68, progress=progress)
    length = min(len(crops), wave.size // hop)
    n = length - VIDEO_WINDOW
    if n < 1:
        raise SyncNetError(f"clip too short for SyncNet: only {len(crops)} frames were read")
    mfcc = torch.from_numpy(mfcc_features(wave, sample_rate)).float()  # (13, M)
    video = torch.from_numpy(np.ascontiguousarray(crops[:length, :, :, ::-1]))  # RGB -> BGR, (T, H, W, 3) uint8
    model = model.to(device).eval()
    v_emb, a_emb = [], []
    with torch.no_grad():
        for start in tqdm(range(0, n, batch_size), desc="syncnet", unit="batch", disable=not progress):
            idx = range(start, min(n, start + batch_size))
            clips = torch.stack([video[i: i + VIDEO_WINDOW] for i in idx])  # (B, 5, H, W, 3)
            clips = clips.permute(0, 4, 1, 2, 3).float().to(device)  # (B, 3, 5, H, W), 0..255
            cc = torch.stack([mfcc[:, i * MFCC_PER_FRAME: i * MFCC_PER_FRAME + MFCC_WINDOW] for i in idx])
            v_emb.append(model.forward_video(clips).cpu())
            a_emb.append(model.forward_audio(cc[:, None].to(device)).cpu())
    out = sync_offset_scores(torch.cat(v_emb), torch.cat(a_emb), max_offset)
    out.update(lse_d=out["min_dist"], lse_c=out["confidence"], windows=n, frames_without_face=missing)
    if length < MIN_TRACK_FRAMES:
        out["warning"] = (f"{length} frames: shorter than the public pipeline's {MIN_TRACK_FRAMES}-frame minimum face "
                          "track, which would not score this clip; compare with care")
    return out

