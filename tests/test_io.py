"""The io layer: atomic writes survive a kill, strict JSON, the stage meta schema, the SUBJECT writer/reader contract,
and the shared resumable training loop (a killed run resumes to exactly the uninterrupted result)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from gaussian_flametalk.atomic import atomic_write, finish_folder, save_npz, start_folder, write_json
from gaussian_flametalk.geometry.camera import Camera
from gaussian_flametalk.headmodel import HeadParams, make_synthetic_head
from gaussian_flametalk.io.meta import META_FORMAT, StageMeta, read_meta, write_meta
from gaussian_flametalk.io.subject import Subject, SubjectWriter
from gaussian_flametalk.io.training import Checkpoint, RunState, restore, run_training


def test_a_kill_between_write_and_rename_never_replaces_the_finished_file(tmp_path):
    target = tmp_path / "result.npz"
    save_npz(target, x=np.arange(10))
    script = textwrap.dedent(f"""
        import os, signal
        from gaussian_flametalk.atomic import atomic_write
        with atomic_write({str(target)!r}) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"partial")
                fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # killed after writing, before the rename
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -9
    with np.load(target) as z:
        assert np.array_equal(z["x"], np.arange(10))  # the old finished file, intact
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert all(p.name.startswith(".result.tmp-") for p in leftovers)  # only a hidden temporary, never the real name


def test_an_error_inside_the_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text('{"v": 2')
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_folder_is_built_aside_and_renamed_into_place(tmp_path):
    """A folder built as a whole (a SUBJECT, the demo subject, a VHAP export) lives in FINAL.partial until it is
    complete: the old finished folder stays as it was until then, a fresh start empties the partial one, a resumed
    one keeps it."""
    final = tmp_path / "S"
    final.mkdir()
    (final / "old.txt").write_text("old")
    work = start_folder(final)
    (work / "new.txt").write_text("new")
    assert work == tmp_path / "S.partial" and sorted(p.name for p in final.iterdir()) == ["old.txt"]
    assert start_folder(final, resume=True) == work and (work / "new.txt").is_file()
    assert not any(start_folder(final).iterdir())  # a fresh start: nothing of the interrupted build
    (work / "new.txt").write_text("new")
    assert finish_folder(final) == final and sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert not work.exists()


def test_json_is_strict_with_nan_as_null(tmp_path):
    path = write_json(tmp_path / "m.json", {"a": float("nan"), "b": [np.float32(1.5), math.inf], "c": np.arange(2),
                                            "d": tmp_path})
    data = json.loads(path.read_text())  # strict parsers accept it
    assert data == {"a": None, "b": [1.5, None], "c": [0, 1], "d": str(tmp_path)}
    assert "NaN" not in path.read_text()


def test_stage_meta_round_trip_and_stage_check(tmp_path):
    meta = StageMeta(stage="train-avatar", config={"iterations": 3}, figures={"psnr": float("nan")},
                     extra={"resumed_from": None})
    d = write_meta(tmp_path / "meta.json", meta)
    assert d["format"] == META_FORMAT and d["figures"]["psnr"] is None
    back = StageMeta.from_dict(read_meta(tmp_path / "meta.json", "train-avatar"))
    assert back.config == {"iterations": 3} and back.extra == {"resumed_from": None}
    with pytest.raises(ValueError, match="expected 'track'"):
        read_meta(tmp_path / "meta.json", "track")
    with pytest.raises(ValueError, match="clash"):
        StageMeta(stage="x", extra={"figures": 1}).to_dict()


def test_subject_writer_and_reader_agree(tmp_path):
    model = make_synthetic_head()
    params = HeadParams.zeros(model, 3)
    params.jaw[:, 0] = torch.tensor([0.0, 0.1, 0.2])
    camera = Camera.look_at((0, 0, 0.7), (0, 0, 0), focal=200.0, width=64, height=64)
    writer = SubjectWriter(tmp_path / "S")
    yy, xx = np.mgrid[0:64, 0:64]
    frames = [np.stack([xx * 4, yy * 4, np.full_like(xx, 60 * k)], -1).astype(np.uint8) for k in range(3)]
    for i, f in enumerate(frames):
        writer.frame(i, f)
        writer.mask(i, np.full((64, 64), 0.5, np.float32))
    writer.params(params)
    writer.camera(camera, 25.0)
    assert not (tmp_path / "S").exists()  # nothing at the destination before finish
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        Subject.open(tmp_path / "S")
    writer.finish(StageMeta(stage="track", inputs={"crop": {"x": 1, "y": 2, "size": 60}},
                            extra={"n_frames": 3, "fps": 25.0, "resolution": 64,
                                   "head_model": {"spec": "synthetic", "kind": model.kind, "n_shape": model.n_shape,
                                                  "n_expression": model.n_expression}}))
    subject = Subject.open(tmp_path / "S")
    assert subject.n_frames == 3 and subject.crop.size == 60 and not (tmp_path / "S.partial").exists()
    assert np.abs(subject.frame(1).astype(int) - frames[1]).mean() < 2  # JPEG q95
    assert abs(subject.mask(0).mean() - 0.5) < 0.01
    assert torch.allclose(subject.params().jaw, params.jaw)
    assert torch.allclose(subject.camera().K, camera.K)
    with pytest.raises(ValueError, match="n_frames"):
        SubjectWriter(tmp_path / "T").finish(StageMeta(stage="track"))


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4))


def _toy_run(path, iterations, kill_at=None):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = _Toy()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    ckpt = Checkpoint(path, {"arch": "toy"})
    state = ckpt.read()
    objects = {"model": model, "optimizer": opt}
    run = restore(state, objects, gen) if state is not None else RunState()

    def step(it):
        if kill_at is not None and it == kill_at:
            raise KeyboardInterrupt
        idx = torch.randint(64, (8,), generator=gen)
        noise = 0.01 * torch.randn(8)  # the global RNG too
        loss = ((x[idx] @ model.w - y[idx] + noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    return run_training(ckpt, run, iterations, step, lambda: objects, gen, checkpoint_every=10, progress=False), model


def test_training_loop_resumes_exactly_and_refuses_another_architecture(tmp_path):
    straight, m1 = _toy_run(tmp_path / "a.pt", 50)
    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path / "b.pt", 50, kill_at=37)  # killed: the checkpoint at 30 survives
    assert torch.load(tmp_path / "b.pt", weights_only=False)["iteration"] == 30
    resumed, m2 = _toy_run(tmp_path / "b.pt", 50)
    assert resumed.resumed_from == 30 and resumed.iteration == 50
    assert torch.equal(m1.w, m2.w)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    assert straight.history[-1]["loss"] < straight.history[0]["loss"]
    with pytest.raises(ValueError, match="arch"):
        Checkpoint(tmp_path / "a.pt", {"arch": "other"}).read()


def test_a_diverged_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    from gaussian_flametalk.errors import GftError, TrainingDivergedError

    gen = torch.Generator().manual_seed(0)
    model = _Toy()
    ckpt = Checkpoint(tmp_path / "c.pt")

    def step(it):
        with torch.no_grad():
            model.w += 1.0 if it < 24 else float("nan")
        return {"loss": float(model.w.sum()), "other": 1.0}

    with pytest.raises(TrainingDivergedError, match=r"iteration 25: loss = nan; .*c\.pt \(iteration 20\) is kept") as e:
        run_training(ckpt, RunState(), 50, step, lambda: {"model": model}, gen, checkpoint_every=10, progress=False)
    assert isinstance(e.value, GftError)
    state = torch.load(tmp_path / "c.pt", weights_only=False)
    assert state["iteration"] == 20 and torch.isfinite(state["model"]["w"]).all()
    assert torch.equal(state["model"]["w"], torch.full((4,), 20.0))


def test_stage_lock_refuses_a_second_writer_and_takes_over_a_stale_lock(tmp_path):
    from gaussian_flametalk.errors import StageBusyError
    from gaussian_flametalk.io.lock import lock_path, stage_lock

    target = tmp_path / "S" / "avatar"
    with stage_lock(target, "train-avatar") as path:
        assert path == lock_path(target) and path.is_file()
        with pytest.raises(StageBusyError, match=r"being written by gft train-avatar \(pid \d+"):
            with stage_lock(target, "train-avatar"):
                pass
    assert not lock_path(target).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    lock_path(target).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "stage": "x"}))
    with stage_lock(target, "train-avatar"):  # the stale lock of a finished process is taken over
        assert json.loads(lock_path(target).read_text())["stage"] == "train-avatar"
