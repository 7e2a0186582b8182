"""FlameTalk: speech to head-model expression and jaw parameters (audio I/O, encoders, model, PTalker style
encoders, losses, training)."""

from .audio import SAMPLE_RATE, AudioError, load_audio
from .encoders import AudioEncoder, EncoderNotFoundError, load_encoder
from .model import FlameTalk, FlameTalkSpec, StreamingPredictor, predict
from .ptalker import PTalkerStyle, grad_reverse

__all__ = ["SAMPLE_RATE", "AudioEncoder", "AudioError", "EncoderNotFoundError", "FlameTalk", "FlameTalkSpec",
           "PTalkerStyle", "StreamingPredictor", "grad_reverse", "load_audio", "load_encoder", "predict"]
