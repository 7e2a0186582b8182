"""`gft view` in a real browser: the viewer serves a briefly trained synthetic avatar, a headless Chromium loads the
page (WebGL through SwiftShader), the jaw slider is moved with the keyboard in the page, and the screenshots are
checked: not blank, and different in the lower face once the jaw has moved; the render button and playback work; and
the avatar PLY, read as splat viewers read a 3DGS PLY and drawn by viser's splats alone, looks like the live avatar.
Skipped without Chromium or viser."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from browser import Browser, find_chromium
from gaussian_flametalk.io.subject import read_params
from gaussian_flametalk.avatar.train import AvatarConfig, DensifyOptions, train_avatar
from gaussian_flametalk.io.subject import Subject
from gaussian_flametalk.pipeline.view import ViewConfig, expression_groups, load_viewer
from gaussian_flametalk.headmodel import make_synthetic_head
from gaussian_flametalk.scripts.gft import main as gft_main
from test_avatar import make_subject

FOCUS_SLIDER = """(() => {
  const label = %r;
  const s = Array.from(document.querySelectorAll('[role=slider]')).find(e => {
    for (let a = e, i = 0; a && i < 8; a = a.parentElement, i++)
      if ((a.innerText || '').split('\\n')[0].trim() === label) return true;
    return false;
  });
  if (!s) return false;
  s.focus();
  return document.activeElement === s;
})()"""
CLICK = """(() => {
  const [selector, label] = [%r, %r];
  const el = Array.from(document.querySelectorAll(selector)).find(e => {
    for (let a = e, i = 0; a && i < 8; a = a.parentElement, i++)
      if ((a.innerText || '').split('\\n')[0].trim().startsWith(label)) return true;
    return false;
  });
  if (!el) return false;
  el.click();
  return true;
})()"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def demo_avatar(tmp_path_factory):
    """A briefly trained synthetic avatar, or the trained SUBJECT named by GFT_VIEW_SUBJECT (to run the browser checks
    on a real avatar; read only)."""
    if os.environ.get("GFT_VIEW_SUBJECT"):
        return Path(os.environ["GFT_VIEW_SUBJECT"])
    root = make_subject(tmp_path_factory.mktemp("view") / "S", n=12, size=96)
    train_avatar(AvatarConfig(subject=root, iterations=15, resolution=96, progress=False, regions=(), sh_degree=0,
                              densify=DensifyOptions(every=0, opacity_resets=0), grid_frames=1))
    return root


def test_expression_groups_follow_the_landmarks_they_move():
    model = make_synthetic_head()
    groups = expression_groups(model, torch.zeros(1, model.n_shape))
    names = {g: {model.expression_names[k] for k in ks} for g, ks in groups.items()}
    assert sorted(k for ks in groups.values() for k in ks) == list(range(model.n_expression))
    assert {"smile", "pucker"} <= names["mouth"] and {"blink_left", "blink_right"} <= names["eyes"]
    assert {"brow_raise", "brow_lower"} <= names["brows"]


def test_bad_options(demo_avatar, tmp_path, capsys):
    with pytest.raises(ValueError, match="--params and --drive"):
        ViewConfig(subject=demo_avatar, params=tmp_path / "a.npz", drive=tmp_path / "b.npz", device="cpu")
    pytest.importorskip("viser")
    assert gft_main(["view", str(demo_avatar), "--params", str(tmp_path / "missing.npz"), "--device", "cpu"]) == 2
    assert "missing.npz: parameter file not found" in capsys.readouterr().err


def test_sequence_sources(demo_avatar, tmp_path):
    tracked = Subject.open(demo_avatar).params()
    np.savez(tmp_path / "p.npz", **tracked[:3].to_numpy())
    viewer = load_viewer(ViewConfig(subject=demo_avatar, params=tmp_path / "p.npz", device="cpu"))
    assert viewer.seq.batch == 3 and torch.equal(viewer.seq.expression.cpu(), tracked.expression[:3])
    viewer = load_viewer(ViewConfig(subject=demo_avatar, device="cpu"))  # default: the avatar's optimised sequence
    assert torch.equal(viewer.seq.jaw.cpu(), read_params(demo_avatar / "avatar" / "params.npz").jaw)
    with pytest.raises(ValueError, match="'expression' has 4 components"):
        np.savez(tmp_path / "bad.npz", **{**tracked[:3].to_numpy(), "expression": np.zeros((3, 4), np.float32)})
        load_viewer(ViewConfig(subject=demo_avatar, drive=tmp_path / "bad.npz", device="cpu"))


def _splats_as_viewers_read(path):
    """A 3DGS PLY read the way splat viewers read one (viser's and antimatter15/splat's loaders, SuperSplat): centres,
    colour 0.5 + C0 * f_dc, sigmoid(opacity), exp(scale_*), w-first quaternion rot_* -> viser's splat arrays."""
    plyfile = pytest.importorskip("plyfile")
    v = plyfile.PlyData.read(str(path))["vertex"]
    xyz = np.stack([v[n] for n in "xyz"], -1)
    rgb = np.clip(0.5 + 0.28209479177387814 * np.stack([v[f"f_dc_{i}"] for i in range(3)], -1), 0, 1)
    opacity = 1 / (1 + np.exp(-v["opacity"].astype(np.float64)))
    scale = np.exp(np.stack([v[f"scale_{i}"] for i in range(3)], -1))
    q = np.stack([v[f"rot_{i}"] for i in range(4)], -1)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q.T
    r = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                  2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                  2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)
    cov = (r * scale[:, None, :] ** 2) @ r.transpose(0, 2, 1)
    return (xyz.astype(np.float32), cov.astype(np.float32), rgb.astype(np.float32),
            opacity[:, None].astype(np.float32))


@pytest.mark.skipif(find_chromium() is None, reason="no chromium (apt-get install chromium)")
def test_viewer_in_headless_chromium(demo_avatar, tmp_path):
    viser = pytest.importorskip("viser")
    pytest.importorskip("websockets")
    import cv2

    viewer = load_viewer(ViewConfig(subject=demo_avatar, device="cpu"))
    url = viewer.start("127.0.0.1", _free_port())
    plain = viser.ViserServer(host="127.0.0.1", port=_free_port(), verbose=False)
    try:
        with Browser(url, 800, 520) as page:
            page.call("Emulation.setDeviceMetricsOverride", width=800, height=520, deviceScaleFactor=1, mobile=False)
            _wait(lambda: viewer.server.get_clients(), 60, "the page to connect")
            _wait(lambda: page.evaluate(FOCUS_SLIDER % "jaw"), 60, "the panel")
            # the canvas left of the panel (whose sliders start about 120 px right of its edge): wait until the splats
            # are drawn (the page is white before)
            left = int(page.evaluate("document.querySelector('[role=slider]').getBoundingClientRect().left")) - 140

            def view() -> np.ndarray:
                return page.screenshot()[:, :left]

            _wait(lambda: view().std() > 10, 60, "the splats to be drawn")
            time.sleep(1.0)
            before = view()
            cv2.imwrite(str(tmp_path / "before.png"), before[..., ::-1])
            assert (before < 200).any(axis=-1).mean() > 0.02  # the avatar covers part of the view, not blank

            # move the jaw slider in the page: focus it and press End (its maximum), as a keyboard user would
            jaw = viewer.sliders["jaw"]
            assert page.evaluate(FOCUS_SLIDER % "jaw")
            page.press("End", 35)
            _wait(lambda: jaw.value == pytest.approx(jaw.max), 20, "the jaw slider to reach the server")
            time.sleep(1.0)
            after = view()
            cv2.imwrite(str(tmp_path / "after.png"), after[..., ::-1])
            changed = np.abs(after.astype(int) - before.astype(int)).max(-1) > 30
            assert changed.mean() > 0.002, changed.mean()
            ys, _ = np.nonzero(changed)
            # the change is in the lower half of the head's extent on screen, where the jaw is
            rows = np.nonzero((before < 200).any(-1).any(1))[0]
            assert np.median(ys) > (rows.min() + rows.max()) / 2

            # the project's rasterizer renders the browser's current view, on a button press in the page
            assert page.evaluate(CLICK % ("button", "render this view"))
            _wait(lambda: viewer.last_render is not None, 30, "the gft render")
            img = viewer.last_render
            assert img.shape[0] == viewer.render_height and (img < 200).any(-1).mean() > 0.02

            # playback: the play checkbox advances the frame slider
            assert page.evaluate(CLICK % ("input[type=checkbox]", "play"))
            _wait(lambda: viewer.frame.value > 0, 20, "playback")
            assert viewer.play.value

            # the avatar PLY (posed at frame 0), read as splat viewers read a 3DGS PLY and drawn by viser's splats
            # alone, looks like the live avatar at frame 0 from the same camera
            plain.scene.set_up_direction(tuple(viewer.up))
            plain.initial_camera.position, plain.initial_camera.look_at = tuple(viewer.eye), tuple(viewer.target)
            plain.initial_camera.up, plain.initial_camera.fov = tuple(viewer.up), viewer.fov
            plain.scene.add_gaussian_splats("/ply", *_splats_as_viewers_read(demo_avatar / "avatar" / "avatar.ply"))
        with Browser(f"http://127.0.0.1:{plain.get_port()}", 800, 520) as page:
            page.call("Emulation.setDeviceMetricsOverride", width=800, height=520, deviceScaleFactor=1, mobile=False)
            _wait(lambda: plain.get_clients(), 60, "the PLY page to connect")
            _wait(lambda: view().std() > 10, 60, "the PLY's splats to be drawn")
            time.sleep(1.0)
            ply = view()
        cv2.imwrite(str(tmp_path / "ply.png"), ply[..., ::-1])
        fg = (ply < 240).any(-1) | (before < 240).any(-1)
        mse = ((ply.astype(float) - before) ** 2)[fg].mean()
        assert mse < 255 ** 2 / 1000, mse  # PSNR over 30 dB (identical for the SH-degree-0 demo avatar)
        print(f"PLY in viser's splats vs the live avatar: {10 * np.log10(255 ** 2 / max(mse, 1e-12)):.1f} dB")
    finally:
        viewer.stop()
        plain.stop()

