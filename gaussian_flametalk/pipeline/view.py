"""``gft view``: a SUBJECT's avatar in the browser, through viser (the nerfstudio team's web viewer; WebGL splats).

``gft view SUBJECT [--params P.npz | --drive OUT.npz] [--host 127.0.0.1] [--port 8080]`` prints the local URL. The page
shows the avatar's Gaussians posed by the head model, an orbit camera that starts at the tracked camera, and a panel:

- Sequence: a frame slider and a play checkbox over the shown sequence (the avatar's optimised parameters by default,
  or ``--params`` / ``--drive``); moving to a frame sets every slider to that frame's values.
- Pose: jaw opening (the jaw joint, or the jaw-open blend shape of a model whose jaw is a blend shape) and the head's
  pitch, yaw and roll (axis-angle components of the global rotation).
- Expression: one slider per expression component (the first ``--max-sliders``), grouped by where the component moves
  the 68 landmarks most: mouth, eyes or brows.
- Show: toggles for the Gaussians, the mesh wireframe and the 68 landmarks.
- Render: renders the browser's current view with the project's own rasterizer (the same render call every stage
  uses) and shows it in the panel, to compare with viser's WebGL splats.

viser draws each Gaussian with a view-independent colour: the splats' colours are the avatar's spherical harmonics
evaluated towards the tracked camera (the project's render uses the full SH for the actual view).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..avatar.sequence import AvatarRenderer
from ..avatar.sh import sh_to_color
from ..avatar.train import check_tracked_with, render_vertices
from ..config import resolve_device, validate
from ..errors import GftError
from ..geometry.camera import Camera
from ..geometry.rotation import quaternion_to_matrix
from ..headmodel import IBUG68_PARTS, HeadModel, HeadParams
from ..io.subject import Subject, read_params

__all__ = ["AvatarViewer", "ViewConfig", "expression_groups", "main"]

#: expression groups and the iBUG-68 landmarks each is judged by
GROUPS: dict[str, tuple[range, ...]] = {
    "mouth": (IBUG68_PARTS["lips_outer"], IBUG68_PARTS["lips_inner"]),
    "eyes": (IBUG68_PARTS["eye_right"], IBUG68_PARTS["eye_left"]),
    "brows": (IBUG68_PARTS["brow_right"], IBUG68_PARTS["brow_left"]),
}
POSE_AXES = ("pitch", "yaw", "roll")  # the global rotation's x, y, z axis-angle components (head model axes)


@dataclass
class ViewConfig:
    """Options of ``gft view``."""

    subject: Path = field(metadata={"help": "SUBJECT folder with a trained avatar"})
    params: Path | None = field(default=None, metadata={
        "help": "npz of per-frame head parameters to play (default: the avatar's optimised sequence)"})
    drive: Path | None = field(default=None, metadata={"help": "the OUT.npz a gft drive wrote, to play"})
    avatar: Path | None = field(default=None, metadata={"help": "avatar folder (default SUBJECT/avatar)"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to serve on (127.0.0.1: this machine only; 0.0.0.0: every network interface)"})
    port: int = field(default=8080, metadata={"help": "port to serve on (the next free one when taken)"})
    max_sliders: int = field(default=60, metadata={"help": "sliders for the first N expression components"})
    resolution: int | None = field(default=None, metadata={
        "help": "height of the project-rasterizer render of the current view (default: the avatar's training size)"})
    device: str = field(default="auto", metadata={
        "help": "torch device: auto (CUDA when torch sees a GPU, else CPU), cpu, cuda, cuda:N"})

    def __post_init__(self) -> None:
        validate(self)
        if self.params is not None and self.drive is not None:
            raise ValueError("--params and --drive: give one sequence, not both")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port: {self.port} is not a port number")
        if self.max_sliders < 0:
            raise ValueError(f"--max-sliders: must be >= 0, got {self.max_sliders}")
        self.device = resolve_device(self.device)


def expression_groups(model: HeadModel, shape: torch.Tensor) -> dict[str, list[int]]:
    """Each expression component in the group (mouth, eyes, brows) whose landmarks it moves most, on the identity
    ``shape`` (1, S) with zero pose. Returns group -> component indices, ascending."""
    n = model.n_expression
    with torch.no_grad():
        expr = torch.cat([torch.zeros(1, n), torch.eye(n)]).to(shape)
        lmk = model.forward_landmarks(shape=shape.expand(n + 1, -1), expression=expr)  # (1 + n, 68, 3)
        move = (lmk[1:] - lmk[:1]).norm(dim=-1)  # (n, 68)
    score = torch.stack([torch.cat([move[:, r] for r in parts], 1).mean(1) for parts in GROUPS.values()], 1)
    best = score.argmax(1)
    return {g: [k for k in range(n) if int(best[k]) == gi] for gi, g in enumerate(GROUPS)}


def _jaw_component(model: HeadModel) -> int | None:
    """The expression component that opens the jaw, for a model without a jaw joint (ICT-FaceKit: jawOpen)."""
    names = [n.lower() for n in model.expression_names]
    return names.index("jawopen") if "jawopen" in names else None


def _cover(bounds: tuple[float, float], values: torch.Tensor) -> tuple[float, float]:
    """``bounds`` widened to hold every value of ``values`` (a slider must hold every frame's value)."""
    lo, hi = min(bounds[0], float(values.min())), max(bounds[1], float(values.max()))
    return math.floor(lo * 100) / 100, math.ceil(hi * 100) / 100


def _covariances(quats: torch.Tensor, scales: torch.Tensor) -> np.ndarray:
    """(N, 3, 3) world covariances R diag(s^2) R^T of (N, 4) quaternions and (N, 3) standard deviations."""
    r = quaternion_to_matrix(quats)
    return (r * scales[:, None, :] ** 2 @ r.transpose(1, 2)).cpu().numpy().astype(np.float32)


class AvatarViewer:
    """The viser server of one avatar: scene, panel and playback (``start`` serves, ``stop`` ends)."""

    def __init__(self, subject: Subject, renderer: AvatarRenderer, sequence: HeadParams, max_sliders: int = 60,
                 render_height: int | None = None) -> None:
        self.subject, self.r = subject, renderer
        self.model: HeadModel = renderer.model
        self.seq = sequence.to(renderer.device)
        self.render_height = render_height or renderer.resolution
        self.current = self.seq[0:1]
        self.lock = threading.RLock()
        self._syncing = False
        self._stop = threading.Event()
        self.server = None
        self._player: threading.Thread | None = None
        self.last_render: np.ndarray | None = None
        cam = renderer.camera
        c2w = torch.linalg.inv(cam.viewmat.double())
        self.eye = c2w[:3, 3].cpu().numpy()
        self.up = (-c2w[:3, 1]).cpu().numpy()  # OpenCV camera: y points down the image
        self.fov = float(2 * np.arctan(cam.height / (2 * float(cam.K[1, 1]))))
        with torch.no_grad():
            self.target = self.model.forward_params(self.current)[0].mean(0).double().cpu().numpy()
            _, _, _, self.opacities, self.sh = renderer.gaussians.world(
                self.model.forward_params(self.current), self.model.faces)
        self.groups = expression_groups(self.model, self.seq.shape[:1].float())
        self.jaw_expr = None if "jaw" in self.model.pose_parts else _jaw_component(self.model)
        self.n_sliders = min(max_sliders, self.model.n_expression)

    # ---- state ---------------------------------------------------------------------------------------------------
    def _range(self, k: int) -> tuple[float, float]:
        """Slider range of expression component ``k``: the head model's bounds (blend-shape weights), or +-1.5 times
        the sequence's largest value (at least +-1) for PCA components; always wide enough for every frame."""
        values = self.seq.expression[:, k]
        if self.model.expression_bounds is not None:
            return _cover(self.model.expression_bounds, values)
        r = max(1.0, round(1.5 * float(values.abs().max()), 1))
        return -r, r

    @torch.no_grad()
    def world(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posed mesh (1, V, 3), landmarks (68, 3) and the world Gaussians (means, quats, scales) of ``current``."""
        verts = self.model.forward_params(self.current)
        means, quats, scales, _, _ = self.r.gaussians.world(verts, self.model.faces)
        return verts, self.model.landmarks(verts)[0], (means[0], quats[0], scales[0])

    # ---- server --------------------------------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 8080) -> str:
        """Serve; returns the URL."""
        import viser

        # a browser closing a half-opened connection is no error for the user to read
        logging.getLogger("websockets.server").setLevel(logging.CRITICAL)
        self.server = s = viser.ViserServer(host=host, port=port, verbose=False)
        s.scene.set_up_direction(tuple(self.up))
        s.initial_camera.position = tuple(self.eye)
        s.initial_camera.look_at = tuple(self.target)
        s.initial_camera.up = tuple(self.up)
        s.initial_camera.fov = self.fov
        self._build_panel(s)
        verts, lmk, (means, quats, scales) = self.world()
        with torch.no_grad():
            rgb = sh_to_color(self.r.sh_degree, self.sh, means - torch.as_tensor(self.eye).to(means)).clamp(0, 1)
        self.rgbs = rgb.cpu().numpy().astype(np.float32)
        self.splats = s.scene.add_gaussian_splats(
            "/avatar", means.cpu().numpy(), _covariances(quats, scales), self.rgbs,
            self.opacities[:, None].cpu().numpy().astype(np.float32))
        faces = self.model.faces.cpu().numpy()
        self.mesh = s.scene.add_mesh_simple("/mesh", verts[0].cpu().numpy(), faces, wireframe=True,
                                            color=(40, 90, 200), visible=self.show_mesh.value)
        self.points = s.scene.add_point_cloud("/landmarks", lmk.cpu().numpy(), colors=(255, 40, 40),
                                              point_size=0.002, point_shape="circle", visible=self.show_lmk.value)
        self._player = threading.Thread(target=self._play_loop, daemon=True, name="gft-view-play")
        self._player.start()
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{shown}:{s.get_port()}"

    def stop(self) -> None:
        self._stop.set()
        if self._player is not None:
            self._player.join(5.0)
        if self.server is not None:
            self.server.stop()

    def _build_panel(self, s) -> None:
        gui = s.gui
        p0 = self.current
        with gui.add_folder("Sequence"):
            self.frame = gui.add_slider("frame", 0, max(self.seq.batch - 1, 1), 1, 0,
                                        disabled=self.seq.batch == 1)
            self.play = gui.add_checkbox("play", False)
            self.fps = gui.add_number("fps", float(self.subject.fps), min=1.0, max=120.0, step=1.0)
        self.sliders: dict[str, object] = {}
        with gui.add_folder("Pose"):
            if "jaw" in self.model.pose_parts:
                lo, hi = _cover((-0.1, 0.6), self.seq.jaw[:, 0])
                self.sliders["jaw"] = gui.add_slider("jaw", lo, hi, 0.005, float(p0.jaw[0, 0]))
            elif self.jaw_expr is not None:
                lo, hi = self._range(self.jaw_expr)
                self.sliders["jaw"] = gui.add_slider("jaw", lo, hi, 0.01, float(p0.expression[0, self.jaw_expr]))
            for i, axis in enumerate(POSE_AXES):
                lo, hi = _cover((-0.8, 0.8), self.seq.rotation[:, i])
                self.sliders[axis] = gui.add_slider(axis, lo, hi, 0.005, float(p0.rotation[0, i]))
        for g, comps in self.groups.items():
            shown = [k for k in comps if k < self.n_sliders and k != self.jaw_expr]
            with gui.add_folder(f"Expression: {g}", expand_by_default=g == "mouth"):
                for k in shown:
                    lo, hi = self._range(k)
                    step = 0.005 if hi - lo < 3 else 0.02
                    self.sliders[f"expr{k}"] = gui.add_slider(self.model.expression_names[k], lo, hi, step,
                                                              float(p0.expression[0, k]))
        with gui.add_folder("Show"):
            self.show_splats = gui.add_checkbox("Gaussians", True)
            self.show_mesh = gui.add_checkbox("mesh wireframe", False)
            self.show_lmk = gui.add_checkbox("landmarks", False)
        with gui.add_folder("Render"):
            self.render_button = gui.add_button("render this view with gft's rasterizer")
            self.render_note = gui.add_markdown("")
            self.render_image = gui.add_image(np.full((8, 8, 3), 255, np.uint8), label="gft render")
        self.frame.on_update(lambda _: self.goto(int(self.frame.value)))
        for handle in self.sliders.values():
            handle.on_update(lambda _: self._from_sliders())
        self.show_splats.on_update(lambda _: setattr(self.splats, "visible", self.show_splats.value))
        self.show_mesh.on_update(lambda _: setattr(self.mesh, "visible", self.show_mesh.value))
        self.show_lmk.on_update(lambda _: setattr(self.points, "visible", self.show_lmk.value))
        self.render_button.on_click(lambda event: self.render_view(event.client))

    def goto(self, t: int) -> None:
        """Show frame ``t`` of the sequence; every slider takes its value."""
        with self.lock:
            self.current = self.seq[t:t + 1]
            self._syncing = True
            try:
                p = self.current
                if "jaw" in self.sliders:
                    jaw = p.jaw[0, 0] if self.jaw_expr is None else p.expression[0, self.jaw_expr]
                    self.sliders["jaw"].value = float(jaw)
                for i, axis in enumerate(POSE_AXES):
                    self.sliders[axis].value = float(p.rotation[0, i])
                for name, handle in self.sliders.items():
                    if name.startswith("expr"):
                        handle.value = float(p.expression[0, int(name[4:])])
            finally:
                self._syncing = False
            self._update_scene()

    def _from_sliders(self) -> None:
        if self._syncing:
            return
        with self.lock:
            p = HeadParams(**{k: v.clone() for k, v in self.current.as_kwargs().items()})
            if "jaw" in self.sliders:
                if self.jaw_expr is None:
                    p.jaw[0, 0] = float(self.sliders["jaw"].value)
                else:
                    p.expression[0, self.jaw_expr] = float(self.sliders["jaw"].value)
            for i, axis in enumerate(POSE_AXES):
                p.rotation[0, i] = float(self.sliders[axis].value)
            for name, handle in self.sliders.items():
                if name.startswith("expr"):
                    p.expression[0, int(name[4:])] = float(handle.value)
            self.current = p
            self._update_scene()

    def _update_scene(self) -> None:
        if self.server is None:
            return
        verts, lmk, (means, quats, scales) = self.world()
        with self.server.atomic():
            self.splats.set_gaussians(means.cpu().numpy(), _covariances(quats, scales), self.rgbs,
                                      self.opacities[:, None].cpu().numpy().astype(np.float32))
            self.mesh.vertices = verts[0].cpu().numpy()
            self.points.points = lmk.cpu().numpy()

    def _play_loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            if self.play.value and self.seq.batch > 1:
                self.frame.value = (int(self.frame.value) + 1) % self.seq.batch  # its callback shows the frame
            time.sleep(max(0.0, 1.0 / float(self.fps.value) - (time.perf_counter() - t0)))

    @torch.no_grad()
    def camera_of(self, client) -> Camera:
        """The project's Camera for a browser client's current view (viser's camera frame is OpenCV's: +z forward,
        +y down), ``render_height`` pixels high at the browser's aspect ratio."""
        c = client.camera
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3, :3] = quaternion_to_matrix(torch.tensor(np.asarray(c.wxyz), dtype=torch.float64))
        c2w[:3, 3] = torch.tensor(np.asarray(c.position), dtype=torch.float64)
        h = self.render_height
        w = max(1, int(round(h * float(c.aspect))))
        f = h / (2 * np.tan(float(c.fov) / 2))
        K = torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], dtype=torch.float64)
        return Camera(torch.linalg.inv(c2w), K, w, h).to(self.r.device, torch.float32)

    @torch.no_grad()
    def render_view(self, client) -> np.ndarray:
        """Render ``client``'s current view with the project's rasterizer over white; shown in the panel and
        returned as (H, W, 3) uint8."""
        camera = self.camera_of(client)
        with self.lock:
            verts = self.model.forward_params(self.current)
        t0 = time.perf_counter()
        image, alpha, _ = render_vertices(self.r.gaussians, verts, self.model.faces, camera, self.r.sh_degree)
        seconds = time.perf_counter() - t0
        out = (image[0] + (1 - alpha[0])).clamp(0, 1).mul(255).round().byte().cpu().numpy()
        self.render_image.image = out
        self.render_note.content = f"{camera.width}x{camera.height}, {len(self.r.gaussians)} Gaussians, {seconds:.2f} s"
        self.last_render = out
        return out


def load_viewer(cfg: ViewConfig) -> AvatarViewer:
    """The viewer of ``cfg`` (checks the SUBJECT, its avatar and the sequence before anything is served)."""
    subject = Subject.open(cfg.subject)
    model = subject.head_model()
    avatar_dir = Path(cfg.avatar or subject.root / "avatar")
    renderer = AvatarRenderer.load(subject, model, avatar_dir, device=cfg.device)
    optimised = avatar_dir / "params.npz"
    seq_path = cfg.params or cfg.drive or (optimised if optimised.is_file() else subject.root / "params.npz")
    seq = read_params(seq_path)
    check_tracked_with(model, subject, seq)
    if seq.batch == 0:
        raise GftError(f"{seq_path}: no frames")
    return AvatarViewer(subject, renderer, seq, cfg.max_sliders, cfg.resolution)


def main(cfg: ViewConfig) -> int:
    try:
        import viser  # noqa: F401
    except ImportError:
        raise GftError("gft view needs viser: pip install 'gaussian-flametalk[viewer]' (bash setup.sh installs it)"
                       ) from None
    viewer = load_viewer(cfg)
    url = viewer.start(cfg.host, cfg.port)
    print(f"[gft] view: {url}  ({len(viewer.r.gaussians)} Gaussians, {viewer.seq.batch} frames; Ctrl-C stops)",
          file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
    return 0
