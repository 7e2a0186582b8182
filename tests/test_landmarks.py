"""Landmarks (mediapipe 478 -> iBUG 68), clip policies, the fixed crop and foreground masks, on real faces."""

from __future__ import annotations

import sys
import time
import types

import numpy as np
import pytest

from gaussian_flametalk.headmodel import inter_ocular
from gaussian_flametalk.io.media import CropBox
from gaussian_flametalk.tracking.crop import CropMargin, crop_from_detections, find_crop
from gaussian_flametalk.tracking.landmarks import (
    MEDIAPIPE_TO_IBUG68,
    ClipLandmarks,
    DetectorUnavailableError,
    MediapipeDetector,
    MultipleFacesError,
    NoFaceError,
    check_faces,
    detect_clip,
    interpolate_missing,
    make_detector,
)
from gaussian_flametalk.tracking.masks import ForegroundSegmenter, largest_component, segment_clip
from gaussian_flametalk.io.media import iter_frames, probe_video, write_video

skdata = pytest.importorskip("skimage.data")

# Read off skimage.data.astronaut() (512x512) by eye, on a 6x enlargement of the face:
FACE_BOX = (175, 80, 282, 186)  # x0, y0, x1, y1: brows to chin, cheek to cheek, a few px of slack
PUPILS = ((203, 101), (247, 104))  # subject's right eye (image left), left eye
NOSE_TIP = (223, 127)
MOUTH = (223, 145)
CHIN = (222, 177)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


@pytest.fixture(scope="module")
def still_detector():
    with MediapipeDetector(static_image_mode=True, max_num_faces=2) as det:
        yield det


def two_faces(img: np.ndarray) -> np.ndarray:
    """The astronaut's head twice, side by side, enlarged: (400, 800, 3)."""
    import cv2

    head = img[30:230, 125:325]
    canvas = np.concatenate([head, head], axis=1)
    return cv2.resize(canvas, (800, 400), interpolation=cv2.INTER_CUBIC)


# ---------------------------------------------------------------------------------------------- mapping

def test_mapping_table():
    assert len(MEDIAPIPE_TO_IBUG68) == 68
    assert all(0 <= i < 478 for idx in MEDIAPIPE_TO_IBUG68 for i in idx)
    assert MEDIAPIPE_TO_IBUG68[8] == (152,) and MEDIAPIPE_TO_IBUG68[36] == (33,) and MEDIAPIPE_TO_IBUG68[45] == (263,)


# ---------------------------------------------------------------------------------------------- one image

def test_astronaut_points_on_the_face(still_detector, astronaut):
    faces = still_detector.detect(astronaut)
    assert len(faces) == 1
    f = faces[0]
    p = f.points68
    assert p.shape == (68, 2) and p.dtype == np.float32
    assert f.dense is not None and f.dense.shape == (478, 3)
    assert f.confidence.shape == (68,) and (f.confidence > 0).all() and (f.confidence <= 1).all()
    x0, y0, x1, y1 = FACE_BOX
    assert (p[:, 0] > x0).all() and (p[:, 0] < x1).all() and (p[:, 1] > y0).all() and (p[:, 1] < y1).all()
    np.testing.assert_allclose(f.bbox, [*p.min(0), *p.max(0)], atol=1e-4)
    right_eye, left_eye = p[36:42].mean(0), p[42:48].mean(0)
    assert np.linalg.norm(right_eye - PUPILS[0]) < 6 and np.linalg.norm(left_eye - PUPILS[1]) < 6
    assert np.linalg.norm(p[30] - NOSE_TIP) < 8
    assert np.linalg.norm(p[48:68].mean(0) - MOUTH) < 8
    assert np.linalg.norm(p[8] - CHIN) < 8
    # layout: brows above eyes above nose tip above mouth above chin; subject's right on the image left
    assert p[17:27, 1].mean() < p[36:48, 1].mean() < p[30, 1] < p[48:68, 1].mean() < p[8, 1]
    assert p[0, 0] < p[8, 0] < p[16, 0] and right_eye[0] < left_eye[0]
    assert p[36, 0] < p[39, 0] < p[42, 0] < p[45, 0] and p[48, 0] < p[54, 0]
    assert 50 < inter_ocular(p) < 75  # outer eye corners, px


def test_blank_image_has_no_face(still_detector):
    assert still_detector.detect(np.zeros((256, 256, 3), np.uint8)) == []
    assert still_detector.detect(np.full((300, 400, 3), 200, np.uint8)) == []
    with pytest.raises(ValueError, match="uint8"):
        still_detector.detect(np.zeros((64, 64), np.uint8))


def test_two_faces(still_detector, astronaut):
    canvas = two_faces(astronaut)
    faces = still_detector.detect(canvas)
    assert len(faces) == 2
    centres = sorted(float(f.center[0]) for f in faces)
    assert centres[0] < 400 < centres[1]  # one face in each half
    with MediapipeDetector(max_num_faces=2) as video_det:  # tracking mode over a clip
        clip = detect_clip([canvas] * 6, video_det, progress=False)
    assert clip.found.all() and (clip.n_faces == 2).all()
    with pytest.raises(MultipleFacesError, match="two_people.mp4"):
        check_faces(clip, "two_people.mp4")


def test_bad_videos_fail_in_the_crop_scan(tmp_path, astronaut):
    """The cheap scan already rejects a video of two people and a video without a face, naming the file."""
    two = tmp_path / "two_people.mp4"
    write_video(two, [two_faces(astronaut)] * 10, fps=10)
    with MediapipeDetector() as det:
        box, scan = find_crop(two, det, progress=False)
        assert (scan.n_faces == 2).mean() > 0.5
        with pytest.raises(MultipleFacesError, match="two_people.mp4"):
            check_faces(scan, two)
        none = tmp_path / "no_face.mp4"
        write_video(none, [np.full((240, 320, 3), v, np.uint8) for v in range(0, 250, 25)], fps=10)
        with pytest.raises(NoFaceError, match="no_face.mp4"):
            find_crop(none, det, progress=False)


# ---------------------------------------------------------------------------------------------- clips

def synthetic_clip(T: int = 20) -> ClipLandmarks:
    t = np.arange(T, dtype=np.float32)
    base = np.random.default_rng(0).uniform(50, 200, (68, 2)).astype(np.float32)
    pts = base[None] + np.stack([2.0 * t, -0.5 * t], axis=1)[:, None, :]  # linear motion
    dense = np.repeat(pts[:, :1, :], 3, axis=2)[:, :, :3] * np.array([1, 1, 0], np.float32)
    return ClipLandmarks(points68=pts, dense=np.repeat(dense, 5, axis=1), confidence=np.ones((T, 68), np.float32),
                         found=np.ones(T, bool), n_faces=np.ones(T, np.int64), image_size=(256, 256),
                         detector="synthetic")


def test_interpolate_missing_is_linear_with_nearest_edges():
    truth = synthetic_clip()
    clip = synthetic_clip()
    gone = np.array([0, 1, 5, 6, 7, 12, 19])
    clip.found[gone] = False
    clip.points68[gone] = np.nan
    clip.dense[gone] = np.nan
    clip.confidence[gone] = 0
    clip.n_faces[gone] = 0
    out = interpolate_missing(clip)
    inner = np.array([5, 6, 7, 12])
    np.testing.assert_allclose(out.points68[inner], truth.points68[inner], atol=1e-3)
    np.testing.assert_allclose(out.dense[inner], truth.dense[inner], atol=1e-3)
    np.testing.assert_allclose(out.points68[[0, 1]], truth.points68[[2, 2]], atol=1e-5)  # leading edge: nearest
    np.testing.assert_allclose(out.points68[19], truth.points68[18], atol=1e-5)  # trailing edge: nearest
    assert not out.found[gone].any() and out.found.sum() == 20 - len(gone)  # still flagged
    assert (out.confidence[gone] == 0).all() and (out.confidence[~clip.found] == 0).all()
    assert np.isnan(clip.points68[gone]).all()  # input untouched
    assert out.meta["interpolated_frames"] == len(gone)


def test_check_faces_policies():
    clip = synthetic_clip()
    check_faces(clip, "ok.mp4")  # one face everywhere
    clip.n_faces[:2] = 2  # 10 %: tolerated
    check_faces(clip, "ok.mp4")
    clip.n_faces[:3] = 2  # 15 %: rejected
    with pytest.raises(MultipleFacesError, match="crowd.mp4"):
        check_faces(clip, "crowd.mp4")
    empty = synthetic_clip()
    empty.found[:] = False
    empty.n_faces[:] = 0
    with pytest.raises(NoFaceError, match="empty.mp4"):
        check_faces(empty, "empty.mp4")
    with pytest.raises(NoFaceError):
        interpolate_missing(empty)


def test_save_load_round_trip(tmp_path):
    clip = synthetic_clip()
    clip.found[3] = False
    path = tmp_path / "cache" / "landmarks.npz"
    clip.save(path)
    back = ClipLandmarks.load(path)
    for name in ("points68", "dense", "confidence", "found", "n_faces"):
        np.testing.assert_array_equal(getattr(back, name), getattr(clip, name))
    assert back.image_size == (256, 256) and back.detector == "synthetic"
    assert [p.name for p in path.parent.iterdir()] == ["landmarks.npz"]
    (tmp_path / "junk.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="junk.npz"):
        ClipLandmarks.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        ClipLandmarks.load(tmp_path / "missing.npz")


def test_make_detector_and_face_alignment_errors(tmp_path, monkeypatch):
    assert isinstance(make_detector("mediapipe"), MediapipeDetector)
    with pytest.raises(ValueError, match="unknown landmark detector"):
        make_detector("dlib")
    # face-alignment installed but its weights absent: the error names the files and the folder
    monkeypatch.setitem(sys.modules, "face_alignment", types.ModuleType("face_alignment"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(DetectorUnavailableError, match=r"2DFAN4.*\.zip.*checkpoints"):
        make_detector("face-alignment")
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # not installed
    with pytest.raises(DetectorUnavailableError, match="pip install face-alignment"):
        make_detector("face-alignment")


# ---------------------------------------------------------------------------------------------- crop rule

def test_crop_rule_on_synthetic_track():
    """A face box 100 px tall drifting 40 px: the square holds the union plus the head margins."""
    T = 50
    boxes = np.stack([np.array([300.0, 400.0, 380.0, 500.0]) + [d, 0, d, 0] for d in np.linspace(0, 40, T)])
    boxes[10] = [900, 50, 1000, 120]  # a misdetection far away: ignored
    boxes[20] = np.nan  # no face
    box = crop_from_detections(boxes, 1080, 1920)
    m = CropMargin()
    x0, y0, x1, y1 = box.as_xyxy()
    assert x0 <= 300 - m.side * 100 and x1 >= 420 + m.side * 100
    assert y0 <= 400 - m.top * 100 and y1 >= 500 + m.bottom * 100
    assert box.size % 2 == 0 and box.size <= 1.1 * (100 * (1 + m.top + m.bottom))
    # pre-cropped video (head fills a 256 frame): the square stays inside the frame, no padding
    small = crop_from_detections(np.array([[70.0, 80.0, 186.0, 200.0]]), 256, 256)
    assert small == CropBox(0, 0, 256)
    with pytest.raises(ValueError, match="no face"):
        crop_from_detections(np.full((5, 4), np.nan), 256, 256)
    # coordinate mapping to and from the resized crop
    pts = np.array([[box.x + 10.0, box.y + 20.0]])
    np.testing.assert_allclose(box.from_crop(box.to_crop(pts, 512), 512), pts, atol=1e-3)


# ---------------------------------------------------------------------------------------------- masks

def test_foreground_mask(astronaut):
    with ForegroundSegmenter() as seg:
        mask = seg.segment(astronaut)
        assert mask.shape == astronaut.shape[:2] and mask.dtype == np.float32
        assert 0.0 <= mask.min() and mask.max() <= 1.0
        x0, y0, x1, y1 = FACE_BOX
        assert mask[y0:y1, x0:x1].mean() > 0.8
        assert mask[0:40, 300:370].mean() < 0.2  # grey wall above the shuttle, top right
        masks = segment_clip([astronaut] * 3, seg, progress=False)
    assert masks.shape == (3, 512, 512) and masks.dtype == np.uint8
    np.testing.assert_allclose(masks[0] / 255.0, mask, atol=1 / 255 + 1e-6)


def test_largest_component_drops_detached_blobs():
    """A person (disc over a torso block, feathered edge) and a detached blob: the blob goes, the person and its
    soft edge stay; a mask of one region comes back unchanged."""
    import cv2

    yy, xx = np.mgrid[0:128, 0:128]
    person = (((yy - 50) ** 2 + (xx - 60) ** 2) < 30 ** 2) | ((yy > 80) & (xx > 20) & (xx < 100))
    blob = ((yy - 40) ** 2 + (xx - 120) ** 2) < 6 ** 2
    soft = cv2.GaussianBlur((person | blob).astype(np.float32), (0, 0), 1.0)
    out = largest_component(soft)
    assert out.dtype == np.float32
    assert out[blob].max() == 0.0
    np.testing.assert_array_equal(out[person], soft[person])
    edge = (soft > 0.02) & (soft < 0.5) & ~blob & (np.abs(xx - 120) > 10)  # the person's feathered edge
    np.testing.assert_array_equal(out[edge], soft[edge])
    alone = cv2.GaussianBlur(person.astype(np.float32), (0, 0), 1.0)
    np.testing.assert_array_equal(largest_component(alone), alone)
    np.testing.assert_array_equal(largest_component(np.zeros((8, 8), np.float32)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="components"):
        ForegroundSegmenter(components="biggest")


@pytest.mark.shared
def test_mask_keeps_the_person_not_the_flag(shared_dir):
    """v4 (the Oval Office): the segmenter takes part of the flag right of the head for a person; the default mask
    keeps only the person (one region), the raw one has the flag."""
    import cv2

    path = shared_dir / "data" / "videos" / "v4_trump_oval_office_10s.mp4"
    frames = [f for i, f in enumerate(iter_frames(path, fps=5.0)) if i in (30, 45)]
    with ForegroundSegmenter(components="all") as raw, ForegroundSegmenter() as seg:
        for f in frames:
            f = cv2.resize(f[:, f.shape[1] // 2 - f.shape[0] // 2:][:, :f.shape[0]], (256, 256))
            m_raw, m = raw.segment(f), seg.segment(f)
            n_raw = cv2.connectedComponents((m_raw >= 0.5).astype(np.uint8))[0] - 1
            n = cv2.connectedComponents((m >= 0.5).astype(np.uint8))[0] - 1
            assert n_raw >= 2 and n == 1
            assert (m_raw >= 0.5).sum() - (m >= 0.5).sum() >= 50  # flag pixels dropped
            assert m[100:160, 100:156].mean() > 0.9  # the face stays


# ---------------------------------------------------------------------------------------------- real videos

@pytest.mark.shared
@pytest.mark.parametrize("name", ["v1_german_news_anchor_20s.mp4", "v4_trump_oval_office_10s.mp4",
                                  "x1_styletalk_obama_clip2_256px_30s_noaudio.mp4"])
def test_face_found_in_real_videos(shared_dir, name):
    path = shared_dir / "data" / "videos" / name
    info = probe_video(path)
    t0 = time.perf_counter()
    with MediapipeDetector() as det:  # tracking mode, up to 2 faces: full clip at 25 fps
        clip = detect_clip(iter_frames(path, fps=25.0, info=info), det, progress=False)
    dt = time.perf_counter() - t0
    print(f"\n{name}: {len(clip)} frames at 25 fps in {dt:.1f} s ({len(clip) / dt:.1f} fps), "
          f"face in {100 * clip.found.mean():.1f} %")
    assert len(clip) == pytest.approx(info.duration * 25, abs=2)
    assert clip.found.mean() >= 0.98
    check_faces(clip, name)  # one person: no error
    iod = inter_ocular(clip.points68[clip.found])
    assert 0.1 * info.width < np.median(iod) < 0.6 * info.width


@pytest.mark.shared
def test_portrait_crop_holds_the_head(shared_dir):
    """v2 (1080x1920): the crop from a 10 fps scan holds every frame's head at 25 fps: all 68 points, and the
    brow-to-chin height again above the brows (forehead and hair)."""
    path = shared_dir / "data" / "videos" / "v2_latentsync_demo2_man_20s.mp4"
    info = probe_video(path)
    with MediapipeDetector() as det:
        t0 = time.perf_counter()
        box, scan = find_crop(path, det, progress=False)  # 10 fps, long side 640
        t_scan = time.perf_counter() - t0
        clip = detect_clip(iter_frames(path, fps=25.0, max_side=640, info=info), det, progress=False)
    print(f"\nv2 crop {box} from a {len(scan.times)}-frame scan in {t_scan:.1f} s")
    assert clip.found.mean() >= 0.98
    assert box.size < min(info.width, info.height)  # a real crop, not the whole frame
    pts = clip.points68[clip.found] * (info.width / clip.image_size[0])  # back to source pixels
    assert box.contains(pts).all()
    brow_top = pts[:, 17:27, 1].min(axis=1)
    face_h = pts[:, 8, 1] - brow_top
    assert (brow_top - face_h >= box.y).all()
    assert (pts[:, 8, 1] + 0.15 * face_h <= box.y + box.size).all()  # chin and some neck
