"""``gft batch``: the manifest (YAML, CSV, bad entries), the plan's checks, one bad clip in-process, and the issue's
end-to-end check on a local Ray with 2 workers over 3 clips (two real ../shared clips cut to 2.5 s, one corrupt file):
the good clips finish, the bad one fails with its message, and a re-run does no repeated work (timed)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from gaussian_flametalk.avatar.train import DensifyOptions
from gaussian_flametalk.errors import GftError
from gaussian_flametalk.flametalk.model import FlameTalkArch
from gaussian_flametalk.io.media import ffmpeg_exe
from gaussian_flametalk.pipeline.batch import BatchConfig, batch, make_plan
from gaussian_flametalk.pipeline.batch_exec import local_workers, parse_resources, ray_available
from gaussian_flametalk.pipeline.batch_stages import finished_meta
from gaussian_flametalk.pipeline.manifest import ManifestError, read_manifest

#: stage settings that keep a 2.5 s clip's chain to seconds (the real code paths, small sizes)
QUICK = {
    "track": {"resolution": 256, "overlay": False, "rigid_iters": 10, "full_iters": 4, "smooth_iters": 15},
    "train-avatar": {"iterations": 30, "resolution": 64, "max_triangles": 2000, "checkpoint_every": 30,
                     "densify": {"opacity_resets": 0}, "sh_degree": 0, "grid_frames": 1},
    "train-talk": {"iterations": 8, "seq_frames": 25, "audio_encoder": "mel", "checkpoint_every": 10},
    "train-talk-prior": {"iterations": 10},
}


def _yaml(path: Path, clips: list[dict], defaults: dict) -> Path:
    path.write_text(json.dumps({"defaults": defaults, "clips": clips}))  # JSON is YAML
    return path


def test_yaml_manifest_types_paths_and_defaults(tmp_path):
    m = _yaml(tmp_path / "m.yaml", [
        {"video": "a.mp4", "speech": ["s.wav"], "train-avatar": {"max-triangles": 50}},
        {"video": "/abs/b.mov", "name": "bee", "head_model": "ict:models/FaceX", "track": {"resolution": 128}},
    ], {"head_model": "synthetic", "train-avatar": {"iterations": 7, "max-triangles": 9},
        "train-talk": {"audio_encoder": "mel", "iterations": 5}, "train-talk-prior": {"model": {"dim": 32}}})
    clips, prior = read_manifest(m)
    a, b = clips
    assert (a.name, a.video, a.head_model, a.speech) == ("a", tmp_path / "a.mp4", "synthetic", (tmp_path / "s.wav",))
    assert a.options["train-avatar"] == {"iterations": 7, "max-triangles": 50}  # the clip's own option wins
    assert (b.name, b.video, b.head_model) == ("bee", Path("/abs/b.mov"), f"ict:{tmp_path / 'models/FaceX'}")
    assert prior == {"audio_encoder": "mel", "model.dim": 32}  # the clips' encoder, not their (adaptation) length
    plan = make_plan(BatchConfig(manifest=m, out=tmp_path / "root", stages="train-talk,track,train-talk-prior"))
    assert plan.stages == ("track", "train-talk-prior", "train-talk")  # run order, whatever the order given
    track = plan.tasks[("bee", "track")].options
    assert track["resolution"] == 128 and track["out"] == (tmp_path / "root" / "bee").resolve()
    talk = plan.tasks[("a", "train-talk")].options
    assert talk["init"] == (tmp_path / "root" / "talk-prior").resolve() and talk["iterations"] == 5
    assert plan.tasks[(None, "train-talk-prior")].options["iterations"] == 120


def test_csv_manifest(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("video,name,speech,train-avatar.iterations,track.overlay,train-avatar.regions\n"
                 "x.mp4,,one.wav;two.wav,30,false,face lips\n"
                 "y.mp4,why,,,,\n")
    x, y = read_manifest(m)[0]
    assert x.speech == (tmp_path / "one.wav", tmp_path / "two.wav") and y.name == "why" and y.options == {}
    plan = make_plan(BatchConfig(manifest=m, out=tmp_path / "r", stages="track,train-avatar", head_model="synthetic"))
    opts = plan.tasks[("x", "train-avatar")].options
    assert opts["iterations"] == 30 and opts["regions"] == ("face", "lips")
    assert plan.tasks[("x", "track")].options["overlay"] is False


def test_group_options_merge_with_the_defaults_one_by_one(tmp_path):
    """A group's options (``densify.*``, ``model.*``) as a YAML mapping or dotted names, merged option by option."""
    m = _yaml(tmp_path / "m.yaml", [{"video": "a.mp4", "train-avatar": {"densify": {"end": 0.6}}},
                                    {"video": "b.mp4", "train-avatar": {"densify.grad-threshold": 1e-3}}],
              {"train-avatar": {"densify": {"start": 0.2, "every": 7}}, "train-talk": {"model.dim": 32}})
    plan = make_plan(BatchConfig(manifest=m, out=tmp_path / "root", stages="train-avatar,train-talk"))
    a, b = (plan.tasks[(c, "train-avatar")].options["densify"] for c in ("a", "b"))
    assert a == DensifyOptions(start=0.2, end=0.6, every=7)
    assert b == DensifyOptions(start=0.2, every=7, grad_threshold=1e-3)
    assert plan.tasks[("a", "train-talk")].options["model"] == FlameTalkArch(dim=32)
    csv = tmp_path / "m.csv"
    csv.write_text("video,train-avatar.densify.every,train-avatar.densify.opacity-resets,train-talk.model.heads\n"
                   "x.mp4,0,0,2\n")
    plan = make_plan(BatchConfig(manifest=csv, out=tmp_path / "r", stages="train-avatar,train-talk"))
    assert plan.tasks[("x", "train-avatar")].options["densify"] == DensifyOptions(every=0, opacity_resets=0)
    assert plan.tasks[("x", "train-talk")].config().model == FlameTalkArch(heads=2)


@pytest.mark.parametrize("clips, defaults, message", [
    ([{"video": "a.mp4"}, {"video": "b/a.mp4"}], {}, "share the name 'a'"),
    ([{"video": "a.mp4", "train-avatar": {"iteratons": 3}}], {}, "has no option 'iteratons'"),
    ([{"video": "a.mp4", "train-avatar": {"iterations": "many"}}], {}, "expected an integer"),
    ([{"video": "a.mp4", "track": {"out": "x"}}], {}, "set by gft batch itself"),
    ([{"video": "a.mp4", "train-talk": {"infer_mode": "sideways"}}], {}, "'sideways' is not one of"),
    ([{"video": "a.mp4", "train-avatar": {"densify": {"grad-threshold": -1}}}], {},
     r"train-avatar: --densify\.grad-threshold: -1\.0 is out of range"),
    ([{"video": "a.mp4", "train-avatar": {"densify.every": "often"}}], {}, "'densify.every': expected an integer"),
    ([{"video": "a.mp4", "train-avatar": {"densify.typo": 3}}], {}, "has no option 'densify.typo'"),
    ([{"video": "a.mp4", "train-avatar": {"densify": 3}}], {}, "'densify' is a group of options"),
    ([{"video": "a.mp4", "train-talk": {"model": {"dim": 0}}}], {}, r"--model\.dim: 0 is out of range"),
    ([{"name": "nothing"}], {}, "has no video"),
    ([{"video": "a.mp4", "name": "../up"}], {}, "is not a folder name"),
    ([{"video": "a.mp4", "train-talk-prior": {"iterations": 3}}], {}, "belong in the manifest's defaults"),
])
def test_bad_manifests_fail_before_any_work_naming_the_clip(tmp_path, clips, defaults, message):
    m = _yaml(tmp_path / "m.yaml", clips, defaults)
    with pytest.raises(ManifestError, match=message) as e:
        make_plan(BatchConfig(manifest=m, out=tmp_path / "root", stages="track,train-avatar,train-talk",
                              head_model="synthetic"))
    assert str(e.value).startswith(f"{m}: clip")
    assert not (tmp_path / "root").exists()


def test_options_resources_and_manifest_files_are_checked():
    with pytest.raises(ValueError, match="--stages: train-avatr"):
        BatchConfig(manifest=Path("m.yaml"), out=Path("r"), stages="track,train-avatr")
    with pytest.raises(ValueError, match="--resources"):
        BatchConfig(manifest=Path("m.yaml"), out=Path("r"), resources=("train-avatar.gpu=1",))
    resources = parse_resources(("train-avatar.gpus=0.5", "track.memory-gb=3"))
    assert resources["train-avatar"].gpus == 0.5 and resources["track"].memory_gb == 3
    assert local_workers(3, resources) == 3
    assert 1 <= local_workers(0, resources) <= (os.cpu_count() or 1)  # as many as the CPUs and memory fit
    assert local_workers(0, parse_resources(("benchmark.memory_gb=100000",))) == 1  # one slot at least
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest("/nonexistent/m.yaml")


def test_without_ray_a_bad_clip_fails_its_own_chain_in_process(tmp_path, monkeypatch, capsys):
    import gaussian_flametalk.pipeline.batch as batch_module

    monkeypatch.setattr(batch_module, "ray_available", lambda: False)  # as on a machine without the extra
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    m = _yaml(tmp_path / "m.yaml", [{"video": "bad.mp4"}, {"video": "missing.mp4"}], {"head_model": "synthetic"})
    cfg = BatchConfig(manifest=m, out=tmp_path / "root", stages="track,train-avatar", progress=False)
    with pytest.raises(GftError, match="Ray is not installed"):
        batch(BatchConfig(**{**cfg.__dict__, "address": "ray://head:10001"}))
    result = batch(cfg)
    assert "running the plan sequentially" in capsys.readouterr().err
    by_name = {c["name"]: c for c in result["clips"]}
    assert result["mode"] == "sequential"
    assert by_name["bad"]["status"] == "failed" and "not a readable video" in by_name["bad"]["error"]
    assert "missing.mp4" in by_name["missing"]["error"]
    assert by_name["bad"]["stages"]["train-avatar"]["status"] == "blocked"
    md = (tmp_path / "root" / "batch.md").read_text()
    assert "not a readable video" in md and json.loads((tmp_path / "root" / "batch.json").read_text())["clips"]
    assert "Traceback" in (tmp_path / "root" / "logs" / "bad.track.log").read_text()


def _cut(src: Path, dst: Path, start: float, seconds: float) -> Path:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-ss", str(start), "-t",
                    str(seconds), "-i", str(src), "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(dst)],
                   check=True)
    return dst


@pytest.mark.shared
@pytest.mark.skipif(not ray_available(), reason="ray is not installed (pip install 'gaussian-flametalk[distributed]')")
def test_ray_batch_two_good_clips_one_corrupt_and_a_rerun_that_does_nothing(shared_dir, tmp_path):
    videos = shared_dir / "data" / "videos"
    sources = ("v1_german_news_anchor_20s.mp4", "v4_trump_oval_office_10s.mp4")
    if not all((videos / c).is_file() for c in sources):
        pytest.skip("the ../shared clips v1 and v4 are not there")
    _cut(videos / sources[0], tmp_path / "anchor.mp4", 1.0, 2.5)
    _cut(videos / sources[1], tmp_path / "office.mp4", 1.0, 2.5)
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)  # a header, no movie
    m = _yaml(tmp_path / "m.yaml", [{"video": "anchor.mp4"}, {"video": "office.mp4"}, {"video": "broken.mp4"}],
              {"head_model": f"ict:{shared_dir / 'headmodels/ict-facekit/FaceXModel'}", **QUICK})
    cfg = BatchConfig(manifest=m, out=tmp_path / "root", workers=2, progress=False,
                      stages="track,train-avatar,train-talk-prior,train-talk")
    t0 = time.perf_counter()
    first = batch(cfg)
    t_first = time.perf_counter() - t0
    clips = {c["name"]: c for c in first["clips"]}
    assert first["mode"] == "ray" and first["workers"] == 2
    for name in ("anchor", "office"):
        c = clips[name]
        assert c["status"] == "done", c["error"]
        assert all(s["status"] == "done" for s in c["stages"].values())
        assert c["figures"]["tracking_error_iod"] < 0.05  # real tracking: under 5 % of the inter-ocular distance
        assert c["figures"]["avatar_test_psnr"] > 12 and c["figures"]["talk_lve_mm"] > 0
        assert c["figures"]["talk_init"]  # adapted from the batch's prior
    assert clips["broken"]["status"] == "failed" and "broken.mp4" in clips["broken"]["error"]
    assert clips["broken"]["stages"]["train-talk"]["status"] == "blocked"
    assert first["prior"]["status"] == "done" and first["prior"]["figures"]["subjects"] == 2
    busy = sum(s["elapsed_s"] or 0 for c in first["clips"] for s in c["stages"].values())
    assert busy > first["wall_s"] * 0.6, "two workers: the stages' seconds add up to more than most of the wall time"
    assert "broken.mp4" in (tmp_path / "root" / "batch.md").read_text()

    marks = {p: p.stat().st_mtime_ns for p in (tmp_path / "root").rglob("meta.json")}
    t0 = time.perf_counter()
    again = batch(cfg)
    t_again = time.perf_counter() - t0
    print(f"\ngft batch, Ray with 2 workers, 3 clips: first run {t_first:.1f} s, re-run {t_again:.1f} s")
    for c in again["clips"]:
        if c["name"] != "broken":
            assert all(s["status"] == "reused" for s in c["stages"].values()), c
            assert c["figures"]["avatar_test_psnr"] == clips[c["name"]]["figures"]["avatar_test_psnr"]
    assert again["prior"]["status"] == "reused"
    assert {p: p.stat().st_mtime_ns for p in marks} == marks  # nothing was rewritten
    assert t_again < t_first / 2


def test_a_finished_batch_starts_nothing_and_reuses_every_stage(tmp_path):
    """Finished stages are recognised by their valid meta.json alone (a prior included): nothing is submitted, so no
    executor is even started, and the figures come back from the metas."""
    m = _yaml(tmp_path / "m.yaml", [{"video": "a.mp4"}, {"video": "b.mp4"}], {"head_model": "synthetic"})
    root = tmp_path / "root"
    for name in ("a", "b"):
        (root / name / "talk").mkdir(parents=True)
        track = {"stage": "track", "figures": {"reprojection_error_iod": 0.02}}
        (root / name / "meta.json").write_text(json.dumps(track))
        (root / name / "talk" / "meta.json").write_text(json.dumps({"stage": "train-talk", "test": {
            name: {"lve_mm": 1.5, "baseline_lve_mm": 2.0}}}))
    (root / "talk-prior").mkdir()
    (root / "talk-prior" / "meta.json").write_text(json.dumps({"stage": "train-talk", "subjects": ["a", "b"]}))
    result = batch(BatchConfig(manifest=m, out=root, stages="track,train-talk-prior,train-talk", progress=False))
    assert result["mode"] == "nothing to run" and result["prior"]["status"] == "reused"
    for c in result["clips"]:
        assert c["status"] == "done" and {s["status"] for s in c["stages"].values()} == {"reused"}
        assert c["figures"]["tracking_error_iod"] == 0.02 and c["figures"]["talk_lve_mm"] == 1.5
    (root / "a" / "talk" / "meta.json").write_text("{not json")  # a torn meta is not a finished stage
    plan = make_plan(BatchConfig(manifest=m, out=root, stages="train-talk", head_model="synthetic"))
    assert finished_meta("train-talk", plan.tasks[("a", "train-talk")].marker) is None
    assert finished_meta("train-talk", plan.tasks[("b", "train-talk")].marker) is not None
