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
