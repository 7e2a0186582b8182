"""Audio encoders behind one interface, aligned to the video frame rate.

    encoder = load_encoder("mel")                       # or "wav2vec2:facebook/wav2vec2-base-960h", "hubert:/local/dir"
    feats = encoder(wave, n_frames)                     # wave (B, S) at 16 kHz -> (B, 2 * n_frames, encoder.dim)

Feature ``k`` describes the audio around time ``(k + 0.5) / 50`` s: at 25 fps, video frame ``t`` (covering
``[t/25, (t+1)/25)``) owns features ``2t`` and ``2t+1``. At other frame rates the features are placed at the
centres of the half-frames, ``(k + 0.5) / (2 fps)``. Each encoder's native features are linearly interpolated
onto that grid.

- ``mel`` (built in, no weights): log-mel spectrogram (torch STFT, 25 ms Hann window, 10 ms hop, own HTK mel
  filterbank) on the half-frame grid, then a small 1-D convolution stack (PESTalk's frequency stream). Its receptive
  field is finite (:attr:`MelEncoder.context_samples`), so encoding a long clip in pieces with that much context
  gives the same features as encoding it whole.
- ``phonetic`` (no download: PocketSphinx's en-us model ships in its wheel): phone segments from PocketSphinx's
  phone-loop decoder as soft one-hot phones, viseme classes and expected mouth openness on the half-frame grid,
  then a small convolution stack (:mod:`.phonetic`); ``mel+phonetic``: both streams concatenated (``2 dim``).
- ``wav2vec2`` / ``hubert``: a transformers model from a hub id or a local folder (``local_files_only`` when
  ``HF_HUB_OFFLINE`` is set), its CNN feature extractor frozen, its transformer trainable; input normalised to zero
  mean and unit variance per clip.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..registry import Registry
from ..io.audio import SAMPLE_RATE

__all__ = ["AUDIO_ENCODERS", "AudioEncoder", "EncoderNotFoundError", "MelEncoder", "TransformersEncoder", "feature_times",
           "frames_for_samples", "interpolate_features", "load_encoder", "mel_filterbank"]


class EncoderNotFoundError(FileNotFoundError):
    """A pretrained audio encoder that is neither cached nor a local folder."""


def frames_for_samples(n_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of video frames a clip of ``n_samples`` covers (rounded; at least 1)."""
    return max(int(round(n_samples * fps / sample_rate)), 1)


def feature_times(n_frames: int, fps: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """(2 n_frames,) times in seconds of the aligned features: the centres of the half-frames."""
    return (torch.arange(2 * n_frames, device=device, dtype=torch.float32) + 0.5) / (2 * fps)


def interpolate_features(feats: torch.Tensor, times: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Linear interpolation along time, clamped at the ends.

    Args: feats (B, N, D) at increasing, evenly spaced ``times`` (N,); targets (K,) seconds.
    Returns: (B, K, D).
    """
    n = feats.shape[1]
    if n == 1:
        return feats.expand(-1, targets.numel(), -1)
    step = (times[-1] - times[0]) / (n - 1)
    pos = ((targets - times[0]) / step).clamp(0, n - 1)
    lo = pos.floor().long().clamp(max=n - 2)
    w = (pos - lo.to(pos)).to(feats.dtype)[None, :, None]
    return feats[:, lo] * (1 - w) + feats[:, lo + 1] * w


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
                   ) -> torch.Tensor:
    """Triangular filters evenly spaced on the HTK mel scale, mel = 2595 log10(1 + f/700): (n_fft//2 + 1, n_mels)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    mels = torch.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs[None] - lower) / (centre - lower)
    down = (upper - freqs[None]) / (upper - centre)
    return torch.clamp(torch.minimum(up, down), min=0).T.float()


class AudioEncoder(nn.Module):
    """Base class: ``forward(wave (B, S) at 16 kHz, n_frames, fps=25) -> (B, 2 n_frames, dim)``.

    ``context_samples``: audio beyond a piece's ends that affects its features (None: unbounded); windowed inference
    gives each window this much context on both sides.
    """

    dim: int
    spec: str
    context_samples: int | None
    #: channels of :meth:`raw_features` (0: the encoder has none, e.g. wav2vec2 / HuBERT)
    raw_dim: int = 0

    def forward(self, wave: torch.Tensor, n_frames: int, fps: float = 25.0) -> torch.Tensor:
        raise NotImplementedError

    def raw_features(self, wave: torch.Tensor, n_frames: int, fps: float = 25.0) -> torch.Tensor:
        """The fixed (not learnt) features the encoder starts from, on the same grid: (B, 2 n_frames, raw_dim) for
        wave (B, S) (log-mel for ``mel``, phone features for ``phonetic``); FlameTalk's linear base
        (:class:`~.model.LinearBase`) regresses motion on them."""
        raise NotImplementedError(f"audio encoder '{self.spec}' has no raw features")

    def prepare(self, wave: np.ndarray | torch.Tensor, *, alone: bool = False) -> None:
        """Called once per training clip before its pieces are encoded (an encoder that decodes whole clips, like
        ``phonetic``, caches the clip here); nothing to do for the others. ``alone``: decode it by itself even when
        it is a piece of a clip prepared before (a test split is new speech, not part of the training clip)."""

    def release(self, wave: np.ndarray | torch.Tensor) -> None:
        """Forget a clip given to :meth:`prepare` (an offline prediction's speech, once predicted)."""


class MelEncoder(AudioEncoder):
    """Log-mel spectrogram + convolution stack (no pretrained weights)."""

    def __init__(self, dim: int = 128, n_mels: int = 80, n_fft: int = 512, win_ms: float = 25.0, hop_ms: float = 10.0,
                 layers: int = 3, kernel: int = 5) -> None:
        super().__init__()
        self.dim, self.spec = dim, "mel"
        self.n_fft, self.win, self.hop = n_fft, int(SAMPLE_RATE * win_ms / 1000), int(SAMPLE_RATE * hop_ms / 1000)
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)
        # power floor of the log (about -80 dB re full scale): digital silence and a quiet room look alike
        self.floor = 1e-2
        self.register_buffer("fbank", mel_filterbank(n_mels, n_fft, SAMPLE_RATE, 20.0), persistent=False)
        convs: list[nn.Module] = []
        for i in range(layers):
            convs += [nn.Conv1d(n_mels if i == 0 else dim, dim, kernel, padding=kernel // 2), nn.GELU()]
        self.convs = nn.Sequential(*convs[:-1])
        # STFT half-window + convolution reach (in 50 Hz steps) + interpolation step
        self.context_samples = n_fft // 2 + (layers * (kernel // 2) + 1) * SAMPLE_RATE // 50 + self.hop
        self.raw_dim = n_mels

    def log_mel(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) -> log-mel (B, N, n_mels) at 100 Hz and the frame times (N,) in seconds."""
        spec = torch.stft(wave.float(), self.n_fft, self.hop, self.win, self.window, center=True, pad_mode="constant",
                          return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2  # (B, F, N)
        mel = torch.einsum("bfn,fm->bnm", power, self.fbank)
        times = torch.arange(mel.shape[1], device=wave.device, dtype=torch.float32) * self.hop / SAMPLE_RATE
        return (torch.log(mel + self.floor) - 1.0) / 4.0, times

    def raw_features(self, wave: torch.Tensor, n_frames: int, fps: float = 25.0) -> torch.Tensor:
        """The log-mel spectrogram on the half-frame grid: (B, 2 n_frames, n_mels)."""
        mel, times = self.log_mel(wave)
        return interpolate_features(mel, times, feature_times(n_frames, fps, wave.device))

    def forward(self, wave: torch.Tensor, n_frames: int, fps: float = 25.0) -> torch.Tensor:
        grid = self.raw_features(wave, n_frames, fps)  # (B, 2T, n_mels)
        return self.convs(grid.transpose(1, 2)).transpose(1, 2)


class TransformersEncoder(AudioEncoder):
    """wav2vec2 or HuBERT from transformers; the CNN feature extractor is frozen."""

    def __init__(self, kind: str, model_id: str) -> None:
        super().__init__()
        if kind not in ("wav2vec2", "hubert"):
            raise ValueError(f"unknown transformers audio encoder '{kind}' (wav2vec2 or hubert)")
        try:
            import transformers
        except ImportError as e:
            raise ImportError(f"audio encoder '{kind}' needs transformers: pip install 'transformers>=4.40'") from e
        cls = transformers.Wav2Vec2Model if kind == "wav2vec2" else transformers.HubertModel
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or \
            os.environ.get("TRANSFORMERS_OFFLINE", "0") not in ("0", "", "false")
        try:
            self.model = cls.from_pretrained(model_id, local_files_only=offline or os.path.isdir(model_id))
        except (OSError, ValueError) as e:
            raise EncoderNotFoundError(
                f"audio encoder '{kind}:{model_id}' is not available"
                f"{' offline' if offline else ''}: with internet, run `hf download {model_id}` (it goes to the "
                f"Hugging Face cache, ~/.cache/huggingface/hub, or $HF_HOME), or pass a local folder holding its "
                f"config.json and model.safetensors: --audio-encoder {kind}:/path/to/folder ({e})") from e
        self.model.config.apply_spec_augment = False
        for p in self.model.feature_extractor.parameters():
            p.requires_grad_(False)
        self.dim, self.spec, self.context_samples = self.model.config.hidden_size, f"{kind}:{model_id}", None
        kernels, strides = self.model.config.conv_kernel, self.model.config.conv_stride
        self._stride = math.prod(strides)
        self._field = 1 + sum((k - 1) * math.prod(strides[:i]) for i, k in enumerate(kernels))

    def forward(self, wave: torch.Tensor, n_frames: int, fps: float = 25.0) -> torch.Tensor:
        wave = wave.float()
        if wave.shape[1] < self._field:
            wave = F.pad(wave, (0, self._field - wave.shape[1]))
        wave = (wave - wave.mean(dim=1, keepdim=True)) / (wave.std(dim=1, keepdim=True) + 1e-7)
        hidden = self.model(wave).last_hidden_state  # (B, N, H), frame i centred at i*stride + field/2
        times = (torch.arange(hidden.shape[1], device=wave.device) * self._stride + self._field / 2) / SAMPLE_RATE
        return interpolate_features(hidden, times.float(), feature_times(n_frames, fps, wave.device))


AUDIO_ENCODERS = Registry("audio encoder", "--audio-encoder")


def _transformers_available() -> tuple[bool | None, str]:
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return False, "transformers is not installed"
    return True, "transformers importable; weights from the hub cache or a local folder"


@AUDIO_ENCODERS.register("mel", help="log-mel + convolutions (built in, no weights)")
def _mel(arg: str | None, dim: int = 128) -> AudioEncoder:
    return MelEncoder(dim)


@AUDIO_ENCODERS.register("phonetic", help="PocketSphinx phone-loop phones (offline, model in its wheel)",
                         available=lambda: _phonetic_available())
def _phonetic(arg: str | None, dim: int = 128) -> AudioEncoder:
    from .phonetic import PhoneticEncoder

    return PhoneticEncoder(dim)


@AUDIO_ENCODERS.register("mel+phonetic", help="the mel and phonetic streams side by side (2 x dim channels)",
                         available=lambda: _phonetic_available())
def _mel_phonetic(arg: str | None, dim: int = 128) -> AudioEncoder:
    from .phonetic import MelPhoneticEncoder

    return MelPhoneticEncoder(dim)


def _phonetic_available() -> tuple[bool | None, str]:
    import importlib.util

    if importlib.util.find_spec("pocketsphinx") is None:
        return False, "pocketsphinx is not installed (pip install pocketsphinx==5.1.1)"
    return True, "pocketsphinx importable (en-us model in its wheel)"


@AUDIO_ENCODERS.register("wav2vec2", arg="required", arg_help="HUB_ID_OR_DIR (e.g. facebook/wav2vec2-base-960h)",
                         help="a wav2vec 2.0 model through transformers", available=_transformers_available)
def _wav2vec2(arg: str | None, dim: int = 128) -> AudioEncoder:
    return TransformersEncoder("wav2vec2", arg)


@AUDIO_ENCODERS.register("hubert", arg="required", arg_help="HUB_ID_OR_DIR (e.g. facebook/hubert-base-ls960)",
                         help="a HuBERT model through transformers", available=_transformers_available)
def _hubert(arg: str | None, dim: int = 128) -> AudioEncoder:
    return TransformersEncoder("hubert", arg)


def load_encoder(spec: str, dim: int = 128) -> AudioEncoder:
    """``mel``, ``phonetic`` (``dim`` output channels), ``mel+phonetic`` (``2 dim``), ``wav2vec2:ID_OR_DIR`` or
    ``hubert:ID_OR_DIR`` (their own width): :data:`AUDIO_ENCODERS`."""
    return AUDIO_ENCODERS.build(spec, dim=dim)
