"""The demo's built-in subject: a synthetic person talking, made offline from nothing but this package and espeak-ng.

``make_demo_subject`` writes a folder::

    DEMO/
      video.mp4         the talking head (h264, 25 fps) with its speech (AAC): what ``gft track`` reads
      speech.wav        that speech, 16 kHz mono 16-bit (the training sentences)
      drive_speech.wav  a different sentence, 16 kHz mono 16-bit, to drive the trained avatar with
      gt_params.npz     ground-truth per-frame head parameters (HeadParams fields, synthetic head) and landmarks2d
                        (T, 68, 2): the ground-truth iBUG landmarks projected to video pixels
      camera.json       the camera that rendered the video (same format as a SUBJECT's camera.json)
      meta.json         the stage meta schema (stage "demo-subject", config, versions, outputs, timings, figures),
                        settings, sentences

How it is made:

* speech: espeak-ng speaks built-in English sentences, one call each, joined with short pauses: the first ones whose
  total length comes closest to ``seconds`` (about 20 s, or 8 s for the quick subject); the drive sentence is another;
* motion from that speech, per 25 fps frame: the jaw opens with the smoothed loudness (RMS envelope in dB); the
  lips spread (smile, mouth_stretch) when the spectrum is bright (high spectral centroid: /i/, /s/) and round
  (pucker) when it is dark (/u/, /o/), in proportion to the loudness; the upper lip rises and the lower lip drops
  with the opening; brows rise on stressed stretches; a slow smile comes and goes; both eyes blink every 2 to 5 s;
  the head turns, nods and sways slowly (sums of sinusoids below 0.5 Hz) and nods a little with the speech;
* the identity: the synthetic head with random shape coefficients (``seed``);
* the look: ``demo_face.DemoFaceRenderer`` (a procedural face that mediapipe's face mesh detects).

``tracking_error`` compares a SUBJECT tracked from ``video.mp4`` with the ground truth.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import GftError
from ..config import config_to_dict, resolve_device, validate
from ..io.meta import StageMeta, package_versions, read_meta, write_meta
from ..io.audio import SAMPLE_RATE, load_audio, save_wav
from ..geometry.camera import Camera
from ..headmodel import HeadParams, make_synthetic_head
from ..headmodel.synthetic import EXPRESSION_NAMES
from ..headmodel import inter_ocular
from ..atomic import finish_folder, save_npz, start_folder
from ..io.subject import Subject, read_camera, save_camera
from ..io.media import write_video
from .face import DemoFaceRenderer

#: Sentences the subject speaks in its video (as many as fill ``seconds``, in this order).
TRAIN_SENTENCES = (
    "Hello, and welcome to the demo of gaussian flame talk.",
    "I am a synthetic person, made on this computer.",
    "We will track my face, learn an avatar from this video, and teach it how I move when I speak.",
    "Bright vowels like see and tea spread my lips, while round ones like blue and go make them pucker.",
    "A quiet pause closes the mouth, and loud open sounds drop the jaw.",
    "Please watch my eyes blink now and then, and my head sway gently as I talk.",
    "Thank you for listening, and enjoy the rest of the pipeline.",
)
#: The different sentence the trained avatar is driven with.
DRIVE_SENTENCE = "Now a new voice line drives my avatar: five wizards jump quickly over the sleepy brown dog."

PAUSE_S = 0.2  # silence between sentences, and before the first / after the last (espeak-ng adds some of its own)
FRAME_CHUNK = 25  # frames rendered per head-model batch


class EspeakMissingError(GftError, RuntimeError):
    """espeak-ng (the speech synthesizer the demo subject speaks with) is not installed."""


@dataclass
class DemoSubjectConfig:
    """Options of the demo subject."""

    out: Path = field(metadata={"help": "folder to write the demo subject to"})
    quick: bool = field(default=False, metadata={"help": "small and short: 256x256 px, about 8 s (default 512 px, about 20 s)"})
    seed: int = field(default=0, metadata={"help": "random seed of identity, head motion, blinks and skin pattern"})
    resolution: int | None = field(default=None, metadata={"min": 64, "help": "video side in pixels (default 512; 256 with --quick)"})
    seconds: float | None = field(default=None, metadata={"above": 0, "help": "length of the spoken video in seconds (default 20; 8 with --quick)"})
    fps: float = field(default=25.0, metadata={"above": 0, "help": "video frame rate"})
    supersample: int | None = field(default=None, metadata={"min": 1, "help": "render this many times larger and downsample (anti-aliasing; default 2 up to 320 px, else 1)"})
    voice: str = field(default="en-us", metadata={"help": "espeak-ng voice"})
    words_per_minute: int = field(default=155, metadata={"above": 0, "help": "espeak-ng speaking rate"})
    device: str = field(default="auto", metadata={
        "help": "torch device: auto (CUDA when torch sees a GPU, else CPU), cpu, cuda, cuda:N"})
    force: bool = field(default=False, metadata={"help": "rebuild the folder even when it is complete with the same settings"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        validate(self)
        self.device = resolve_device(self.device)

    @property
    def video_resolution(self) -> int:
        """The video's side in pixels: ``resolution``, or its default."""
        return self.resolution or (256 if self.quick else 512)

    @property
    def render_scale(self) -> int:
        return self.supersample or (2 if self.video_resolution <= 320 else 1)

    @property
    def target_seconds(self) -> float:
        return self.seconds or (8.0 if self.quick else 20.0)


def _log(msg: str) -> None:
    print(f"[gft demo-subject] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- speech

def espeak_exe() -> str:
    """Path of the espeak-ng program; raises EspeakMissingError saying how to install it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakMissingError(
            "the demo subject speaks with espeak-ng, which is not installed: install it with "
            "`sudo apt-get install espeak-ng` (Debian/Ubuntu; `bash setup.sh` does it when it can), "
            "`brew install espeak-ng` (macOS) or `dnf install espeak-ng` (Fedora), then run again")
    return exe


def espeak_version() -> str:
    out = subprocess.run([espeak_exe(), "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip().split("  ")[0]


def synthesize(text: str, voice: str = "en-us", words_per_minute: int = 155) -> np.ndarray:
    """Speak ``text`` with espeak-ng -> (S,) float32 at 16 kHz."""
    exe = espeak_exe()
    with tempfile.TemporaryDirectory(prefix="gft-espeak-") as tmp:
        path = Path(tmp) / "speech.wav"
        proc = subprocess.run([exe, "-v", voice, "-s", str(int(words_per_minute)), "-w", str(path), text],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not path.is_file():
            raise RuntimeError(f"espeak-ng failed on {text!r} with voice {voice!r}: {proc.stderr.strip()}")
        return load_audio(path)


def speak_sentences(sentences: list[str] | tuple[str, ...], seconds: float | None, voice: str, words_per_minute: int
                    ) -> tuple[np.ndarray, list[str]]:
    """Sentences spoken one after another with pauses: all of them (``seconds`` None), or the first ones whose total
    length comes closest to ``seconds`` (at least one).

    Returns the wave (S,) float32 at 16 kHz (with a pause before and after) and the sentences used.
    """
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), np.float32)
    parts, used = [pause], []
    total = len(pause)
    for sentence in sentences:
        wave_ = synthesize(sentence, voice, words_per_minute)
        longer = total + len(wave_) + len(pause)
        if seconds is not None and used and abs(longer - seconds * SAMPLE_RATE) >= abs(total - seconds * SAMPLE_RATE):
            break
        parts += [wave_, pause]
        total = longer
        used.append(sentence)
    return np.concatenate(parts), used


def fit_to_frames(wave_: np.ndarray, fps: float) -> tuple[np.ndarray, int]:
    """Pad the wave with silence to a whole number of video frames -> (wave, frame count)."""
    n_frames = int(math.ceil(len(wave_) / SAMPLE_RATE * fps))
    n = int(round(n_frames * SAMPLE_RATE / fps))
    return np.pad(wave_, (0, max(n - len(wave_), 0)))[:n], n_frames


# ----------------------------------------------------------------------------------------------- motion

def speech_features(wave_: np.ndarray, n_frames: int, fps: float) -> dict[str, np.ndarray]:
    """Per-frame features of 16 kHz speech, from a 40 ms Hann window centred on each frame's time i / fps.

    Returns (T,) arrays: ``loudness`` (RMS in dB mapped to 0 at 40 dB under the loud frames' level, 1 at it) and
    ``brightness`` (log spectral centroid, standardised over the loud frames; 0 where quiet).
    """
    win = int(0.04 * SAMPLE_RATE)
    padded = np.pad(wave_, (win, win))
    centres = (np.arange(n_frames) / fps * SAMPLE_RATE).astype(np.int64) + win
    idx = centres[:, None] + np.arange(win)[None] - win // 2
    frames = padded[idx] * np.hanning(win)[None].astype(np.float32)  # (T, win)
    rms_db = 20 * np.log10(np.sqrt((frames**2).mean(1)) + 1e-5)
    ref = np.percentile(rms_db, 95)
    loudness = np.clip((rms_db - (ref - 40.0)) / 40.0, 0.0, 1.0)
    spec = np.abs(np.fft.rfft(frames, n=1024, axis=1))
    freqs = np.fft.rfftfreq(1024, 1.0 / SAMPLE_RATE)
    centroid = (spec * freqs).sum(1) / (spec.sum(1) + 1e-9)
    log_c = np.log(centroid + 50.0)
    loud = loudness > 0.5
    mu, sd = (log_c[loud].mean(), log_c[loud].std() + 1e-6) if loud.sum() > 3 else (log_c.mean(), log_c.std() + 1e-6)
    brightness = np.where(loudness > 0.2, (log_c - mu) / sd, 0.0)
    return {"loudness": loudness, "brightness": brightness}


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a signal (T,) (sigma in frames; edges reflected)."""
    r = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return np.convolve(np.pad(x, r, mode="reflect"), k / k.sum(), mode="valid")


def _slow_wave(rng: np.random.Generator, n_frames: int, fps: float, amplitude: float, f_lo: float = 0.07,
               f_hi: float = 0.45, n: int = 3) -> np.ndarray:
    """A smooth random signal (T,): n sinusoids with frequencies in [f_lo, f_hi] Hz, peak about ``amplitude``."""
    t = np.arange(n_frames) / fps
    f = rng.uniform(f_lo, f_hi, n)
    a = rng.uniform(0.5, 1.0, n)
    sig = (a[:, None] * np.sin(2 * np.pi * f[:, None] * t[None] + rng.uniform(0, 2 * np.pi, n)[:, None])).sum(0)
    return amplitude * sig / a.sum()


def blink_track(rng: np.random.Generator, n_frames: int, fps: float) -> np.ndarray:
    """Blink coefficient per frame (T,): a 6-frame close-and-open every 2 to 5 s (1.9 = lids almost shut)."""
    shape = np.array([0.7, 1.6, 1.9, 1.4, 0.7, 0.25])
    out = np.zeros(n_frames)
    t = rng.uniform(0.8, 2.0)
    while True:
        i = int(round(t * fps))
        if i + len(shape) > n_frames:
            return out
        out[i : i + len(shape)] = shape
        t += rng.uniform(2.0, 5.0)


def speech_motion(wave_: np.ndarray, n_frames: int, fps: float, seed: int) -> HeadParams:
    """Ground-truth head parameters (T frames, float32) of the synthetic head driven by speech (S,) at 16 kHz (module
    docstring)."""
    rng = np.random.default_rng(seed)
    shape = rng.normal(0.0, 0.5, (1, 10))  # first, so the identity does not depend on the clip's length
    feats = speech_features(wave_, n_frames, fps)
    model_expr = {name: i for i, name in enumerate(EXPRESSION_NAMES)}
    T = n_frames
    open_ = _smooth(feats["loudness"] ** 1.3, 0.8)
    spread = _smooth(np.clip(feats["brightness"], 0, 2) / 2 * feats["loudness"], 1.0)
    round_ = _smooth(np.clip(-feats["brightness"], 0, 2) / 2 * feats["loudness"], 1.0)
    stress = _smooth(feats["loudness"], 6.0)
    stress = np.clip((stress - np.median(stress)) / (stress.max() - np.median(stress) + 1e-6), 0, 1)

    expr = np.zeros((T, len(EXPRESSION_NAMES)))
    mood = np.clip(_slow_wave(rng, T, fps, 0.5, 0.05, 0.2) + 0.15, 0, None)
    expr[:, model_expr["smile"]] = mood + 0.9 * spread
    expr[:, model_expr["mouth_stretch"]] = 0.8 * spread
    expr[:, model_expr["pucker"]] = 1.4 * round_
    expr[:, model_expr["upper_lip_raise"]] = 0.5 * open_
    expr[:, model_expr["lower_lip_down"]] = 0.5 * open_
    expr[:, model_expr["brow_raise"]] = 0.9 * stress + _slow_wave(rng, T, fps, 0.2, 0.1, 0.3)
    blinks = blink_track(rng, T, fps)
    expr[:, model_expr["blink_left"]] = blinks
    expr[:, model_expr["blink_right"]] = blinks

    jaw = np.zeros((T, 3))
    jaw[:, 0] = 0.01 + 0.17 * open_
    rotation = np.stack([
        _slow_wave(rng, T, fps, 0.06) + 0.03 * stress,  # pitch (nod), a little with the speech
        _slow_wave(rng, T, fps, 0.11),  # yaw
        _slow_wave(rng, T, fps, 0.04),  # roll
    ], 1)
    translation = np.stack([_slow_wave(rng, T, fps, 0.008), _slow_wave(rng, T, fps, 0.006),
                            _slow_wave(rng, T, fps, 0.01)], 1)
    arrays = {"shape": np.repeat(shape, T, 0), "expression": expr, "rotation": rotation, "neck": np.zeros((T, 3)),
              "jaw": jaw, "eyes": np.zeros((T, 6)), "translation": translation}
    return HeadParams.from_numpy(arrays, dtype=torch.float32)


def demo_camera(size: int, distance: float = 0.6, height: float = -0.025) -> Camera:
    """The demo's camera: ``distance`` metres in front of the head, at face height, focal 2 x image side."""
    return Camera.look_at((0.0, height, distance), (0.0, height, 0.0), 2.0 * size, size, size)


# ----------------------------------------------------------------------------------------------- the folder

def _settings(cfg: DemoSubjectConfig) -> dict:
    """What determines the folder's content (the config without run options)."""
    d = config_to_dict(cfg)
    for k in ("out", "force", "progress", "device"):
        d.pop(k)
    return d


def _result(out: Path, meta: dict) -> dict:
    return {
        "dir": out, "video": out / "video.mp4", "speech": out / "speech.wav", "drive_speech": out / "drive_speech.wav",
        "gt_params": out / "gt_params.npz", "camera": out / "camera.json", "meta": out / "meta.json",
        **meta["figures"], "sentences": meta["sentences"], "timings": meta["timings"],
    }


def make_demo_subject(cfg: DemoSubjectConfig) -> dict:
    """Build the demo subject folder (module docstring); a complete folder with the same settings is reused.

    Returns paths (dir, video, speech, drive_speech, gt_params, camera, meta), figures (frames, seconds,
    drive_seconds, resolution, fps, render_fps, jaw_open_max_rad, blinks, inter_ocular_px), sentences (train: list,
    drive) and timings in seconds.
    """
    out = Path(cfg.out)
    meta_path = out / "meta.json"
    if meta_path.is_file():
        meta = read_meta(meta_path)
        if meta.get("stage") != "demo-subject":
            raise FileExistsError(f"{out}: exists and is not a demo subject folder (its meta.json is from "
                                  f"{meta.get('stage')!r}); choose another --out")
        if meta.get("settings") == _settings(cfg) and not cfg.force:
            _log(f"{out} is already built with these settings (use --force to rebuild it)")
            return _result(out, meta)
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists, is not empty and is not a demo subject folder; choose another --out")
    if cfg.video_resolution < 64 or cfg.video_resolution % 2:
        raise ValueError(f"resolution must be an even number of pixels >= 64, got {cfg.video_resolution}")
    if cfg.target_seconds <= 0 or cfg.fps <= 0 or cfg.render_scale < 1:
        raise ValueError(f"seconds and fps must be positive and supersample >= 1, got {cfg.target_seconds}, {cfg.fps}, "
                         f"{cfg.render_scale}")
    espeak_exe()  # fail early, before any work

    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    work = start_folder(out)

    t0 = time.perf_counter()
    speech, used = speak_sentences(TRAIN_SENTENCES, cfg.target_seconds, cfg.voice, cfg.words_per_minute)
    speech, n_frames = fit_to_frames(speech, cfg.fps)
    drive, _ = speak_sentences([DRIVE_SENTENCE], None, cfg.voice, cfg.words_per_minute)
    save_wav(work / "speech.wav", speech)
    save_wav(work / "drive_speech.wav", drive)
    timings["speech_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    params = speech_motion(speech, n_frames, cfg.fps, cfg.seed)
    model = make_synthetic_head().to(torch.device(cfg.device))
    camera = demo_camera(cfg.video_resolution)
    with torch.no_grad():
        lmk = torch.cat([model.forward_landmarks(**params[s : s + FRAME_CHUNK].to(cfg.device).as_kwargs()).cpu()
                         for s in range(0, n_frames, FRAME_CHUNK)])
    landmarks2d = camera.project(lmk).numpy()
    timings["motion_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    renderer = DemoFaceRenderer(model, camera, supersample=cfg.render_scale, seed=cfg.seed, device=cfg.device)
    timings["appearance_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()

    def frames():
        for s in range(0, n_frames, FRAME_CHUNK):
            yield from renderer.render(params[s : s + FRAME_CHUNK])

    bar = tqdm(frames(), total=n_frames, desc="render demo subject", unit="frame", disable=not cfg.progress)
    write_video(work / "video.mp4", bar, cfg.fps, audio_wav=work / "speech.wav", preset="fast")
    timings["render_s"] = time.perf_counter() - t0

    save_npz(work / "gt_params.npz", **{k: v.astype(np.float32) for k, v in params.to_numpy().items()},
             landmarks2d=landmarks2d.astype(np.float32))
    save_camera(work / "camera.json", camera, cfg.fps)
    timings["total_s"] = time.perf_counter() - t_all
    blink = params.expression[:, EXPRESSION_NAMES.index("blink_left")].numpy()
    figures = {
        "frames": n_frames, "seconds": n_frames / cfg.fps, "drive_seconds": len(drive) / SAMPLE_RATE,
        "resolution": cfg.video_resolution, "fps": cfg.fps, "render_fps": n_frames / timings["render_s"],
        "jaw_open_max_rad": float(params.jaw[:, 0].max()),
        "blinks": int((np.diff((blink > 1.5).astype(int)) > 0).sum()),
        "inter_ocular_px": float(np.median(inter_ocular(landmarks2d))),
    }
    meta = write_meta(work / "meta.json", StageMeta(
        stage="demo-subject", config=config_to_dict(cfg),
        versions={**package_versions("mediapipe", "opencv-contrib-python", "imageio-ffmpeg"),
                  "espeak-ng": espeak_version()},
        outputs=["video.mp4", "speech.wav", "drive_speech.wav", "gt_params.npz", "camera.json"],
        timings=timings, figures=figures,
        extra={"settings": _settings(cfg), "head_model": "synthetic",
               "sentences": {"train": used, "drive": DRIVE_SENTENCE}}))
    finish_folder(out)
    side = cfg.video_resolution
    _log(f"wrote {out}: {n_frames} frames ({figures['seconds']:.1f} s) at {side}x{side} in {timings['total_s']:.1f} s")
    return _result(out, meta)


# ----------------------------------------------------------------------------------------------- evaluation

def tracking_error(subject_dir: str | os.PathLike, demo_dir: str | os.PathLike) -> dict:
    """How well ``gft track`` recovered the demo subject: 2D landmark error against the ground truth.

    Both landmark sets are brought into the SUBJECT's frame pixels (the tracker's fixed crop of the video, resized):
    the tracked fit's projected landmarks (``params.npz`` landmarks2d) and the ground-truth head's landmarks projected
    by the ground-truth camera, mapped through the crop. The baseline is the template: the ground-truth identity with
    zero expression, jaw, neck and eyes at the clip's mean rotation and translation (what a tracker that never moves
    the head or the face would score).

    Returns error_px, error_iod (mean over frames and the 68 points, in pixels and as a fraction of the median
    ground-truth distance between the outer eye corners), template_error_px, template_error_iod, inter_ocular_px
    and frames (compared; the shorter of the two clips).
    """
    subject = Subject.open(subject_dir)
    demo = Path(demo_dir)
    gt_path = demo / "gt_params.npz"
    if not gt_path.is_file():
        raise FileNotFoundError(f"{demo}: not a demo subject folder (no gt_params.npz)")
    with np.load(gt_path) as z:
        gt = HeadParams.from_numpy({k: z[k] for k in HeadParams.NAMES})
        gt_lmk = z["landmarks2d"]
    with np.load(subject.root / "params.npz") as z:
        fitted = z["landmarks2d"]
    camera, fps = read_camera(demo / "camera.json")
    if fps is None or abs(fps - subject.fps) > 1e-6:
        raise ValueError(f"{subject.root} was tracked at {subject.fps:g} fps, the demo subject {demo} is "
                         f"{format(fps, 'g') if fps is not None else 'of unknown'} fps")
    T = min(len(fitted), len(gt_lmk))
    if abs(len(fitted) - len(gt_lmk)) > 1:
        raise ValueError(f"{subject.root} has {len(fitted)} frames but the demo subject {demo} has {len(gt_lmk)}: "
                         "was it tracked from this demo's video.mp4?")
    model = make_synthetic_head()
    mean_pose = HeadParams(shape=gt.shape, expression=torch.zeros_like(gt.expression),
                           rotation=gt.rotation.mean(0, keepdim=True).expand_as(gt.rotation),
                           neck=torch.zeros_like(gt.neck), jaw=torch.zeros_like(gt.jaw), eyes=torch.zeros_like(gt.eyes),
                           translation=gt.translation.mean(0, keepdim=True).expand_as(gt.translation))
    with torch.no_grad():
        template = camera.project(model.forward_landmarks(**mean_pose[:T].as_kwargs())).numpy()
    crop = subject.crop
    size = int(subject.meta["resolution"])
    gt_c = crop.to_crop(gt_lmk[:T], size)
    template_c = crop.to_crop(template, size)
    iod = float(np.median(inter_ocular(gt_c)))
    err = float(np.linalg.norm(fitted[:T] - gt_c, axis=-1).mean())
    base = float(np.linalg.norm(template_c - gt_c, axis=-1).mean())
    return {"error_px": err, "error_iod": err / iod, "template_error_px": base, "template_error_iod": base / iod,
            "inter_ocular_px": iod, "frames": T}


def main(cfg: DemoSubjectConfig) -> int:
    make_demo_subject(cfg)
    return 0
