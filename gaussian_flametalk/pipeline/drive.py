"""``gft drive SUBJECT SPEECH --out out.mp4``: the trained avatar speaking any speech.

Expression and jaw come from the subject's FlameTalk (``SUBJECT/talk``); head pose (rotation, neck, eyes,
translation), identity and the eyes (blinks and the other eyelid and gaze components, :func:`~..headmodel.eye_components`,
where the head model names them) come from the avatar's optimised per-frame sequence (``SUBJECT/avatar/params.npz``), looped forward-backward
when the speech is longer than the video. Frame ``t`` is composited over source frame ``t`` of the same loop.

The video has ``ceil(duration * fps)`` frames; the speech is padded with silence to exactly that length, so picture
and sound end together. Beside ``out.mp4`` go ``out.npz`` (the head parameters of every frame, the FlameTalk motion
and the source frame of each output frame) and ``out.meta.json`` (config, inputs, versions, timings split into audio
model, mesh, render and encode, and the real-time factor).

Self-reenactment (``--self-reenact``, no SPEECH): the subject's own test-split audio drives the avatar with the
test frames' own head poses and backgrounds, and ``out.reference.mp4`` holds the real test frames with the same
sound, so ``gft eval out.mp4 --reference out.reference.mp4`` compares with the real footage frame by frame.

Size. Frames are rendered at the avatar's training resolution (``--resolution`` overrides). With ``--full-frame``
(the default when the SUBJECT was cut from a larger video: its meta.json names the source video and the crop box)
each rendered crop is pasted back into the original video frame (:class:`FullFrames`; the video is read at the
SUBJECT's frame rate, which is the source's own unless ``gft track --fps`` changed it, so frame ``i`` is the
SUBJECT's frame ``i``): resized to the crop box, and blended in only where the avatar changed the picture (its
alpha and the replaced head region, dilated and feathered) and never across a feathered band along the crop's
border, so the rest of the frame keeps its original pixels. The video then has the source's resolution; the
reference of ``--self-reenact`` is the original frames too.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..avatar.sequence import AvatarRenderer, pingpong
from ..config import config_to_dict, resolve_device, validate
from ..io.meta import StageMeta, package_versions, write_meta
from ..io.audio import SAMPLE_RATE, load_audio, save_wav
from ..headmodel.motion import motion_to_kwargs
from ..flametalk.inference import load_talk
from ..headmodel import HeadModel, HeadParams, eye_components
from ..atomic import ensure_writable, save_npz
from ..io.lock import stage_lock
from ..io.subject import Subject, read_params
from ..io.media import CropBox, iter_frames, write_video

__all__ = ["DriveConfig", "FullFrames", "drive", "drive_params", "main", "source_video"]


@dataclass
class DriveConfig:
    """Options of ``gft drive``."""

    subject: Path = field(metadata={"help": "SUBJECT folder with a trained avatar (SUBJECT/avatar) and FlameTalk "
                                            "(SUBJECT/talk)"})
    speech: Path | None = field(default=None, metadata={
        "help": "speech file (wav/flac/mp3/ogg/m4a/mp4..., any rate and channels); omit with --self-reenact"})
    out: Path = field(default=Path("drive.mp4"), metadata={"help": "output mp4 (out.npz and out.meta.json beside)"})
    self_reenact: bool = field(default=False, metadata={
        "help": "drive with the subject's own test-split audio and poses; also writes out.reference.mp4 (real frames)"})
    talk: Path | None = field(default=None, metadata={"help": "FlameTalk folder (default SUBJECT/talk)"})
    style_reference: Path | None = field(default=None, metadata={
        "help": "speaking style from this SUBJECT folder or motion npz (a FlameTalk trained with --ptalker)"})
    avatar: Path | None = field(default=None, metadata={"help": "avatar folder (default SUBJECT/avatar)"})
    mode: Literal["autoregressive", "parallel"] = field(default="autoregressive", metadata={
        "help": "FlameTalk inference: autoregressive (each frame fed back, as trained) or parallel (one pass)"})
    resolution: int | None = field(default=None, metadata={"min": 16, "help": "render size (default: the avatar's training "
                                                                    "resolution)"})
    full_frame: bool | None = field(default=None, metadata={
        "help": "paste the rendered crop back into the original video frames at their resolution (default: on when "
                "the SUBJECT was cropped from a larger video)"})
    device: str = field(default="auto", metadata={"help": "torch device: auto (CUDA when torch sees a GPU, else CPU), cpu, cuda, cuda:N"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        validate(self)
        self.device = resolve_device(self.device)


#: a generous bound of H.264's output size relative to raw RGB at the encoder settings of write_video (measured: 0.2 %
#: for v2's 1080x1920 full frames, 0.6 % for v1's 256 px crops), for the free-space check before rendering
ENCODED_BYTES_PER_RAW_BYTE = 0.02


def drive_params(sequence: HeadParams, motion: dict[str, torch.Tensor], source: np.ndarray,
                 model: HeadModel) -> HeadParams:
    """Head parameters of the driven frames.

    Args:
        sequence: the subject's optimised sequence (N frames).
        motion: FlameTalk output, ``expression`` (T, E) and ``jaw`` (T, 3).
        source: (T,) frame of ``sequence`` that gives each output frame its pose, identity and eyes.
    Returns:
        T frames: FlameTalk's expression (the eye components from the sequence) and jaw; everything else from the
        sequence.
    """
    idx = torch.as_tensor(source, dtype=torch.long)
    out = sequence[idx]
    expression = motion["expression"].to(out.expression).clone()
    eyes = eye_components(model)
    if eyes:
        expression[:, eyes] = out.expression[:, eyes]
    out.expression = expression
    if "jaw" in model.pose_parts:
        out.jaw = motion["jaw"].to(out.jaw)
    return out


def source_video(subject: Subject) -> tuple[Path, dict, CropBox] | None:
    """(path, video info dict, crop box) of the video the SUBJECT was cut from; None when unknown or gone.

    Reads ``inputs.video`` / ``inputs.crop`` of the SUBJECT's meta.json (also top-level ``video`` / ``crop``, where
    SUBJECTs written before the io redesign keep them)."""
    video = subject.video or subject.meta.get("video")
    crop = subject.crop
    if crop is None and isinstance(subject.meta.get("crop"), dict):
        crop = CropBox(**{k: int(subject.meta["crop"][k]) for k in ("x", "y", "size")})
    if not video or crop is None or not video.get("path"):
        return None
    path = Path(video["path"])
    if not path.is_absolute():
        path = (subject.root / path).resolve()
    return path, video, crop


def _cropped(video: dict, crop: CropBox) -> bool:
    """Whether the crop box is less than the whole frame."""
    return not (crop.x <= 0 and crop.y <= 0 and crop.x + crop.size >= int(video.get("width", 0))
                and crop.y + crop.size >= int(video.get("height", 0)))


class FullFrames:
    """The original video frames, decoded once on demand (kept JPEG-encoded in memory), and the paste of a rendered
    crop into them.

    Args:
        path: the source video; fps: the rate it is read at (the SUBJECT's); crop: the SUBJECT's crop box in source
        pixels; feather: width of the soft edges (source pixels; default 3 % of the crop size).
    """

    def __init__(self, path: Path, fps: float, crop: CropBox, feather: int | None = None) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the SUBJECT's source video is gone (needed for --full-frame; "
                                    "pass --no-full-frame for the cropped video)")
        self.path, self.fps, self.crop = path, fps, crop
        self.feather = max(2, round(0.03 * crop.size)) if feather is None else feather
        self._frames: list[bytes] = []
        self._reader = None
        self._lock = threading.Lock()
        self._edge = self._edge_weight()
        self.shape: tuple[int, int] | None = None

    def _edge_weight(self) -> np.ndarray:
        """(size, size) float32: 1 inside, falling to 0 over ``feather`` pixels along the crop's border."""
        n = self.crop.size
        d = np.minimum(np.arange(n) + 0.5, n - 0.5 - np.arange(n)).astype(np.float32)
        ramp = np.clip(d / self.feather, 0.0, 1.0)
        return np.minimum(ramp[:, None], ramp[None, :])

    def frame(self, i: int) -> np.ndarray:
        """Original frame ``i`` (H, W, 3) uint8 RGB."""
        import cv2

        with self._lock:  # one reader: frames may be asked for by several rendering threads
            if self._reader is None and not self._frames:
                self._reader = iter_frames(self.path, fps=self.fps)
            while len(self._frames) <= i:
                if self._reader is None:
                    raise IndexError(f"{self.path}: frame {i} asked for, the video has {len(self._frames)} at "
                                     f"{self.fps:g} fps")
                try:
                    rgb = next(self._reader)
                except StopIteration:
                    self._reader = None
                    continue
                self.shape = rgb.shape[:2]
                ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 97])
                self._frames.append(buf.tobytes())
            data = self._frames[i]
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].copy()

    def paste(self, rendered: np.ndarray, weight: np.ndarray, i: int) -> np.ndarray:
        """Original frame ``i`` with the rendered crop (s, s, 3) blended in by ``weight`` (s, s) (where the render
        differs from the source crop), dilated and feathered, and faded out along the crop border."""
        import cv2

        full = self.frame(i)
        c, f = self.crop, self.feather
        big = cv2.resize(rendered, (c.size, c.size), interpolation=cv2.INTER_CUBIC)
        w = cv2.resize(weight.astype(np.float32), (c.size, c.size), interpolation=cv2.INTER_LINEAR)
        w = cv2.dilate(w, np.ones((f, f), np.uint8))
        w = cv2.GaussianBlur(w, (0, 0), f / 2)
        w = np.clip(w, 0.0, 1.0) * self._edge
        h, wd = full.shape[:2]
        x0, y0, x1, y1 = max(c.x, 0), max(c.y, 0), min(c.x + c.size, wd), min(c.y + c.size, h)
        if x1 <= x0 or y1 <= y0:
            return full
        sub = (slice(y0 - c.y, y1 - c.y), slice(x0 - c.x, x1 - c.x))
        a = w[sub][..., None]
        region = full[y0:y1, x0:x1].astype(np.float32)
        full[y0:y1, x0:x1] = (region * (1 - a) + big[sub].astype(np.float32) * a).round().clip(0, 255).astype(np.uint8)
        return full


def _speech(cfg: DriveConfig, subject: Subject) -> tuple[np.ndarray, np.ndarray | None]:
    """(samples at 16 kHz, source frames or None). Self-reenactment: the test split's audio and its frames."""
    if cfg.self_reenact:
        if cfg.speech is not None:
            raise ValueError("--self-reenact uses the subject's own test-split audio: give no SPEECH")
        if subject.audio_path is None:
            raise FileNotFoundError(f"{subject.root}: no audio.wav, so there is no test-split speech to reenact")
        wave = load_audio(subject.audio_path)
        _, test = subject.split()
        spf = SAMPLE_RATE / subject.fps
        a, b = int(round(test[0] * spf)), int(round((test[-1] + 1) * spf))
        return wave[a:b], test
    if cfg.speech is None:
        raise ValueError("give a SPEECH file (or --self-reenact)")
    return load_audio(cfg.speech, allow_silent=True), None


def drive(cfg: DriveConfig) -> dict:
    """The stage: predict, pose, render, encode. Returns the meta dict (also written to ``out.meta.json``)."""
    t_start = time.perf_counter()
    subject = Subject.open(cfg.subject)
    avatar_dir = Path(cfg.avatar or subject.root / "avatar")
    talk_dir = Path(cfg.talk or subject.root / "talk")
    for what, folder, cmd in (("avatar", avatar_dir, "train-avatar"), ("FlameTalk", talk_dir, "train-talk")):
        if not (folder / "meta.json").is_file():
            raise FileNotFoundError(f"{folder}: no finished {what} (meta.json missing): run gft {cmd} {subject.root}")
    out = Path(cfg.out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"{out}: the output must be an .mp4 file")
    with stage_lock(out, "drive"):
        return _drive(cfg, subject, avatar_dir, talk_dir, out, t_start)


def _drive(cfg: DriveConfig, subject: Subject, avatar_dir: Path, talk_dir: Path, out: Path, t_start: float) -> dict:
    from tqdm.auto import tqdm

    wave, test_frames = _speech(cfg, subject)
    fps = subject.fps
    duration = wave.size / SAMPLE_RATE
    n_frames = max(1, math.ceil(duration * fps - 1e-9))
    padded = np.zeros(int(round(n_frames * SAMPLE_RATE / fps)), np.float32)
    padded[: min(wave.size, padded.size)] = wave[: padded.size]
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    talk = load_talk(talk_dir, subject.root, cfg.device, style_reference=cfg.style_reference)
    timings["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    motion = talk.predict(padded, cfg.mode)[:n_frames]
    timings["audio_model"] = time.perf_counter() - t0
    if len(motion) < n_frames:  # the encoder rounds the frame count; repeat the last frame
        motion = np.concatenate([motion, np.repeat(motion[-1:], n_frames - len(motion), 0)])
    model = talk.head
    kw = motion_to_kwargs(torch.from_numpy(motion), model)
    kw.setdefault("jaw", torch.zeros(n_frames, 3))
    sequence_path = avatar_dir / "params.npz"
    if not sequence_path.is_file():
        sequence_path = subject.root / "params.npz"
    sequence = read_params(sequence_path)
    if sequence.batch != subject.n_frames:
        raise ValueError(f"{sequence_path}: {sequence.batch} frames, the SUBJECT has {subject.n_frames}")
    source = test_frames[:n_frames] if test_frames is not None else pingpong(n_frames, subject.n_frames)
    if len(source) < n_frames:
        source = np.concatenate([source, np.full(n_frames - len(source), source[-1])])
    params = drive_params(sequence, kw, source, model)

    t0 = time.perf_counter()
    renderer = AvatarRenderer.load(subject, model, avatar_dir, cfg.resolution, cfg.device)
    timings["load"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        verts = model.to(renderer.device).forward_params(params.to(renderer.device))
    if verts.is_cuda:
        torch.cuda.synchronize()
    renderer.prepare_sources(source)
    timings["mesh"] = time.perf_counter() - t0

    stem = out.with_suffix("")
    meta_path = stem.with_name(f"{stem.name}.meta.json")

    found = source_video(subject)
    full_frame = cfg.full_frame if cfg.full_frame is not None else bool(found and _cropped(found[1], found[2]))
    if full_frame and found is None:
        raise ValueError(f"{subject.root / 'meta.json'}: names no source video and crop box, so --full-frame has "
                         "nothing to paste into (pass --no-full-frame)")
    full = FullFrames(found[0], fps, found[2]) if full_frame else None
    h, w = ((int(found[1].get("height", 0)), int(found[1].get("width", 0))) if full is not None
            else (renderer.resolution, renderer.resolution))
    copies = 2 if test_frames is not None else 1  # the self-reenactment's reference video beside it
    ensure_writable(out.parent, int(copies * n_frames * h * w * 3 * ENCODED_BYTES_PER_RAW_BYTE))
    # out.meta.json marks a finished drive: from the first write on, a run in progress (or one that fails) must not
    # leave an older run's meta beside the new video; the older video and npz stay until the new ones replace them
    meta_path.unlink(missing_ok=True)
    wav_tmp = stem.with_name(f".{stem.name}.speech.wav")
    save_wav(wav_tmp, padded)
    render_seconds = [0.0]

    def frames():
        made = renderer.frames(verts, source, full.paste if full is not None else None)
        with tqdm(total=n_frames, desc="drive", unit="frame", disable=not cfg.progress, dynamic_ncols=True) as bar:
            while True:
                t1 = time.perf_counter()  # the wait for the next frame: the frames are made in parallel workers
                img = next(made, None)
                render_seconds[0] += time.perf_counter() - t1
                if img is None:
                    return
                bar.update()
                yield img

    try:
        t0 = time.perf_counter()
        written = write_video(out, frames(), fps, wav_tmp)
        timings["render"] = render_seconds[0]
        timings["encode"] = time.perf_counter() - t0 - render_seconds[0]
        reference = None
        if test_frames is not None:
            import cv2

            size = (renderer.resolution, renderer.resolution)
            reference = stem.with_name(f"{stem.name}.reference.mp4")
            real = ((full.frame(int(i)) for i in source) if full is not None else
                    (cv2.resize(subject.frame(int(i)), size, interpolation=cv2.INTER_AREA) for i in source))
            write_video(reference, real, fps, wav_tmp)
    finally:
        wav_tmp.unlink(missing_ok=True)

    npz = stem.with_name(f"{stem.name}.npz")
    save_npz(npz, **params.to_numpy(), motion=motion, frames=source, fps=fps)
    model_seconds = timings["audio_model"] + timings["mesh"] + timings["render"] + timings["encode"]
    size = list(full.shape[::-1]) if full is not None and full.shape else [renderer.resolution] * 2
    meta = StageMeta(
        "drive", config_to_dict(cfg), package_versions(),
        inputs={"subject": str(subject.root),
                "speech": str(cfg.speech) if cfg.speech is not None else f"{subject.audio_path} (test split)"},
        outputs=[str(out), str(npz)] + ([str(reference)] if reference else []),
        timings={**timings, "total": time.perf_counter() - t_start},
        figures={"real_time_factor": duration / max(model_seconds, 1e-9), "speech_seconds": duration},
        extra={"self_reenact": cfg.self_reenact, "fps": fps, "frames": int(written), "resolution": renderer.resolution,
               "full_frame": full_frame, "frame_size": size, "device": str(renderer.device),
               "reference": str(reference) if reference else None},
    )
    return write_meta(meta_path, meta)


def main(cfg: DriveConfig) -> int:
    meta = drive(cfg)
    s, fig = meta["timings"], meta["figures"]
    w, h = meta["frame_size"]
    print(f"wrote {meta['outputs'][0]} ({meta['frames']} frames of {w}x{h}, {fig['speech_seconds']:.2f} s of speech)")
    if meta["reference"]:
        print(f"real test frames with the same sound: {meta['reference']}")
    print(f"audio model {s['audio_model']:.2f} s, mesh {s['mesh']:.2f} s, render {s['render']:.2f} s, "
          f"encode {s['encode']:.2f} s: {fig['real_time_factor']:.2f}x real time at {meta['resolution']} px "
          f"on {meta['device']}")
    return 0
