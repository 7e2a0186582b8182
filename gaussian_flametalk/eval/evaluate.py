"""``gft eval VIDEO [VIDEO ...] --out DIR``: stability, lip sync, image quality and mesh motion of talking-head videos.

For each video (read at its own frame rate):

- landmarks (mediapipe face mesh mapped to iBUG-68, with a progress bar); frames without a face are flagged and
  excluded from every landmark metric (``faces`` says which);
- stability exactly as :mod:`.stability` defines it (DESIGN.md "Evaluation"): the absolute score, and with
  ``--reference`` the reference-relative score, the raw terms of both, the keypoint trajectories
  (``NAME/trajectories.npz``), a spectrum plot and a trajectory plot (PNG);
- lip sync: the weight-free mouth-opening / speech-envelope correlation over +-``max_offset`` frames against the
  video's own sound or ``--audio``; the weight-free phonetic sync (:mod:`.phonetic_sync`: opening against the
  expected openness of the PocketSphinx phones over the same offsets, and open vowels vs p/b/m); SyncNet offset,
  minimum distance and confidence with ``--syncnet WEIGHTS``;
  mouth landmark distance (LMD) against the reference; with ``--reference``, the phonetic sync of the reference
  itself (``reference_phonetic``: its frames compared with the video, against its own sound from
  ``--reference-start`` on), the real footage's own score that a driven video's phonetic sync is read against;
- image quality against the reference (the same frames): PSNR, SSIM, and LPIPS with ``--lpips-weights DIR``;
- mesh motion with ``--params PRED.npz --tracked SUBJECT``: LVE, FDD, FFE against the subject's tracked parameters of
  the same frames (:mod:`.motion`).

The reference is read at the video's frame rate from ``--reference-start`` seconds on and both are cut to the common
length. A reference whose duration or frame rate differs from the video's by more than ``--max-mismatch`` (relative;
two frames of slack on the duration) is refused before anything is computed, with a message naming both files,
their lengths and frame rates. A metric that cannot be computed (no reference, no sound, no weights, different
framing, too few frames with a face) is reported as ``{"unavailable": why}``.

Outputs in DIR: ``metrics.json`` (config, versions, one entry per video; written last), per video ``NAME/``
(``trajectories.npz``, ``spectrum.png``, ``trajectory.png``), ``spectra.png`` comparing all videos, and
``summary.md``, the side-by-side table that is also printed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GftError
from ..config import config_to_dict, resolve_device, validate
from ..io.meta import package_versions
from ..io.audio import SAMPLE_RATE, AudioError, load_audio
from ..tracking.landmarks import ClipLandmarks, detect_clip, make_detector
from ..io.subject import Subject
from ..atomic import save_npz, write_json, write_text
from ..io.media import VideoInfo, iter_frames, probe_video
from .image import ImageQuality, WeightsUnavailableError, load_lpips
from .motion import load_motion, motion_frames, motion_metrics
from .report import (
    UNAVAILABLE,
    format_table,
    plot_spectra,
    plot_trajectories,
    summary_rows,
)
from .stability import StabilityTerms, stability_score, stability_terms

__all__ = ["EvalConfig", "ReferenceMismatchError", "align_reference", "evaluate", "main"]


@dataclass
class EvalConfig:
    """Options of ``gft eval``."""

    videos: tuple[Path, ...] = field(metadata={"help": "videos to evaluate"})
    out: Path = field(metadata={"help": "output folder (metrics.json, plots, summary.md)"})
    reference: Path | None = field(default=None, metadata={
        "help": "the real video of the same frames: reference-relative stability, LMD, PSNR/SSIM/LPIPS"})
    reference_start: float = field(default=0.0, metadata={"min": 0, 
        "help": "seconds into the reference where the videos' first frame is"})
    audio: Path | None = field(default=None, metadata={
        "help": "speech for lip sync (any audio or video file; default: each video's own sound)"})
    syncnet: Path | None = field(default=None, metadata={"help": "SyncNet weights file: adds LSE-D / LSE-C"})
    lpips_weights: Path | None = field(default=None, metadata={
        "help": "folder with torchvision's AlexNet weights (alexnet-owt-7be5be79.pth) and LPIPS v0.1 alex.pth"})
    params: tuple[Path, ...] = field(default=(), metadata={
        "help": "predicted parameters (drive / train-talk npz with expression, jaw), one per video: LVE, FDD, FFE"})
    tracked: Path | None = field(default=None, metadata={"help": "the SUBJECT whose tracked parameters --params "
                                                                 "are compared with"})
    params_start: int | None = field(default=None, metadata={"min": 0, 
        "help": "SUBJECT frame of the first predicted frame when the npz has no 'frames' (default: first test frame)"})
    cutoff_hz: float = field(default=5.0, metadata={"above": 0, "help": "stability: H_f counts the power above this frequency"})
    max_offset: int = field(default=15, metadata={"min": 0, "help": "lip sync: largest audio offset searched (frames)"})
    max_mismatch: float = field(default=0.1, metadata={"min": 0, 
        "help": "largest relative difference of duration and of frame rate between a video and the reference that is "
                "aligned (resampled, trimmed); more is refused"})
    detector: str = field(default="mediapipe", metadata={"help": "landmark detector: mediapipe or face-alignment"})
    device: str = field(default="auto", metadata={
        "help": "torch device: auto (CUDA when torch sees a GPU, else CPU), cpu, cuda, cuda:N"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        validate(self)
        self.device = resolve_device(self.device)


class ReferenceMismatchError(GftError, ValueError):
    """The reference is too far from a video in length or frame rate to be aligned."""


# ------------------------------------------------------------------------------------------------ reference

@dataclass(frozen=True)
class Alignment:
    """How the reference is read for one video: at ``fps`` (``resampled`` when that is not its own rate) from
    ``start`` seconds; the frames are resized to ``size`` (the video's, (w, h)) when ``resize``; ``framing``
    says why image metrics are impossible (different aspect ratio), else None."""

    fps: float
    resampled: bool
    start: float
    size: tuple[int, int]
    resize: bool
    framing: str | None

    def frames(self, reference: VideoInfo, native: bool = False) -> Iterator[np.ndarray]:
        """The reference's frames, uint8 (H, W, 3): at its own size when ``native``, else the video's."""
        frames = iter_frames(reference.path, fps=self.fps if self.resampled else None, start=self.start or None,
                             info=reference)
        if native or not self.resize:
            return frames
        return _resized(frames, self.size)


def _resized(frames: Iterator[np.ndarray], size: tuple[int, int]) -> Iterator[np.ndarray]:
    import cv2

    try:
        for f in frames:
            shrink = f.shape[1] > size[0]
            yield cv2.resize(f, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    finally:
        frames.close()


def align_reference(video: VideoInfo, reference: VideoInfo, start: float = 0.0, max_mismatch: float = 0.1
                    ) -> Alignment:
    """Plan the alignment of ``reference`` (from ``start`` s) with ``video``, or raise ReferenceMismatchError.

    Durations may differ by ``max_mismatch`` of the video's (at least two frames), frame rates by ``max_mismatch`` of
    the video's; the reference is then resampled to the video's rate and both are cut to the common length.
    """
    ref_duration = reference.duration - start
    slack = max(max_mismatch * video.duration, 2.0 / video.fps)
    problems = []
    if not (math.isfinite(ref_duration) and math.isfinite(video.duration)):
        problems.append("a duration is unknown")
    elif abs(ref_duration - video.duration) > slack:
        problems.append(f"their durations differ by {abs(ref_duration - video.duration):.2f} s (at most "
                        f"{slack:.2f} s is aligned)")
    if not abs(reference.fps - video.fps) <= max_mismatch * video.fps:
        problems.append(f"their frame rates differ by more than {100 * max_mismatch:.0f} %")
    if problems:
        from_start = f" from {start:g} s on" if start else ""
        raise ReferenceMismatchError(
            f"cannot compare {video.path} with the reference {reference.path}: the video is {video.duration:.2f} s at "
            f"{video.fps:g} fps ({video.n_frames} frames), the reference{from_start} {ref_duration:.2f} s at "
            f"{reference.fps:g} fps ({round(ref_duration * reference.fps)} frames); " + "; ".join(problems) +
            ". Cut the reference to the video's frames (or pass --reference-start), or raise --max-mismatch.")
    size = (video.width, video.height)
    ratio_v, ratio_r = video.width / video.height, reference.width / reference.height
    framing = None
    if abs(ratio_r - ratio_v) > 0.01 * ratio_v:
        framing = (f"the reference is {reference.width}x{reference.height}, the video {video.width}x{video.height}: "
                   "not the same framing")
    return Alignment(fps=video.fps, resampled=abs(reference.fps - video.fps) > 1e-3, start=float(start), size=size,
                     resize=(reference.width, reference.height) != size and framing is None, framing=framing)


# ------------------------------------------------------------------------------------------------ one video

def _unavailable(why: str) -> dict[str, str]:
    return {UNAVAILABLE: why}


def _stability_section(points: np.ndarray, found: np.ndarray, fps: float, cutoff_hz: float,
                       reference: tuple[np.ndarray, np.ndarray] | None
                       ) -> tuple[dict, StabilityTerms | None, StabilityTerms | None]:
    """(metrics section, the video's terms, the reference's terms) — terms None where not computable."""
    try:
        terms = stability_terms(points, fps, cutoff_hz, valid=found)
    except ValueError as e:
        return _unavailable(str(e)), None, None
    section: dict[str, Any] = {
        "score": stability_score(terms), "score_vs_reference": None, "terms": terms.summary(),
        "frames_used": int(terms.used.sum()), "excluded_frames": np.flatnonzero(~terms.used).tolist(),
    }
    ref_terms = None
    if reference is not None:
        try:
            ref_terms = stability_terms(reference[0], fps, cutoff_hz, valid=reference[1])
            section["score_vs_reference"] = stability_score(terms, ref_terms)
            section["reference_terms"] = ref_terms.summary()
            section["reference_score"] = stability_score(ref_terms)
        except ValueError as e:
            section["score_vs_reference"] = _unavailable(f"reference: {e}")
    return section, terms, ref_terms


def _lipsync_section(cfg: EvalConfig, video: VideoInfo, points: np.ndarray, found: np.ndarray,
                     reference: tuple[np.ndarray, np.ndarray] | None, reference_why: str | None,
                     syncnet_model: Any) -> dict:
    """Weight-free sync, SyncNet and LMD of one video; points (T, 68, 2) with NaN where ``found`` (T,) is False."""
    from .lipsync import envelope_sync, landmark_distance, mouth_opening, speech_envelope

    T, fps = len(points), video.fps
    source = cfg.audio if cfg.audio is not None else video.path
    section: dict[str, Any] = {"audio": str(source)}
    wave, why = None, None
    if cfg.audio is None and not video.has_audio:
        why = f"{video.path} has no sound track: pass --audio"
    elif not found.any():
        why = "no frame has a face"
    else:
        try:
            wave = load_audio(source)
        except AudioError as e:
            why = str(e)
    if wave is None:
        section["envelope"] = _unavailable(why)
    else:
        try:
            section["envelope"] = envelope_sync(mouth_opening(points), speech_envelope(wave, T, fps), fps,
                                                max_offset=cfg.max_offset)
        except ValueError as e:  # too few frames with a face
            section["envelope"] = _unavailable(str(e))
    section["phonetic"] = _unavailable(why) if wave is None else _phonetic_sync(points, wave, fps, cfg.max_offset)
    if cfg.syncnet is None:
        section["syncnet"] = _unavailable("no --syncnet weights given")
    elif wave is None:
        section["syncnet"] = _unavailable(why)
    else:
        section["syncnet"] = _syncnet(video, points, wave, syncnet_model, cfg)
    if reference is None:
        section["lmd"] = _unavailable(reference_why or "no --reference given")
    else:
        try:
            section["lmd"] = landmark_distance(points, reference[0])
        except ValueError as e:  # no frame with a face in both
            section["lmd"] = _unavailable(str(e))
    return section


def _phonetic_sync(points: np.ndarray, wave: np.ndarray, fps: float, max_offset: int) -> dict:
    """Phonetic sync (:mod:`.phonetic_sync`): mouth opening against the PocketSphinx phones of the speech."""
    try:
        from .lipsync import mouth_opening
        from .phonetic_sync import phonetic_sync_of_wave

        return phonetic_sync_of_wave(mouth_opening(points), wave, fps, max_offset)
    except ImportError as e:  # pocketsphinx missing
        return _unavailable(f"phonetic sync needs pocketsphinx (pip install 'pocketsphinx==5.1.1'): {e}")
    except ValueError as e:  # too few frames with a face
        return _unavailable(str(e))


def _reference_phonetic(ref: VideoInfo, start: float, reference: tuple[np.ndarray, np.ndarray], fps: float,
                        max_offset: int) -> dict:
    """Phonetic sync of the reference itself: its landmarks (T, 68, 2) of the frames compared with the video, read
    at the video's ``fps``, against its own sound from ``start`` s on (the real footage's own score)."""
    if not ref.has_audio:
        return _unavailable(f"the reference {ref.path} has no sound track")
    if not reference[1].any():
        return _unavailable("no reference frame has a face")
    try:
        wave = load_audio(ref.path)
    except AudioError as e:
        return _unavailable(f"reference: {e}")
    return _phonetic_sync(reference[0], wave[round(start * SAMPLE_RATE):], fps, max_offset)


def _syncnet(video: VideoInfo, points: np.ndarray, wave: np.ndarray, model: Any, cfg: EvalConfig) -> dict:
    """SyncNet scores of the video's first ``len(points)`` frames (SyncNet works at 25 fps: other rates are read
    resampled to 25 fps, each frame keeping the landmarks of the source frame nearest in time)."""
    from .syncnet import FPS, SyncNetError, syncnet_scores

    n = len(points)
    if abs(video.fps - FPS) > 1e-3:
        n25 = int(n * FPS / video.fps)
        points = points[np.minimum(np.round(np.arange(n25) * video.fps / FPS).astype(int), n - 1)]
    frames = itertools.islice(iter_frames(video.path, fps=FPS, info=video), len(points))  # streamed
    try:
        return syncnet_scores(frames, points, wave, FPS, model, cfg.device, max_offset=cfg.max_offset,
                              progress=cfg.progress)
    except SyncNetError as e:  # too short, no face
        return _unavailable(str(e))


def _name(path: Path, index: int, names: list[str]) -> str:
    name = path.stem
    return name if [Path(p).stem for p in names].count(name) == 1 else f"{index}_{name}"


def evaluate_video(cfg: EvalConfig, index: int, video: VideoInfo, detector, ref: VideoInfo | None,
                   ref_cache: dict[float, ClipLandmarks], lpips, lpips_why: str, syncnet_model
                   ) -> tuple[dict, StabilityTerms | None, StabilityTerms | None]:
    """(metrics entry, stability terms of the video and of its reference, None where not computable) of one video;
    writes its folder of trajectories and plots."""
    name = _name(video.path, index, [str(v) for v in cfg.videos])
    folder = Path(cfg.out) / name
    folder.mkdir(parents=True, exist_ok=True)
    entry: dict[str, Any] = {"name": name, "video": str(video.path), "fps": video.fps,
                             "size": [video.width, video.height]}
    align = align_reference(video, ref, cfg.reference_start, cfg.max_mismatch) if ref is not None else None
    ref_lm = None
    if align is not None:
        key = round(video.fps, 3)
        if key not in ref_cache:
            ref_cache[key] = detect_clip(align.frames(ref, native=True), detector, progress=cfg.progress,
                                         total=round((ref.duration - align.start) * video.fps),
                                         desc=f"landmarks {ref.path.name}")
        ref_lm = ref_cache[key]
    # one pass over the video: landmarks, and image quality against the reference frames
    frames: Iterator[np.ndarray] = iter_frames(video.path, fps=video.fps, info=video)
    quality = None
    if ref_lm is not None:
        frames = itertools.islice(frames, len(ref_lm))
        if align.framing is None:
            quality = ImageQuality(lpips, cfg.device)
            frames = _paired(frames, align.frames(ref), quality)
    total = video.n_frames if ref_lm is None else min(video.n_frames, len(ref_lm))
    lm = detect_clip(frames, detector, progress=cfg.progress, total=total, desc=f"landmarks {video.path.name}")
    T = len(lm)
    points, found = lm.points68.astype(np.float64), lm.found
    entry["frames"] = T
    entry["faces"] = {"frames_without_face": int((~found).sum()), "frames": np.flatnonzero(~found).tolist()}
    reference = reference_why = None
    if ref_lm is not None:
        scale = video.width / ref_lm.image_size[0] if align.framing is None else 1.0  # to the video's pixels
        reference = (ref_lm.points68[:T].astype(np.float64) * scale, ref_lm.found[:T])
        entry["alignment"] = {"reference": str(ref.path), "reference_fps": ref.fps, "start": align.start,
                              "resampled": align.resampled, "resized": align.resize, "video_frames": video.n_frames,
                              "common_frames": T, "reference_frames": len(ref_lm)}
        if align.framing is not None:
            reference_why = align.framing
    stab, terms, ref_terms = _stability_section(points, found, video.fps, cfg.cutoff_hz, reference)
    entry["stability"] = stab
    entry["lipsync"] = _lipsync_section(cfg, video, points, found, reference if reference_why is None else None,
                                        reference_why, syncnet_model)
    if reference is not None:  # the mouth opening is in inter-ocular distances: any framing will do
        entry["lipsync"]["reference_phonetic"] = _reference_phonetic(ref, align.start, reference, video.fps,
                                                                     cfg.max_offset)
    if quality is not None:
        entry["image"] = quality.summary()
        if lpips is None:
            entry["image"]["lpips"] = _unavailable(lpips_why)
    else:
        entry["image"] = _unavailable(reference_why or "no --reference given")
    if cfg.params:
        entry["motion"] = motion_metrics(cfg.params[index], cfg.tracked, cfg.params_start, cfg.device)
    else:
        entry["motion"] = _unavailable("no --params / --tracked given")
    arrays = {"points68": points, "found": found, "fps": np.asarray(video.fps)}
    if terms is not None:
        arrays.update(trajectories=terms.trajectories, motion=terms.motion, used=terms.used)
    if reference is not None:
        arrays.update(reference_points68=reference[0], reference_found=reference[1])
    if ref_terms is not None:
        arrays.update(reference_trajectories=ref_terms.trajectories, reference_motion=ref_terms.motion)
    if quality is not None:
        arrays.update({f"image_{k}": v for k, v in quality.per_frame().items()})
    files = {"trajectories": folder / "trajectories.npz"}
    save_npz(files["trajectories"], **arrays)
    if terms is not None:
        series = {name: terms, **({"reference": ref_terms} if ref_terms is not None else {})}
        files["spectrum"], files["trajectory_plot"] = folder / "spectrum.png", folder / "trajectory.png"
        plot_spectra(files["spectrum"], series, f"{name}: nose keypoint spectra")
        plot_trajectories(files["trajectory_plot"], series, f"{name}: nose keypoint trajectory")
    entry["files"] = {k: str(v) for k, v in files.items()}
    return entry, terms, ref_terms


def _paired(frames: Iterator[np.ndarray], reference: Iterator[np.ndarray], quality: ImageQuality
            ) -> Iterator[np.ndarray]:
    """The video's frames, scoring each against the reference frame beside it (stops at the shorter)."""
    try:
        for frame, ref in zip(frames, reference):
            quality.add(frame, ref)
            yield frame
    finally:
        reference.close()


# ------------------------------------------------------------------------------------------------ the stage

def _check_inputs(cfg: EvalConfig) -> tuple[list[VideoInfo], VideoInfo | None]:
    """Probe every input and check the options before any work: fails naming the file and the problem."""
    if not cfg.videos:
        raise ValueError("gft eval needs at least one video")
    videos = [probe_video(v) for v in cfg.videos]
    ref = probe_video(cfg.reference) if cfg.reference is not None else None
    if ref is not None:
        for v in videos:
            align_reference(v, ref, cfg.reference_start, cfg.max_mismatch)
    if cfg.audio is not None and not Path(cfg.audio).is_file():
        raise FileNotFoundError(f"{cfg.audio}: no such audio file")
    if cfg.params:
        if cfg.tracked is None:
            raise ValueError("--params needs --tracked SUBJECT (the tracked parameters to compare with)")
        if len(cfg.params) != len(videos):
            raise ValueError(f"--params gives {len(cfg.params)} files for {len(videos)} videos: give one per video")
        subject = Subject.open(cfg.tracked)
        model = subject.head_model()
        for p in cfg.params:  # readable, matching the head model, inside the subject's frames
            motion, frames = load_motion(p, model)
            motion_frames(len(motion), subject, frames, cfg.params_start, str(p))
    elif cfg.tracked is not None:
        raise ValueError("--tracked is only used with --params PRED.npz")
    return videos, ref


def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluation and write DIR; returns the metrics dict written to DIR/metrics.json."""
    videos, ref = _check_inputs(cfg)
    syncnet_model = None
    if cfg.syncnet is not None:
        from .syncnet import load_syncnet

        syncnet_model = load_syncnet(cfg.syncnet, cfg.device)  # fails early, saying where to get the weights
    lpips, lpips_why = None, ""
    if cfg.lpips_weights is None:
        lpips_why = ("no --lpips-weights DIR given (it needs torchvision's AlexNet alexnet-owt-7be5be79.pth and the "
                     "LPIPS v0.1 alex.pth)")
    else:
        try:
            lpips = load_lpips(cfg.lpips_weights, cfg.device)
        except WeightsUnavailableError as e:
            lpips_why = str(e)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # not finished until rewritten
    detector = make_detector(cfg.detector, **({} if cfg.detector.lower() == "mediapipe" else {"device": cfg.device}))
    ref_cache: dict[float, ClipLandmarks] = {}
    try:
        results = [evaluate_video(cfg, i, v, detector, ref, ref_cache, lpips, lpips_why, syncnet_model)
                   for i, v in enumerate(videos)]
    finally:
        detector.close()
    entries = [entry for entry, _, _ in results]
    series = {entry["name"]: terms for entry, terms, _ in results if terms is not None}
    refs = [ref_terms for _, _, ref_terms in results if ref_terms is not None]
    if len(series) > 1:
        plot_spectra(out / "spectra.png", {**series, **({"reference": refs[0]} if refs else {})},
                     "nose keypoint spectra")
    names = [e["name"] for e in entries]
    write_text(out / "summary.md", f"# gft eval\n\nreference: {cfg.reference or 'none'}\n\n"
                                   + format_table(names, summary_rows(entries), markdown=True))
    metrics = {"stage": "eval", "config": config_to_dict(cfg), "versions": package_versions("mediapipe"),
               "reference": str(cfg.reference) if cfg.reference else None, "videos": entries}
    write_json(out / "metrics.json", metrics)
    return metrics


def main(cfg: EvalConfig) -> int:
    metrics = evaluate(cfg)
    entries = metrics["videos"]
    print(format_table([e["name"] for e in entries], summary_rows(entries)), end="")
    print(f"wrote {Path(cfg.out) / 'metrics.json'} and {Path(cfg.out) / 'summary.md'}")
    return 0
