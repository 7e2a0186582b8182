"""FlameTalk: speech to head-model expression and jaw parameters (audio encoders, model, PTalker style encoders,
losses, training, inference; audio I/O is :mod:`gaussian_flametalk.io.audio`)."""

from .encoders import AudioEncoder, EncoderNotFoundError, load_encoder
from .model import FlameTalk, FlameTalkArch, FlameTalkSpec, StreamingPredictor, predict
from .ptalker import PTalkerStyle, grad_reverse

__all__ = ["AudioEncoder", "EncoderNotFoundError", "FlameTalk", "FlameTalkArch", "FlameTalkSpec", "PTalkerStyle",
           "StreamingPredictor", "grad_reverse", "load_encoder", "predict"]
