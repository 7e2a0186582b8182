"""FlameTalk inference speed: seconds of speech to expression + jaw parameters, autoregressive and parallel.

    python -m gaussian_flametalk.scripts.bench_talk_speed SPEECH [--seconds 60] [--talk TALK_FOLDER] [--repeats 3]

SPEECH is any audio file, cut (or repeated) to ``--seconds``. The model is the trained FlameTalk of ``--talk`` (a
``gft train-talk`` output folder), or else a randomly initialised one of ``gft train-talk``'s default architecture
on ``--head-model`` (speed does not depend on the weights). Cases: the ``mel`` encoder on the CPU, always; on a CUDA
GPU also ``mel`` and wav2vec2-base size (``--wav2vec2``: a hub id or folder; default a randomly initialised
``Wav2Vec2Config()``, which is the base architecture: 12 layers, width 768); wav2vec2 cases are skipped without CUDA.
Each case runs :func:`~gaussian_flametalk.flametalk.model.predict` (windowed, cross-faded, the path ``gft drive``
uses) once to warm up on 4 s, then ``--repeats`` times on the whole clip; reports the median seconds, the real-time
factor (seconds of compute per second of audio; below 1 is faster than real time) and frames per second.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import add_dataclass_args, dataclass_from_args
from ..io.audio import SAMPLE_RATE, load_audio
from ..flametalk.encoders import AudioEncoder, load_encoder
from ..headmodel.motion import motion_vertices
from ..flametalk.model import FlameTalk, FlameTalkArch, FlameTalkSpec, predict
from ..flametalk.inference import load_talk
from ..flametalk.train import TalkConfig
from ..headmodel import load_head_model
from .bench_render import _loadavg, cpu_name

__all__ = ["SpeedConfig", "build_parser", "main", "time_case"]

MODES = ("autoregressive", "parallel")
_TALK = {f.name: f.default for f in dataclasses.fields(TalkConfig)}


@dataclass
class SpeedConfig:
    """Options of the speed benchmark."""

    speech: Path = field(metadata={"help": "speech audio file (any format)"})
    seconds: float = field(default=60.0, metadata={"help": "clip length: the speech cut, or repeated, to this"})
    talk: Path | None = field(default=None, metadata={
        "help": "a trained gft train-talk folder (default: random weights)"})
    head_model: str = field(default="synthetic", metadata={"help": "head model of the random-weight model"})
    model: FlameTalkArch = field(default_factory=FlameTalkArch, metadata={
        "help": "architecture of the random-weight model (gft train-talk's defaults; run in eval mode, so "
                "--model.dropout changes nothing)"})
    mel_dim: int = field(default=_TALK["mel_dim"], metadata={"help": "mel encoder channels (random-weight model)"})
    window: int = field(default=_TALK["window"], metadata={"help": "inference window (frames)"})
    overlap: int = field(default=_TALK["overlap"], metadata={"help": "inference window overlap (frames)"})
    wav2vec2: str | None = field(default=None, metadata={
        "help": "wav2vec2 hub id or folder for the CUDA cases (default: random weights of base size)"})
    repeats: int = field(default=3, metadata={"help": "timed runs per case (after a warm-up)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(model: FlameTalk, encoder: AudioEncoder, template: torch.Tensor, wave: np.ndarray, mode: str,
              window: int, overlap: int, repeats: int) -> dict[str, float]:
    """Median and min seconds of ``predict`` on ``wave`` (S,) with the model's device; frames produced."""
    device = next(model.parameters()).device
    predict(model, encoder, wave[: 4 * SAMPLE_RATE], template, 25.0, mode, window, overlap)  # warm-up
    times, frames = [], 0
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        frames = len(predict(model, encoder, wave, template, 25.0, mode, window, overlap))
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "min_seconds": min(times), "frames": frames}


def _wav2vec2_base(folder: Path) -> str:
    """A randomly initialised wav2vec2 of base size saved in ``folder``: its encoder spec."""
    import transformers

    torch.manual_seed(0)
    transformers.Wav2Vec2Model(transformers.Wav2Vec2Config()).save_pretrained(folder)
    return f"wav2vec2:{folder}"


def _model(cfg: SpeedConfig, encoder: AudioEncoder, device: torch.device) -> tuple[FlameTalk, torch.Tensor]:
    """A random-weight FlameTalk for ``encoder`` and the head model's template: (model, template (V, 3))."""
    head = load_head_model(cfg.head_model)
    torch.manual_seed(0)
    spec = FlameTalkSpec(head.motion_dim, encoder.dim, head.n_vertices, cfg.model)
    model = FlameTalk(spec)
    torch.nn.init.normal_(model.motion_out.weight, std=0.1)  # a zero output layer could make work vanish
    with torch.no_grad():
        template = motion_vertices(head, torch.zeros(1, 1, head.motion_dim), torch.zeros(head.n_shape))[0, 0]
    return model.to(device).eval(), template.to(device)


def main(argv: list[str] | None = None) -> int:
    cfg = dataclass_from_args(SpeedConfig, build_parser().parse_args(argv))
    if cfg.repeats < 1:
        raise ValueError(f"--repeats must be at least 1 (got {cfg.repeats})")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    wave = load_audio(cfg.speech)
    n = round(cfg.seconds * SAMPLE_RATE)
    wave = np.resize(wave, n)  # cut, or repeat to length
    cuda = torch.cuda.is_available()
    desc = f"CPU: {cpu_name()}, torch threads: {torch.get_num_threads()}"
    if cuda:
        desc += f"; GPU: {torch.cuda.get_device_name()}"
    print(f"# FlameTalk inference speed\n\n{cfg.speech.name}, {cfg.seconds:g} s of audio; {desc}; torch "
          f"{torch.__version__}; load average {_loadavg()}; window {cfg.window}, overlap {cfg.overlap}; "
          f"{'trained model ' + str(cfg.talk) if cfg.talk else 'random weights, head model ' + cfg.head_model}\n")
    print("| encoder | device | mode | median s | min s | real-time factor | frames/s |")
    print("|---|---|---|---|---|---|---|")
    cases = [("mel", "cpu")] + ([("mel", "cuda"), ("wav2vec2-base", "cuda")] if cuda else [])
    with tempfile.TemporaryDirectory(prefix="bench_talk_speed_") as tmp:
        for name, dev in cases:
            device = torch.device(dev)
            if cfg.talk is not None and name == "mel":
                talk = load_talk(cfg.talk, device=dev)
                model, encoder, template = talk.model, talk.encoder, talk.template
            else:
                spec = "mel" if name == "mel" else (f"wav2vec2:{cfg.wav2vec2}" if cfg.wav2vec2
                                                      else _wav2vec2_base(Path(tmp) / "wav2vec2-base"))
                encoder = load_encoder(spec, cfg.mel_dim).to(device).eval()
                model, template = _model(cfg, encoder, device)
            for mode in MODES:
                r = time_case(model, encoder, template, wave, mode, cfg.window, cfg.overlap, cfg.repeats)
                print(f"| {name} | {dev} | {mode} | {r['seconds']:.2f} | {r['min_seconds']:.2f} | "
                      f"{r['seconds'] / cfg.seconds:.3f} | {r['frames'] / r['seconds']:.0f} |", flush=True)
        if not cuda:
            print("| wav2vec2-base | cuda | both | skipped: no CUDA GPU | | | |")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_args(parser, SpeedConfig, positional=("speech",))
    return parser


if __name__ == "__main__":
    sys.exit(main())
