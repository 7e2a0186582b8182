"""PTalker against FlameTalk with the template style (issue 16), on tracked SUBJECTs' held-out test frames.

    python -m gaussian_flametalk.scripts.bench_ptalker SUBJECT SUBJECT [SUBJECT ...] [train-talk options]
        [--out DIR] [--json FILE]

Options are those of ``gft train-talk`` (both models use them identically; ``--ptalker`` is set per run) plus:

- seen subjects (``--seen``, on by default): PTalker (``--ptalker``) and the template-style FlameTalk, each trained
  on every SUBJECT's training frames; every SUBJECT's test split predicted from its audio (PTalker: its one-hot
  identity and its training frames as the motion-style reference);
- unseen subject (``--loso``, on by default): each SUBJECT in turn is left out, both models are trained on the others
  and drive it without fine-tuning (PTalker: no one-hot, motion style from the left-out subject's training frames as
  the reference clip; the template model: its template mesh);
- the mean expression (the subject's training mean) as the baseline.

Scored on the test frames (``--infer-mode``), raw and with ``--project`` (fitted on the subject's training motion),
in millimetres: LVE, FDD (upper face, signed: ground truth minus prediction; :func:`~.bench_talk.talk_metrics`) and
the mouth-opening correlation. Prints the markdown tables; ``--json`` keeps the numbers; checkpoints in OUT/seen_*,
OUT/without_NAME_* (a re-run resumes) or a temporary folder, with OUT/style_space.png, the seen PTalker model's style
space (:func:`~gaussian_flametalk.flametalk.train.style_space`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import write_json
from ..config import add_dataclass_args, config_to_dict, dataclass_from_args
from ..flametalk.train import (TalkConfig, TalkData, evaluate_talk, fit_talk, loss_vertex_ids, open_subjects,
                               style_space)
from ..headmodel import HeadModel
from .bench_talk import talk_metrics

__all__ = ["BenchPTalkerConfig", "build_parser", "format_tables", "main", "run_benchmark"]

MODELS = (("ptalker", "PTalker"), ("template", "FlameTalk, template style"))


@dataclass
class BenchPTalkerConfig(TalkConfig):
    """Options of the benchmark: ``gft train-talk``'s, the output folder, leave-one-out, JSON."""

    out: Path | None = field(default=None, metadata={
        "help": "keep the runs' checkpoints here (a re-run resumes); default: a temporary folder"})
    seen: bool = field(default=True, metadata={"help": "the seen-subject table"})
    loso: bool = field(default=True, metadata={"help": "leave each subject out (the unseen-subject table)"})
    json: Path | None = field(default=None, metadata={"help": "also write the result as JSON here"})


def _score(model, encoder, head: HeadModel, data: TalkData, cfg: TalkConfig, subject: int | None) -> dict:
    """{"raw"|PROJECT: {lve_mm, fdd_mm, ffe_mm2, vertex_error_mm, mouth_opening_correlation}} of one test split."""
    ids = loss_vertex_ids(head, cfg.loss_regions)
    out = {}
    for project in dict.fromkeys(("none", cfg.project)):
        c = dataclasses.replace(cfg, project=project)
        figures, pred = evaluate_talk(model, encoder, head, data, c, ids, cfg.infer_mode, subject)
        frames = data.test_idx[: len(pred)]
        out["raw" if project == "none" else project] = {
            **talk_metrics(head, data, frames, torch.from_numpy(pred)),
            "mouth_opening_correlation": figures["mouth_opening_correlation"]}
    return out


def _mean(head: HeadModel, data: TalkData) -> dict:
    frames = data.test_idx
    motion = data.motion[data.train_idx].mean(0).expand(len(frames), -1)
    return talk_metrics(head, data, frames, motion)


def _train(datas: list[TalkData], head: HeadModel, cfg: TalkConfig, ptalker: bool, folder: Path):
    c = dataclasses.replace(cfg, ptalker=ptalker)
    t0 = time.perf_counter()
    model, encoder, _ = fit_talk(datas, head, c, folder)
    return model.cpu(), encoder.cpu(), time.perf_counter() - t0, c


def run_benchmark(cfg: BenchPTalkerConfig) -> dict:
    """Both tables. Returns ``{"seen": {name: {model: scores}}, "unseen": {...}, "mean": {name: metrics},
    "train_seconds": {...}, "style_space": {...}}`` (the last with the seen table)."""
    if len(cfg.subjects) < 2:
        raise ValueError("the PTalker benchmark needs two or more SUBJECT folders (PTalker learns across subjects)")
    _, head, datas = open_subjects(cfg)
    head_cpu = head.cpu()
    result: dict = {"seen": {}, "unseen": {}, "mean": {d.name: _mean(head_cpu, d) for d in datas},
                    "train_seconds": {}}
    with tempfile.TemporaryDirectory(prefix="bench_ptalker_") as tmp:
        root = Path(cfg.out) if cfg.out is not None else Path(tmp)
        for key, _ in (MODELS if cfg.seen else ()):
            model, encoder, seconds, c = _train(datas, head.to(cfg.device), cfg, key == "ptalker", root / f"seen_{key}")
            result["train_seconds"][f"seen_{key}"] = seconds
            if key == "ptalker":
                result["style_space"] = style_space(model, encoder, datas, root / "style_space.png")
            for k, d in enumerate(datas):
                result["seen"].setdefault(d.name, {})[key] = _score(model, encoder, head.cpu(), d, c,
                                                                     k if key == "ptalker" else None)
        for left in (range(len(datas)) if cfg.loso and len(datas) > 2 else ()):
            others = [d for k, d in enumerate(datas) if k != left]
            name = datas[left].name
            for key, _ in MODELS:
                model, encoder, seconds, c = _train(others, head.to(cfg.device), cfg, key == "ptalker",
                                                    root / f"without_{name}_{key}")
                result["train_seconds"][f"without_{name}_{key}"] = seconds
                result["unseen"].setdefault(name, {})[key] = _score(model, encoder, head.cpu(), datas[left], c, None)
    return result


def format_tables(result: dict, project: str) -> str:
    """The markdown tables (seen, unseen) of :func:`run_benchmark`'s result; ``project`` the projected rows' mode."""
    lines = []
    for table, title in (("seen", "seen subjects, held-out frames"),
                         ("unseen", "unseen subject (left out), style from a reference clip, no fine-tuning")):
        if not result[table]:
            continue
        names = list(result[table])
        lines += [f"**{title}**", "",
                  "| model | projection | " + " | ".join(f"{n}: LVE mm (× mean) | {n}: FDD mm" for n in names) + " |",
                  "|---|---|" + "---|---|" * len(names)]
        mean = result["mean"]
        lines.append("| mean expression | - | " + " | ".join(
            f"{mean[n]['lve_mm']:.2f} | {mean[n]['fdd_mm']:+.3f}" for n in names) + " |")
        for key, label in MODELS:
            for proj in dict.fromkeys(("raw", project if project != "none" else "raw")):
                cells = []
                for n in names:
                    s = result[table][n][key][proj]
                    cells.append(f"{s['lve_mm']:.2f} ({s['lve_mm'] / mean[n]['lve_mm']:.2f}) | {s['fdd_mm']:+.3f}")
                lines.append(f"| {label} | {'none' if proj == 'raw' else proj} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gaussian_flametalk.scripts.bench_ptalker",
                                     description=__doc__.split("\n\n")[0])
    add_dataclass_args(parser, BenchPTalkerConfig, positional=("subjects",))
    return parser


def main(argv: list[str] | None = None) -> int:
    cfg = dataclass_from_args(BenchPTalkerConfig, build_parser().parse_args(argv))
    result = run_benchmark(cfg)
    if cfg.json is not None:
        write_json(cfg.json, {"config": config_to_dict(cfg), **result})
    print(format_tables(result, cfg.project))
    print("training seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["train_seconds"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
