"""``gft track``: a talking-head video to a tracked SUBJECT folder (see ``subject.py`` for the layout).

Steps, each with progress: probe the video; scan it for faces at a low rate to choose ONE fixed square crop
for the whole clip (a per-frame crop alone makes wobble) and to reject clips with no face or several; extract
the sound (the video's own, or the file of ``--audio``, checked first) as 16 kHz mono; stream the cropped, resized
frames at the target fps once, saving each frame and its foreground mask and detecting its landmarks; line the sound
up with the detected lips (``--audio-offset``: by default estimated for an ``--audio`` file by the ``estimate_offset``
the caller gives, :mod:`..pipeline.track` for ``gft track``: the sync scores live in ``eval``, above this stage); fit
the head model to the landmarks (``fit.py``); draw the overlay video. Everything is written under
``SUBJECT.partial/`` and renamed to ``SUBJECT`` at the end; a re-run reuses a finished detection pass found there.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import config_to_dict, resolve_device, validate
from ..headmodel import HeadModel, inter_ocular, load_head_model
from ..atomic import partial_folder, write_json
from ..io.media import VideoError, VideoInfo, extract_audio, iter_frames, probe_video, write_video
from ..io.audio import SAMPLE_RATE, AudioError, load_audio, save_wav
from ..io.lock import stage_lock
from ..io.meta import StageMeta, package_versions
from ..io.subject import SubjectWriter
from .crop import find_crop
from .fit import FitConfig, LandmarkFit, fit_landmarks
from .landmarks import ClipLandmarks, check_faces, detect_clip, interpolate_missing, make_detector
from .masks import ForegroundSegmenter
from .overlay import draw_overlay, mesh_edges


@dataclass(kw_only=True)
class TrackConfig(FitConfig):
    """Options of ``gft track`` (the fitter's options included)."""

    video: Path = field(metadata={"help": "input video (mp4, mov, mkv, webm; h264, hevc, vp9)"})
    out: Path = field(metadata={"help": "SUBJECT folder to create"})
    audio: Path | None = field(default=None, metadata={
        "help": "the clip's sound from a separate file (any audio or video file ffmpeg reads), written as the "
                "SUBJECT's audio.wav in place of the video's own sound; its length must match the video's "
                "within 0.5 s"})
    audio_offset: str | None = field(default=None, metadata={
        "help": "how late the sound is against the lips, removed by shifting audio.wav at constant length (sample "
                "exact; silence fills the end or the start): auto (estimated from the tracked mouth opening and "
                "the speech, applied only beyond 45 ms and when the sync peak is clear), or seconds (> 0: the "
                "sound is late and is advanced; < 0: early; 0: as it is; at most 2). Default: auto with --audio, "
                "0 for the video's own sound"})
    head_model: str = field(default="ict", metadata={"help": "flame:PATH | ict:PATH | synthetic (flame/ict alone read GFT_FLAME/GFT_ICT)"})
    n_shape: int | None = field(default=None, metadata={"min": 0, "help": "identity components to fit (default: FLAME 300, all ICT modes)"})
    fps: float = field(default=25.0, metadata={"above": 0, "help": "frame rate to resample the video to"})
    resolution: int = field(default=512, metadata={"min": 64, "help": "side of the square output frames in pixels"})
    detector: Literal["mediapipe", "face-alignment"] = field(default="mediapipe", metadata={
        "help": "landmark detector (face-alignment downloads its weights on first use)"})
    device: str = field(default="auto", metadata={
        "help": "torch device: auto (CUDA when torch sees a GPU, else CPU), cpu, cuda, cuda:N"})
    mask_components: Literal["largest", "all"] = field(default="largest", metadata={
        "help": "person mask: keep only its largest connected region (drops background objects the segmenter "
                "takes for a person, e.g. a flag beside the head) or all of it"})
    overlay: bool = field(default=True, metadata={"help": "write overlay.mp4 (mesh and landmarks over the frames)"})
    force: bool = field(default=False, metadata={"help": "redo a SUBJECT folder that is already complete"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        validate(self)
        if self.audio_offset is not None:
            parse_audio_offset(self.audio_offset)
        self.device = resolve_device(self.device)


#: the largest ``--audio-offset`` in seconds (auto searches +-0.6 s; ``--audio`` lengths match within 0.5 s)
MAX_AUDIO_OFFSET_S = 2.0


def parse_audio_offset(value: str | float) -> float | None:
    """``--audio-offset``: None for ``auto``, else the seconds; ValueError naming the option for anything else."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--audio-offset: {value!r} is neither auto nor a number of seconds") from None
    if not abs(seconds) <= MAX_AUDIO_OFFSET_S:
        raise ValueError(f"--audio-offset: {value!r} is out of range (allowed: auto, or seconds within "
                         f"+-{MAX_AUDIO_OFFSET_S:g})")
    return seconds


def _log(msg: str) -> None:
    print(f"[gft track] {msg}", file=sys.stderr, flush=True)


def _detection_pass(cfg: TrackConfig, writer: SubjectWriter, crop, n_expected: int) -> ClipLandmarks:
    """Stream the cropped frames once: save frames and masks, detect landmarks. Returns the raw detections."""
    segmenter = ForegroundSegmenter(components=cfg.mask_components)

    def frames():
        for i, frame in enumerate(iter_frames(cfg.video, fps=cfg.fps, crop=crop, size=cfg.resolution)):
            writer.frame(i, frame)
            writer.mask(i, segmenter.segment(frame))
            yield frame

    detector = make_detector(cfg.detector, max_num_faces=2) if cfg.detector == "mediapipe" else make_detector(cfg.detector)
    try:
        return detect_clip(frames(), detector, progress=cfg.progress, total=n_expected, desc="frames, masks, landmarks")
    finally:
        detector.close()
        segmenter.close()


def _write_overlay(cfg: TrackConfig, writer: SubjectWriter, model: HeadModel, fit: LandmarkFit, clip: ClipLandmarks,
                   audio: Path | None) -> None:
    """overlay.mp4: the fitted mesh's front-facing wireframe (face and head regions) and both landmark sets."""
    from ..headmodel import vertex_normals

    regions = model.regions
    keep = torch.unique(torch.cat([regions["face"], regions["scalp"], regions["neck"]]))
    edges = mesh_edges(model.faces.cpu(), keep.cpu())
    p, cam = fit.params, fit.camera
    eye = cam.viewmat.inverse()[:3, 3]  # camera centre in world coordinates
    T = p.batch

    def frames():
        for start in range(0, T, 25):
            sl = slice(start, min(start + 25, T))
            with torch.no_grad():
                verts = model.forward_params(p[sl])
                normals = vertex_normals(verts, model.faces)
                visible = ((eye - verts) * normals).sum(-1) > 0
                v2d = cam.project(verts)
            for k, i in enumerate(range(sl.start, sl.stop)):
                det = clip.points68[i] if clip.found[i] else None
                yield draw_overlay(writer.read_frame(i), v2d[k].cpu().numpy(), visible[k].cpu().numpy(),
                                   edges, det, fit.landmarks2d[i].cpu().numpy())

    write_video(writer.path("overlay.mp4"), tqdm(frames(), total=T, desc="overlay", unit="frame", disable=not cfg.progress),
                cfg.fps, audio_wav=audio)


#: ``estimate_offset(points68, wave, fps) -> (shift_s, decision, estimate)``: how far to advance the sound (seconds,
#: > 0: it is late) for ``--audio-offset auto``, from the detected landmarks (T, 68, 2; NaN without a face) and the 16
#: kHz sound; ``decision`` says why, ``estimate`` (a JSON-able dict or None) goes to meta.json
OffsetEstimator = Callable[[np.ndarray, np.ndarray, float], tuple[float, str, "dict | None"]]


def _offset_spec(cfg: TrackConfig) -> str:
    """``--audio-offset`` as given, or its default: auto with ``--audio``, 0 for the video's own sound."""
    return cfg.audio_offset if cfg.audio_offset is not None else ("auto" if cfg.audio is not None else "0")


def track(cfg: TrackConfig, *, estimate_offset: OffsetEstimator | None = None) -> Path:
    """Run the tracking stage (one writer per SUBJECT: :func:`~gaussian_flametalk.io.lock.stage_lock`); returns the
    SUBJECT folder. ``--audio-offset auto`` (the default with ``--audio``) needs ``estimate_offset``
    (:func:`gaussian_flametalk.pipeline.track.track` passes eval's); without it a ValueError before any work."""
    if parse_audio_offset(_offset_spec(cfg)) is None and estimate_offset is None:
        raise ValueError("--audio-offset auto needs the sync estimate of gaussian_flametalk.eval: run gft track (or "
                         "gaussian_flametalk.pipeline.track.track), or give --audio-offset SECONDS (0: as it is)")
    out = Path(cfg.out)
    if (out / "meta.json").is_file() and not cfg.force:
        _log(f"{out} is already tracked (use --force to redo it)")
        return out
    t_all = time.perf_counter()
    # Fail early on bad input, before writing anything.
    info = probe_video(cfg.video)
    n_frames = info.duration * cfg.fps if math.isfinite(info.duration) else 0.0
    if not n_frames >= MIN_FRAMES:
        raise VideoError(f"{cfg.video}: {n_frames:.0f} frame(s) at {cfg.fps:g} fps; tracking needs a video of at least "
                         f"{MIN_FRAMES} frames (a still image or a one-frame clip is not a talking-head video)")
    wave = _separate_audio(cfg, info) if cfg.audio is not None else None
    model = load_head_model(cfg.head_model, n_shape=cfg.n_shape).to(torch.device(cfg.device))
    with stage_lock(out, "track"):
        return _track(cfg, out, info, model, t_all, wave, estimate_offset)


#: how far (seconds) the length of ``--audio`` may differ from the video's
AUDIO_LENGTH_TOLERANCE_S = 0.5


def _separate_audio(cfg: TrackConfig, info: VideoInfo) -> np.ndarray:
    """``--audio``: the file decoded to 16 kHz mono; AudioError (naming the file) when it cannot be read or its length
    differs from the video's by more than :data:`AUDIO_LENGTH_TOLERANCE_S`."""
    wave = load_audio(cfg.audio)
    seconds = wave.size / SAMPLE_RATE
    if math.isfinite(info.duration) and abs(seconds - info.duration) > AUDIO_LENGTH_TOLERANCE_S:
        raise AudioError(f"{cfg.audio}: {seconds:.2f} s of sound for a {info.duration:.2f} s video ({cfg.video}); "
                         f"--audio must be the clip's own sound (lengths within {AUDIO_LENGTH_TOLERANCE_S:g} s)")
    return wave


def _align_audio(cfg: TrackConfig, audio: Path, clip: ClipLandmarks, wave: np.ndarray | None,
                 estimate_offset: OffsetEstimator | None) -> dict:
    """``--audio-offset``: shift the written ``audio`` (the samples of ``--audio`` when given, else the file) so the
    sound lines up with the detected lips; returns what meta.json records (``applied_s`` / ``applied_samples``: the
    shift, > 0 advanced; for auto the estimate and why it was or was not applied)."""
    spec = _offset_spec(cfg)
    seconds = parse_audio_offset(spec)
    record: dict = {"requested": spec, "default": cfg.audio_offset is None}
    if wave is None and seconds != 0:
        wave = load_audio(audio, allow_silent=True)
    if seconds is None:
        points = np.where(clip.found[:, None, None], clip.points68, np.nan)
        seconds, why, estimate = estimate_offset(points, wave, cfg.fps)
        record.update(estimate=estimate, decision=why)
        _log(f"audio offset auto: {why}")
    samples = int(round(seconds * SAMPLE_RATE))
    if samples:
        save_wav(audio, shift_wave(wave, samples))
    record.update(applied_s=samples / SAMPLE_RATE, applied_samples=samples)
    if spec != "0":
        _log(f"audio offset applied: {1000 * samples / SAMPLE_RATE:+.1f} ms ({samples:+d} samples; "
             + ("the sound advanced)" if samples > 0 else "the sound delayed)" if samples < 0 else "the sound as it is)"))
    return record


def shift_wave(wave: np.ndarray, samples: int) -> np.ndarray:
    """The wave advanced by ``samples`` (> 0: a late sound made earlier; < 0: delayed) at the same length:
    ``out[i] = wave[i + samples]``, zeros where ``i + samples`` is outside."""
    x = np.asarray(wave)
    out = np.zeros_like(x)
    n = int(samples)
    if abs(n) < x.size:
        if n >= 0:
            out[: x.size - n] = x[n:]
        else:
            out[-n:] = x[: x.size + n]
    return out


#: the shortest clip ``gft track`` accepts, in frames at the target fps (its last 20 % are the avatar's test split)
MIN_FRAMES = 10


def _track(cfg: TrackConfig, out: Path, info: VideoInfo, model: HeadModel, t_all: float,
           wave: np.ndarray | None = None, estimate_offset: OffsetEstimator | None = None) -> Path:
    timings: dict[str, float] = {}
    work = partial_folder(out)
    settings = {"video": str(Path(cfg.video).resolve()), "fps": cfg.fps, "resolution": cfg.resolution, "detector": cfg.detector}
    settings_path = work / "detection.json"
    reuse = (work / "landmarks.npz").is_file() and settings_path.is_file() and json.loads(settings_path.read_text()) == settings
    writer = SubjectWriter(out, resume=reuse)
    sound = f"sound from {cfg.audio}" if wave is not None else ("with sound" if info.has_audio else "without sound")
    _log(f"{cfg.video}: {info.width}x{info.height}, {info.fps:.2f} fps, {info.duration:.1f} s, {sound}; "
         f"head model {model.kind} ({model.n_vertices} vertices)")

    t0 = time.perf_counter()
    detector = make_detector(cfg.detector, max_num_faces=2) if cfg.detector == "mediapipe" else make_detector(cfg.detector)
    try:
        crop, scan = find_crop(cfg.video, detector, progress=cfg.progress)
    finally:
        detector.close()
    check_faces(scan, cfg.video)
    timings["crop_scan_s"] = time.perf_counter() - t0
    _log(f"crop: x={crop.x} y={crop.y} size={crop.size} (source pixels) -> {cfg.resolution}x{cfg.resolution}")

    audio = writer.path("audio.wav")
    if wave is not None:  # --audio: the same 16 kHz mono 16-bit wav the video's own sound becomes
        save_wav(audio, wave)
        has_audio = True
    else:
        has_audio = extract_audio(cfg.video, audio) if info.has_audio else False

    t0 = time.perf_counter()
    if reuse:
        clip = ClipLandmarks.load(writer.path("landmarks.npz"))
        _log(f"reusing the finished detection pass in {writer.work}")
    else:
        clip = _detection_pass(cfg, writer, crop, int(round(info.duration * cfg.fps)))
        clip.save(writer.path("landmarks.npz"))
        write_json(settings_path, settings)
    timings["detect_s"] = time.perf_counter() - t0
    T = len(clip)
    check_faces(clip, cfg.video)
    audio_offset = _align_audio(cfg, audio, clip, wave, estimate_offset) if has_audio else None
    filled = interpolate_missing(clip)
    _log(f"{T} frames; face found in {int(clip.found.sum())} ({100 * clip.found.mean():.1f} %)")

    t0 = time.perf_counter()
    dt = torch.float32  # measured: float64 gives the same fit on real clips at twice the time
    model = model.to(dtype=dt)
    lmk = torch.as_tensor(np.nan_to_num(filled.points68), dtype=dt, device=cfg.device)
    conf = torch.as_tensor(filled.confidence * filled.found[:, None], dtype=dt, device=cfg.device)
    fit = fit_landmarks(model, lmk, conf, cfg.resolution, cfg.resolution, cfg, progress=cfg.progress)
    timings["fit_s"] = time.perf_counter() - t0
    iod = float(np.nanmedian(inter_ocular(clip.points68[clip.found])))
    err = fit.error_px[torch.isfinite(fit.error_px)]
    figures = {
        "frames": T, "face_found_share": float(clip.found.mean()),
        "focal_px": float(fit.camera.K[0, 0]),
        "reprojection_error_px": float(err.mean()), "reprojection_error_iod": float(err.mean()) / iod,
        "inter_ocular_px": iod,
    }
    _log(f"fit: focal {figures['focal_px']:.0f} px, mean landmark error {figures['reprojection_error_px']:.2f} px "
         f"({100 * figures['reprojection_error_iod']:.2f} % of the inter-ocular distance)")
    writer.params(fit.params, landmarks2d=fit.landmarks2d.cpu().numpy().astype(np.float32),
                  error_px=fit.error_px.cpu().numpy().astype(np.float32), focal=np.float32(fit.camera.K[0, 0]))
    writer.camera(fit.camera, cfg.fps)

    if cfg.overlay:
        t0 = time.perf_counter()
        _write_overlay(cfg, writer, model, fit, clip, audio if has_audio else None)
        timings["overlay_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all
    figures.update({f"{k[:-2]}_fps": T / v for k, v in timings.items() if k in ("detect_s", "fit_s", "overlay_s") and v > 0})
    settings_path.unlink(missing_ok=True)
    writer.finish(StageMeta(
        stage="track", config=config_to_dict(cfg),
        versions=package_versions("mediapipe", "opencv-contrib-python", "imageio-ffmpeg"),
        inputs={"video": {"path": str(Path(cfg.video).resolve()), "width": info.width, "height": info.height,
                          "fps": info.fps, "duration": info.duration, "has_audio": info.has_audio},
                "crop": crop.to_dict()}
        | ({"audio": {"path": str(Path(cfg.audio).resolve()), "duration": wave.size / SAMPLE_RATE}}
           if wave is not None else {}),
        outputs=["frames/", "masks/", "landmarks.npz", "params.npz", "camera.json"]
        + (["audio.wav"] if has_audio else []) + (["overlay.mp4"] if cfg.overlay else []),
        timings=timings, figures=figures,
        extra={"head_model": {"spec": cfg.head_model, "kind": model.kind, "n_shape": model.n_shape,
                              "n_expression": model.n_expression},
               "n_frames": T, "fps": cfg.fps, "resolution": cfg.resolution, "has_audio": has_audio}
        | ({"audio_offset": audio_offset} if audio_offset is not None else {})))
    _log(f"wrote {out} in {timings['total_s']:.0f} s")
    return out


def main(cfg: TrackConfig) -> int:
    """The stage alone (``--audio-offset auto`` refused: ``gft track`` runs :mod:`..pipeline.track`)."""
    track(cfg)
    return 0
