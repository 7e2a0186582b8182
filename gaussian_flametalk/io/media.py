"""Video and audio I/O through the ffmpeg binary that imageio-ffmpeg bundles (works offline, any common format).

Reading: :func:`probe_video` parses ``ffmpeg -i`` and :func:`iter_frames` streams RGB frames out of one ffmpeg
process whose filter graph does all the work (rotation from the container's display matrix, resampling to a
constant frame rate, a fixed square crop that may extend past the frame borders, resizing), so a long clip is
never held in memory. :func:`extract_audio` writes 16 kHz mono 16-bit PCM wav; :func:`write_video` encodes
h264/yuv420p mp4 with an optional AAC sound track. Outputs are written to a temporary name in the destination
folder and renamed when complete.

Errors: a path that does not exist raises :class:`FileNotFoundError`; a file ffmpeg cannot open as a video
(not a video, corrupt header, no video stream, missing index) raises :class:`VideoError` (a ``ValueError``)
naming the file and giving ffmpeg's reason.

Truncated files: an mp4 whose index comes first (``+faststart``) but whose data ends early opens fine and decodes
up to the cut without ffmpeg failing. :func:`iter_frames` counts the frames it delivered against the number the
container's duration promises; when ffmpeg reported read/decode errors and the clip came out short by more than
``max(2 frames, 2 %)``, it raises :class:`VideoError` once the frames it could decode have been yielded (so a
pipeline stops before it writes anything final). ``strict=False`` turns that into a logged warning.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GftError
from ..atomic import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "VideoError",
    "VideoInfo",
    "extract_audio",
    "ffmpeg_exe",
    "iter_frames",
    "output_size",
    "probe_video",
    "write_video",
]


class VideoError(GftError, ValueError):
    """A file that cannot be read or written as a video; the message names the file and ffmpeg's reason."""


@dataclass(frozen=True)
class CropBox:
    """A square box in source pixels (after rotation): columns ``x .. x+size``, rows ``y .. y+size``.

    It may extend past the frame borders (negative ``x``/``y`` or ``x + size > width``); the reader pads.
    """

    x: int
    y: int
    size: int

    def as_xyxy(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), exclusive right/bottom."""
        return self.x, self.y, self.x + self.size, self.y + self.size

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Whether each point (..., 2) in source pixels lies inside the box -> bool (...)."""
        p = np.asarray(points, dtype=np.float64)
        return ((p[..., 0] >= self.x) & (p[..., 0] <= self.x + self.size)
                & (p[..., 1] >= self.y) & (p[..., 1] <= self.y + self.size))

    def to_crop(self, points: np.ndarray, out_size: int | None = None) -> np.ndarray:
        """Source pixel coords (..., 2) -> coords in the cropped frame resized to ``out_size`` (default: no resize).

        Pixel centres map to pixel centres (continuous coordinates with the pixel (0,0) centred at 0.5).
        """
        s = (out_size or self.size) / self.size
        p = np.asarray(points, dtype=np.float64)
        out = np.empty_like(p)
        out[..., 0] = (p[..., 0] - self.x) * s
        out[..., 1] = (p[..., 1] - self.y) * s
        return out.astype(np.float32)

    def from_crop(self, points: np.ndarray, out_size: int | None = None) -> np.ndarray:
        """Inverse of :meth:`to_crop`: crop coords (..., 2) -> source pixel coords."""
        s = self.size / (out_size or self.size)
        p = np.asarray(points, dtype=np.float64)
        out = np.empty_like(p)
        out[..., 0] = p[..., 0] * s + self.x
        out[..., 1] = p[..., 1] * s + self.y
        return out.astype(np.float32)

    def to_dict(self) -> dict[str, int]:
        return {"x": int(self.x), "y": int(self.y), "size": int(self.size)}


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found out about a video file.

    ``width``/``height`` are the displayed size, i.e. after the rotation in the container's display matrix
    (which ffmpeg applies when decoding). ``n_frames`` is an estimate: ``round(duration * fps)``.
    """

    path: Path
    width: int
    height: int
    fps: float
    duration: float
    n_frames: int
    has_audio: bool
    video_codec: str
    audio_codec: str | None
    rotation: int = 0
    audio_sample_rate: int | None = None
    audio_channels: int | None = None


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (or named by ``IMAGEIO_FFMPEG_EXE``)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise VideoError(f"{path}: not a file")


def ffmpeg_reason(stderr: str, path: Path | None = None) -> str:
    """The most telling lines of an ffmpeg log: error lines, without the banner and the generic trailer."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    skip = ("At least one output file must be specified", "Error opening input files", "Error opening input file")
    keep = [ln for ln in lines if not ln.startswith(skip)]
    err = [ln for ln in keep if re.search(r"error|invalid|not found|corrupt|partial|no such|unsupported|failed|"
                                           r"could not|unable|cannot|missing|does not contain", ln, re.I)]
    chosen = err or keep[-3:]
    text = "; ".join(re.sub(r"^(\[[^\]]*\]\s*)+", "", ln) for ln in chosen[-4:])
    return text or "ffmpeg gave no reason"


# ----------------------------------------------------------------------------------------------- probing

_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM_RE = re.compile(r"Stream #\d+:\d+[^:]*:\s*(Video|Audio):\s*([^\s,]+)(.*)")
_SIZE_RE = re.compile(r",\s*(\d{2,5})x(\d{2,5})[\s,]")
_FPS_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(k?)\s*fps")
_TBR_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(k?)\s*tbr")
_ROT_RE = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees")
_RATE_RE = re.compile(r"(\d+) Hz")


def _num(value: str, kilo: str) -> float:
    return float(value) * (1000.0 if kilo else 1.0)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read the container and stream headers of ``path`` with the bundled ffmpeg (fast: nothing is decoded).

    Raises FileNotFoundError when ``path`` does not exist and :class:`VideoError` when ffmpeg cannot open it
    or it has no video stream.
    """
    path = Path(path)
    _check_exists(path)
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                          capture_output=True, text=True, errors="replace")
    err = proc.stderr
    if "Input #0" not in err:
        raise VideoError(f"{path}: not a readable video file ({ffmpeg_reason(err)})")
    # only the input section (the trailer complains about the missing output)
    video_line = audio_line = None
    rotation = 0
    in_video = False
    for line in err.splitlines():
        m = _STREAM_RE.search(line)
        if m:
            in_video = False
            if m.group(1) == "Video" and video_line is None and "attached pic" not in line:
                video_line, in_video = m, True
            elif m.group(1) == "Audio" and audio_line is None:
                audio_line = m
            continue
        r = _ROT_RE.search(line)
        if r and in_video:
            rotation = int(round(float(r.group(1)))) % 360
    if video_line is None:
        raise VideoError(f"{path}: no video stream ({ffmpeg_reason(err)})")
    rest = video_line.group(3) + " "
    size = _SIZE_RE.search(rest)
    if not size:
        raise VideoError(f"{path}: could not read the frame size of the video stream ({video_line.group(0).strip()})")
    w, h = int(size.group(1)), int(size.group(2))
    if rotation in (90, 270):
        w, h = h, w
    fps_m = _FPS_RE.search(rest) or _TBR_RE.search(rest)
    fps = _num(fps_m.group(1), fps_m.group(2)) if fps_m else float("nan")
    dur_m = _DURATION_RE.search(err)
    duration = (int(dur_m.group(1)) * 3600 + int(dur_m.group(2)) * 60 + float(dur_m.group(3))) if dur_m else float("nan")
    if not (math.isfinite(duration) and duration > 0):
        log.warning("%s: the container gives no duration", path)
    n_frames = int(round(duration * fps)) if math.isfinite(duration) and math.isfinite(fps) else 0
    audio_codec = audio_rate = audio_channels = None
    if audio_line is not None:
        audio_codec = audio_line.group(2)
        rate = _RATE_RE.search(audio_line.group(3))
        audio_rate = int(rate.group(1)) if rate else None
        a_rest = audio_line.group(3)
        audio_channels = 1 if " mono" in a_rest else 2 if "stereo" in a_rest else None
    return VideoInfo(path=path, width=w, height=h, fps=fps, duration=duration, n_frames=n_frames,
                     has_audio=audio_line is not None, video_codec=video_line.group(2), audio_codec=audio_codec,
                     rotation=rotation, audio_sample_rate=audio_rate, audio_channels=audio_channels)


# ----------------------------------------------------------------------------------------------- reading

def output_size(info: VideoInfo, crop: CropBox | None = None, size: int | None = None,
                max_side: int | None = None) -> tuple[int, int]:
    """(width, height) of the frames :func:`iter_frames` yields for these options."""
    if crop is not None:
        return (size, size) if size else (crop.size, crop.size)
    if size:
        return size, size
    w, h = info.width, info.height
    if max_side and max(w, h) > max_side:
        s = max_side / max(w, h)
        w, h = max(2, int(round(w * s / 2)) * 2), max(2, int(round(h * s / 2)) * 2)
    return w, h


def _filter_graph(info: VideoInfo, fps: float | None, crop: CropBox | None, size: int | None,
                  max_side: int | None, pad: str) -> str:
    """ffmpeg -vf chain: fps resampling, rgb conversion, pad+crop (box past the borders), resize."""
    parts: list[str] = []
    if fps:
        parts.append(f"fps={fps:.6g}")
    parts.append("format=rgb24")
    if crop is not None:
        W, H = info.width, info.height
        left, top = max(0, -crop.x), max(0, -crop.y)
        right, bottom = max(0, crop.x + crop.size - W), max(0, crop.y + crop.size - H)
        if left or top or right or bottom:
            parts.append(f"pad=w={W + left + right}:h={H + top + bottom}:x={left}:y={top}:color=black")
            if pad == "edge":
                parts.append(f"fillborders=left={left}:right={right}:top={top}:bottom={bottom}:mode=smear")
        parts.append(f"crop=w={crop.size}:h={crop.size}:x={crop.x + left}:y={crop.y + top}:exact=1")
    out_w, out_h = output_size(info, crop, size, max_side)
    cur = (crop.size, crop.size) if crop is not None else (info.width, info.height)
    if (out_w, out_h) != cur:
        parts.append(f"scale={out_w}:{out_h}:flags=bicubic+accurate_rnd+full_chroma_int")
    parts.append("setsar=1")
    return ",".join(parts)


def iter_frames(path: str | os.PathLike, fps: float | None = 25.0, crop: CropBox | None = None,
                size: int | None = None, *, max_side: int | None = None, pad: str = "black",
                start: float | None = None, duration: float | None = None, strict: bool = True,
                info: VideoInfo | None = None) -> Iterator[np.ndarray]:
    """Stream the frames of ``path`` as uint8 RGB arrays of shape (H, W, 3) (each a fresh, writable array).

    Args:
        fps: output frame rate (ffmpeg's ``fps`` filter: frames are dropped/duplicated to the nearest
            timestamp); ``None`` keeps the source frames as they are.
        crop: a fixed square box in source pixels (after rotation); the parts outside the frame are filled
            with black (``pad="black"``) or by repeating the border pixels (``pad="edge"``).
        size: resize the (cropped) frame to ``size`` x ``size``; without ``crop`` the frame is squashed, so
            use it with a crop. ``max_side``: without crop/size, shrink (never enlarge) so that the longer
            side is at most ``max_side``, keeping the aspect ratio (both sides even).
        start, duration: read only this time window (seconds).
        strict: raise :class:`VideoError` at the end when the file turned out truncated/corrupt (see the
            module docstring); ``False`` only logs a warning.

    The ffmpeg process is stopped when the generator is closed or garbage-collected.
    """
    path = Path(path)
    info = info or probe_video(path)
    if pad not in ("black", "edge"):
        raise ValueError(f"pad must be 'black' or 'edge', got {pad!r}")
    if crop is not None and crop.size <= 0:
        raise ValueError(f"crop box must have a positive size, got {crop}")
    out_w, out_h = output_size(info, crop, size, max_side)
    vf = _filter_graph(info, fps, crop, size, max_side, pad)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "warning"]
    if start:
        cmd += ["-ss", f"{start:.6f}"]
    cmd += ["-i", str(path)]
    if duration:
        cmd += ["-t", f"{duration:.6f}"]
    cmd += ["-map", "0:v:0", "-an", "-sn", "-dn", "-vf", vf, "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    frame_bytes = out_w * out_h * 3
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            bufsize=frame_bytes)
    err_lines: deque[str] = deque(maxlen=200)

    def drain() -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            err_lines.append(raw.decode("utf-8", "replace").rstrip())

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    n = 0
    finished = False
    try:
        assert proc.stdout is not None
        while True:
            buf = _read_exact(proc.stdout, frame_bytes)
            if len(buf) < frame_bytes:
                break
            n += 1
            yield np.frombuffer(buf, np.uint8).reshape(out_h, out_w, 3)
        finished = True
    finally:
        if not finished and proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(timeout=5)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    stderr = "\n".join(err_lines)
    if proc.returncode != 0:
        raise VideoError(f"{path}: ffmpeg could not decode the video ({ffmpeg_reason(stderr)})")
    if n == 0:
        raise VideoError(f"{path}: no frame could be decoded ({ffmpeg_reason(stderr)})")
    expected = _expected_frames(info, fps, start, duration)
    if expected and n < expected - max(2, int(0.02 * expected)):
        reported = re.search(r"partial file|corrupt|invalid|error", stderr, re.I)
        msg = (f"{path}: truncated or corrupt video: decoded {n} of about {expected} frames "
               f"({ffmpeg_reason(stderr) if reported else 'the stream ends before the duration in its header'})")
        if strict and reported:
            raise VideoError(msg)
        log.warning(msg)


def _expected_frames(info: VideoInfo, fps: float | None, start: float | None, duration: float | None) -> int:
    rate = fps or info.fps
    total = info.duration
    if not (math.isfinite(total) and math.isfinite(rate)):
        return 0
    span = total - (start or 0.0)
    if duration:
        span = min(span, duration)
    return max(0, int(round(span * rate)))


def _read_exact(stream, n: int) -> bytearray:
    """Read ``n`` bytes (fewer only at the end of the stream) into a fresh, writable buffer."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            break
        got += k
    return buf if got == n else buf[:got]


# ----------------------------------------------------------------------------------------------- writing

def extract_audio(path: str | os.PathLike, out_wav: str | os.PathLike, sample_rate: int = 16000) -> bool:
    """Write the first audio stream of ``path`` as mono 16-bit PCM wav at ``sample_rate`` Hz.

    Returns False (and writes nothing) when the file has no audio stream. The wav is written to a temporary
    name and renamed, so ``out_wav`` either does not exist or is complete.
    """
    path, out_wav = Path(path), Path(out_wav)
    info = probe_video(path)
    if not info.has_audio:
        return False
    with atomic_write(out_wav, ".wav") as tmp:
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y", "-i", str(path),
               "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(int(sample_rate)), "-c:a", "pcm_s16le", "-f", "wav",
               str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        if proc.returncode != 0 or not tmp.exists():
            raise VideoError(f"{path}: could not extract the audio ({ffmpeg_reason(proc.stderr)})")
    return True


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray] | np.ndarray, fps: float,
                audio_wav: str | os.PathLike | None = None, *, crf: int = 18, preset: str = "medium") -> int:
    """Encode uint8 RGB frames (each (H, W, 3), all the same size) as h264/yuv420p mp4, streaming.

    ``frames`` may be a generator or a (T, H, W, 3) array. Odd sizes are padded by one black pixel (yuv420p
    needs even sizes). With ``audio_wav`` the sound is muxed as AAC. Written to a temporary name and renamed
    when ffmpeg has finished. Returns the number of frames written.
    """
    path = Path(path)
    if audio_wav is not None:
        _check_exists(Path(audio_wav))
    it = iter(frames)
    try:
        first = np.asarray(next(it))
    except StopIteration:
        raise ValueError(f"{path}: no frames to write") from None
    if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8 (H, W, 3), got {first.dtype} {first.shape}")
    h, w = first.shape[:2]
    with atomic_write(path, ".mp4") as tmp, open(os.devnull, "wb") as devnull, _TempLog() as errlog:
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", f"{fps:.6g}", "-i", "pipe:0"]
        if audio_wav is not None:
            cmd += ["-i", str(audio_wav)]
        cmd += ["-map", "0:v:0"]
        if audio_wav is not None:
            cmd += ["-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"]
        cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", preset, "-crf", str(crf),
                "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4", str(tmp)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=devnull, stderr=errlog.handle)
        n = 0
        try:
            assert proc.stdin is not None
            for frame in _chain(first, it):
                frame = np.asarray(frame)
                if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
                    raise ValueError(f"{path}: frame {n} is {frame.dtype} {frame.shape}, expected uint8 {(h, w, 3)}")
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
                n += 1
            proc.stdin.close()
            rc = proc.wait()
        except BrokenPipeError:
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if rc != 0:
            raise VideoError(f"{path}: ffmpeg could not encode the video ({ffmpeg_reason(errlog.read())})")
    return n


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


class _TempLog:
    """A temporary file for a child's stderr (no pipe to deadlock on), read back on error."""

    def __enter__(self) -> _TempLog:
        import tempfile

        self.handle = tempfile.TemporaryFile()
        return self

    def read(self) -> str:
        self.handle.seek(0)
        return self.handle.read().decode("utf-8", "replace")

    def __exit__(self, *exc) -> None:
        self.handle.close()
