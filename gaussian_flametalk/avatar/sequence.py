"""Render a trained avatar for any head-parameter sequence into whole composited frames or an mp4.

``render_sequence`` is the API the ``drive`` stage calls; ``gft render-avatar SUBJECT --params P.npz --out o.mp4`` is
its command line. Output frame ``t`` shows the avatar posed by ``params[t]`` composited (:mod:`.composite`) over the
source frame ``source_frames[t]`` (default: the subject's frames looped forward-backward) whose head region is replaced
by the static background plate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import resolve_device, validate
from ..headmodel import HeadModel, HeadParams
from ..io.meta import read_meta
from ..io.subject import Subject, read_params
from ..io.training import Checkpoint
from .composite import CHIN_MARGIN, TorsoCut, chin_rows, composite, head_region, torso_cuts, torso_keep
from .gaussians import BoundGaussians

__all__ = ["AvatarRenderer", "RenderAvatarConfig", "main", "pingpong", "render_sequence"]


def pingpong(n_out: int, n_src: int) -> np.ndarray:
    """(n_out,) source indices looping 0..n_src-1 forward then backward."""
    if n_src == 1:
        return np.zeros(n_out, dtype=int)
    period = 2 * n_src - 2
    t = np.arange(n_out) % period
    return np.where(t < n_src, t, period - t)


class AvatarRenderer:
    """Renders and composites frames of one avatar (everything at ``resolution`` x ``resolution``)."""

    def __init__(
        self,
        subject: Subject,
        gaussians: BoundGaussians,
        model: HeadModel,
        static: np.ndarray,
        sh_degree: int,
        resolution: int,
        device: torch.device | str,
    ) -> None:
        import cv2

        from .train import scaled_camera

        self.subject, self.sh_degree, self.resolution = subject, sh_degree, resolution
        self.device = torch.device(device)
        self.gaussians = gaussians.to(self.device)
        self.model = model.to(self.device)
        self.camera = scaled_camera(subject.camera(), resolution).to(self.device)
        self.static = cv2.resize(static, (resolution, resolution), interpolation=cv2.INTER_AREA)
        self.tracked = subject.params(device=self.device)
        self.used = torch.unique(self.model.faces[self.gaussians.covered_triangles()])
        self.dilate = max(1, round(0.02 * resolution))
        with torch.no_grad():
            self.appearance = tuple(t.detach() for t in self.gaussians.appearance())
            g = self.gaussians
            if not all(bool(torch.isfinite(t).all()) for t in (*self.appearance, g.xyz, g.rotation, g.log_scale)):
                raise ValueError("the avatar's Gaussians hold NaN or inf values: retrain it (gft train-avatar)")
        self._cuts: dict[int, TorsoCut] = {}

    @torch.no_grad()
    def prepare_sources(self, sources: np.ndarray, chunk: int = 32) -> None:
        """Compute the torso cuts of source frames ``sources`` (any int array) in batches, ahead of
        :meth:`frame_and_weight` (which otherwise poses one source mesh per frame)."""
        todo = [int(s) for s in np.unique(np.asarray(sources)) if int(s) not in self._cuts]
        for i in range(0, len(todo), chunk):
            idx = todo[i:i + chunk]
            verts = self.model.forward_params(self.tracked[torch.as_tensor(idx, device=self.device)])
            self._cuts.update(zip(idx, torso_cuts(verts[:, self.used], self.camera, self.model.landmarks(verts))))

    def _source_cut(self, source: int) -> TorsoCut:
        if source not in self._cuts:
            self.prepare_sources(np.array([source]))
        return self._cuts[source]

    @classmethod
    def load(
        cls, subject: Subject, model: HeadModel, avatar_dir: Path, resolution: int | None = None,
        device: torch.device | str = "cpu",
    ) -> AvatarRenderer:
        """From a finished ``gft train-avatar`` folder (checks the head model against the checkpoint)."""
        import cv2

        meta_path = avatar_dir / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{avatar_dir}: no finished avatar (meta.json missing): run gft train-avatar")
        meta = read_meta(meta_path, "train-avatar")
        state = Checkpoint(avatar_dir / "checkpoint.pt", {"n_vertices": model.n_vertices, "n_faces": model.n_faces}
                           ).read()
        if state is None:
            raise FileNotFoundError(f"{avatar_dir / 'checkpoint.pt'}: missing: run gft train-avatar again")
        gaussians = BoundGaussians.from_tensors(state["gaussians"], model.n_faces)
        static = cv2.imread(str(avatar_dir / "background.png"), cv2.IMREAD_COLOR)
        if static is None:
            raise FileNotFoundError(f"{avatar_dir / 'background.png'}: missing or unreadable")
        size = resolution or int(meta["config"]["resolution"])
        return cls(subject, gaussians, model, static[..., ::-1].copy(), int(state["sh_degree"]), size, device)

    @torch.no_grad()
    def frame(self, params: HeadParams, source: int) -> np.ndarray:
        """One composited frame: the avatar posed by ``params`` (one frame) over source frame ``source``.

        Returns:
            (size, size, 3) uint8.
        """
        return self.frame_from_vertices(self.model.forward_params(params), source)

    @torch.no_grad()
    def frame_from_vertices(self, verts: torch.Tensor, source: int) -> np.ndarray:
        """One composited frame of the avatar on the posed mesh ``verts`` (1, V, 3) over source frame ``source``:
        (size, size, 3) uint8."""
        return self.frame_and_weight(verts, source)[0]

    @torch.no_grad()
    def frame_and_weight(self, verts: torch.Tensor, source: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`frame_from_vertices` and (size, size) float32 in [0, 1]: how much of each pixel is not the source
        frame (the head's clamped alpha, or the head region replaced by the background plate) — where a full-frame
        paste needs the render."""
        import cv2

        from .train import render_vertices

        verts = verts.to(self.device)
        if not bool(torch.isfinite(verts).all()):
            raise ValueError("the posed mesh holds NaN or inf values")
        # the avatar was checked once in __init__: no per-frame scan of its 16 SH bands
        image, alpha, _ = render_vertices(self.gaussians, verts, self.model.faces, self.camera, self.sh_degree,
                                          self.appearance, check_finite=False)
        chin, height = chin_rows(self.model.landmarks(verts), self.camera)
        # a jaw opened wider than the source's stays whole: the row below it by a margin, the neck column's sides
        # (beyond the jaw) from its chin down, as in training
        cut = self._source_cut(int(source)).lowered_to(float(chin[0] + CHIN_MARGIN * height[0]), float(chin[0]))
        size = (self.resolution, self.resolution)
        frame = cv2.resize(self.subject.frame(source), size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(self.subject.mask(source), size, interpolation=cv2.INTER_AREA)
        region = head_region(mask, cut, self.dilate)
        keep = torso_keep(cut, *size)
        a = alpha[0, ..., 0].cpu().numpy()
        out = composite(image[0].cpu().numpy(), a, frame, region, self.static, keep)
        return out, np.maximum(a * keep, region).astype(np.float32)

    def frames(
        self, verts: torch.Tensor, sources: np.ndarray,
        finish: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = None, workers: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Composited frames of the meshes ``verts`` (B, V, 3) over source frames ``sources`` (B,), in order:
        :meth:`frame_and_weight` of each, then ``finish(frame, weight, source)`` when given (e.g. a full-frame paste).

        On the CPU, ``workers`` frames (default ``torch.get_num_threads()``) are made at a time, each on one thread
        (torch's and the kernels' thread count is 1 while the iterator runs, then restored): on two cores about 1.6x
        the throughput of one frame at a time on both, since a frame's serial parts (binning, the numpy compositing,
        JPEG decoding) overlap. On CUDA, one frame at a time. Yields (resolution, resolution, 3) uint8, or what
        ``finish`` returns.
        """
        def make(t: int) -> np.ndarray:
            img, weight = self.frame_and_weight(verts[t:t + 1], int(sources[t]))
            return finish(img, weight, int(sources[t])) if finish is not None else img

        n = int(verts.shape[0])
        workers = 1 if self.device.type != "cpu" else int(workers or torch.get_num_threads())
        if workers <= 1:
            for t in range(n):
                yield make(t)
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="gft-frame") as pool:
                pending: deque = deque()
                for t in range(n):
                    pending.append(pool.submit(make, t))
                    if len(pending) >= 2 * workers:  # a bounded look-ahead: frames wait only briefly in memory
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
        finally:
            torch.set_num_threads(threads)


def render_sequence(
    subject: Subject | str | Path,
    params: HeadParams,
    avatar_dir: str | Path | None = None,
    source_frames: np.ndarray | None = None,
    resolution: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    chunk: int = 64,
) -> Iterator[np.ndarray]:
    """Whole composited frames of the avatar driven by ``params``.

    Args:
        subject: the SUBJECT (folder); avatar_dir: its trained avatar (default SUBJECT/avatar).
        params: B frames of head parameters (the subject's head model).
        source_frames: (B,) source frame per output frame (default: forward-backward loop over the clip).
        resolution: output size (default the training resolution); chunk: frames posed at once.
    Yields:
        (resolution, resolution, 3) uint8 RGB frames.
    """
    from tqdm.auto import tqdm

    from .train import check_tracked_with

    subject = subject if isinstance(subject, Subject) else Subject.open(subject)
    model = subject.head_model()
    check_tracked_with(model, subject, params)
    renderer = AvatarRenderer.load(subject, model, Path(avatar_dir or subject.root / "avatar"), resolution, device)
    src = pingpong(params.batch, subject.n_frames) if source_frames is None else np.asarray(source_frames)
    if len(src) != params.batch or src.min() < 0 or src.max() >= subject.n_frames:
        raise ValueError(f"source_frames must be {params.batch} indices in 0..{subject.n_frames - 1}")
    params = params.to(renderer.device)
    renderer.prepare_sources(src)
    with tqdm(total=params.batch, desc="render-avatar", unit="frame", disable=not progress) as bar:
        for a in range(0, params.batch, chunk):  # meshes posed a chunk at a time, frames made in parallel
            with torch.no_grad():
                verts = renderer.model.forward_params(params[a:a + chunk])
            for frame in renderer.frames(verts, src[a:a + chunk]):
                bar.update()
                yield frame


@dataclass
class RenderAvatarConfig:
    """Options of ``gft render-avatar``."""

    subject: Path = field(metadata={"help": "SUBJECT folder with a trained avatar"})
    params: Path = field(metadata={"help": "npz of per-frame head parameters (HeadParams fields)"})
    out: Path = field(metadata={"help": "output mp4"})
    avatar: Path | None = field(default=None, metadata={"help": "avatar folder (default SUBJECT/avatar)"})
    resolution: int | None = field(default=None, metadata={"min": 16, "help": "output size (default: training resolution)"})
    audio: Path | None = field(default=None, metadata={"help": "wav to mux as the sound"})
    device: str = field(default="auto", metadata={"help": "torch device: auto (CUDA when torch sees a GPU, else CPU), cpu, cuda, cuda:N"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        validate(self)
        self.device = resolve_device(self.device)


def main(cfg: RenderAvatarConfig) -> int:
    from ..io.media import write_video

    subject = Subject.open(cfg.subject)
    params = read_params(cfg.params)
    frames = render_sequence(subject, params, cfg.avatar, resolution=cfg.resolution, device=cfg.device,
                             progress=cfg.progress)
    n = write_video(cfg.out, frames, subject.fps, cfg.audio)
    print(f"wrote {cfg.out} ({n} frames)")
    return 0
