"""``gft track`` end to end: real clips with the ICT-FaceKit model (skip without ../shared), bad input, re-runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from gaussian_flametalk.eval.stability import stability_terms
from gaussian_flametalk.geometry.camera import project_points
from gaussian_flametalk.headmodel import eye_openness
from gaussian_flametalk.tracking.landmarks import MultipleFacesError, NoFaceError
from gaussian_flametalk.io.subject import Subject, train_test_split
from gaussian_flametalk.tracking.track import TrackConfig, track
from gaussian_flametalk.io.media import VideoError, ffmpeg_exe, probe_video, write_video


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def _cfg(video: Path, out: Path, shared: Path | None = None, **kw) -> TrackConfig:
    head = f"ict:{shared / 'headmodels/ict-facekit/FaceXModel'}" if shared else "synthetic"
    return TrackConfig(video=video, out=out, head_model=head, progress=False, **kw)


def _report(subject: Subject) -> dict[str, float]:
    """Mean landmark error in % of the inter-ocular distance, and the >5 Hz power share of the nose trajectory of the
    detections and of the fitted (projected) landmarks."""
    with np.load(subject.root / "landmarks.npz") as z:
        detected, found = z["points68"], z["found"]
    with np.load(subject.root / "params.npz") as z:
        fitted = z["landmarks2d"]
    fig = subject.meta["figures"]
    assert found.all(), "these clips show a face in every frame"
    return {
        "error_iod_pct": 100 * fig["reprojection_error_iod"],
        "hf_detected": stability_terms(detected, subject.fps).high_freq_share,
        "hf_fitted": stability_terms(fitted, subject.fps).high_freq_share,
    }


def test_real_clip_v1_end_to_end(shared_dir, tmp_path):
    """The issue's acceptance figures on v1 (20 s, 500 frames): error <= 3 % IOD, fit smoother than detections."""
    out = tmp_path / "v1"
    track(_cfg(shared_dir / "data/videos/v1_german_news_anchor_20s.mp4", out, shared_dir))
    subject = Subject.open(out)
    for name in ("frames", "masks", "landmarks.npz", "params.npz", "camera.json", "audio.wav", "overlay.mp4"):
        assert (out / name).exists(), name
    assert subject.n_frames == 500 and len(list((out / "frames").glob("*.jpg"))) == 500
    assert subject.frame(0).shape == (512, 512, 3) and subject.mask(0).shape == (512, 512)
    r = _report(subject)
    t = subject.meta["timings"]
    print(f"\nv1: landmark error {r['error_iod_pct']:.2f} % IOD; nose power above 5 Hz: detected {r['hf_detected']:.4f}, "
          f"fitted {r['hf_fitted']:.4f}; timings {', '.join(f'{k} {v:.1f}' for k, v in t.items())}; "
          f"fps: detect {subject.meta['figures']['detect_fps']:.1f}, fit {subject.meta['figures']['fit_fps']:.1f}")
    assert r["error_iod_pct"] <= 3.0
    assert r["hf_fitted"] < r["hf_detected"]
    params = subject.params()
    assert params.batch == 500 and np.isfinite(params.expression.numpy()).all()
    info = probe_video(out / "overlay.mp4")
    assert info.has_audio and info.width == 512
    assert subject.head_model().kind == "ict"
    _check_eyes(subject)


def _check_eyes(subject: Subject) -> None:
    """The tracked mesh closes its eyes where the person blinks: mediapipe's and ICT-FaceKit's lid points do not open
    equally far, which the fit's eye stage corrects (before it, v1's mesh kept 30 % of its median eye opening at the
    deepest blink, where the person's detected eyes keep 19 %; with it, 18 %)."""
    model = subject.head_model()
    with np.load(subject.root / "landmarks.npz") as z:
        detected = torch.from_numpy(z["points68"]).float()
    params = subject.params()
    with torch.no_grad():
        cam = subject.camera()
        mesh = project_points(cam.world_to_camera(model.landmarks(model.forward_params(params))), cam.K)
    seen, fitted = eye_openness(detected).mean(-1), eye_openness(mesh).mean(-1)
    blink = int(seen.argmin())
    kept = float(fitted[blink] / fitted.median())
    print(f"eyes: deepest blink at frame {blink} (detected openness {float(seen[blink] / seen.median()):.2f} of the "
          f"median), the mesh keeps {kept:.2f}")
    assert kept <= 0.25


def test_portrait_clip_keeps_the_head_inside_the_crop(shared_dir, tmp_path):
    """v2 (portrait, 1080x1920 HEVC), first 4 s: tracked with a square crop; the fitted landmarks stay well inside."""
    clip = tmp_path / "v2_4s.mp4"
    _ffmpeg("-i", str(shared_dir / "data/videos/v2_latentsync_demo2_man_20s.mp4"), "-t", "4", "-c", "copy", str(clip))
    out = tmp_path / "v2"
    track(_cfg(clip, out, shared_dir, overlay=False))
    subject = Subject.open(out)
    with np.load(out / "landmarks.npz") as z:
        pts = z["points68"]
    assert subject.video["height"] > subject.video["width"]  # portrait source
    brow_to_chin = pts[:, 8, 1] - pts[:, 17:27, 1].min(1)
    head_top = pts[:, 17:27, 1].min(1) - 0.5 * brow_to_chin  # the skull rises about half a face above the brows
    assert (head_top > 0).all() and (pts[..., 1] < 512).all() and (pts[..., 0] > 0).all() and (pts[..., 0] < 512).all()
    assert _report(subject)["error_iod_pct"] <= 3.0


def test_rerun_is_a_no_op_and_force_redoes(tmp_path, shared_dir):
    clip = tmp_path / "v4_2s.mp4"
    _ffmpeg("-i", str(shared_dir / "data/videos/v4_trump_oval_office_10s.mp4"), "-t", "2", "-c", "copy", str(clip))
    out = tmp_path / "s"
    track(_cfg(clip, out, shared_dir, overlay=False))
    stamp = (out / "meta.json").stat().st_mtime_ns
    track(_cfg(clip, out, shared_dir, overlay=False))
    assert (out / "meta.json").stat().st_mtime_ns == stamp
    track(_cfg(clip, out, shared_dir, overlay=False, force=True))
    assert (out / "meta.json").stat().st_mtime_ns != stamp
    assert not out.with_name("s.partial").exists()


def test_bad_inputs_fail_early_and_leave_no_finished_subject(tmp_path):
    out = tmp_path / "subject"
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        track(_cfg(tmp_path / "nowhere.mp4", out))
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video")
    with pytest.raises(VideoError, match="notes.mp4"):
        track(_cfg(text, out))
    noface = tmp_path / "pattern.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25:duration=2", "-pix_fmt", "yuv420p", str(noface))
    with pytest.raises(NoFaceError, match="pattern.mp4"):
        track(_cfg(noface, out))
    assert not (out / "meta.json").exists()


def test_two_faces_are_refused(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    face = skimage_data.astronaut()[:300, 60:360]  # the astronaut's head and shoulders
    frame = np.concatenate([face, face], axis=1)  # two people side by side
    clip = tmp_path / "two.mp4"
    write_video(clip, [frame] * 30, 25.0)
    with pytest.raises(MultipleFacesError, match="two.mp4"):
        track(_cfg(clip, tmp_path / "out"))
    assert not (tmp_path / "out" / "meta.json").exists()


def test_train_test_split():
    train, test = train_test_split(500, 25.0)
    assert len(test) == 100 and train[-1] == 399 and test[0] == 400
    train, test = train_test_split(25 * 200, 25.0)  # 200 s: the last 30 s
    assert len(test) == 750
    with pytest.raises(FileNotFoundError, match="meta.json"):
        Subject.open(Path("/nonexistent/subject"))
