"""FlameTalk: speech to head-model expression and jaw parameters (audio I/O, encoders, model, losses, training)."""

from .audio import SAMPLE_RATE, AudioError, load_audio
from .encoders import AudioEncoder, EncoderNotFoundError, load_encoder
from .model import FlameTalk, FlameTalkSpec, StreamingPredictor, predict

__all__ = ["SAMPLE_RATE", "AudioEncoder", "AudioError", "EncoderNotFoundError", "FlameTalk", "FlameTalkSpec",
           "StreamingPredictor", "load_audio", "load_encoder", "predict"]
