"""Image quality of a video against a reference of the same frames: PSNR, SSIM and LPIPS (AlexNet, v0.1).

PSNR and SSIM are those of the avatar's training (:mod:`gaussian_flametalk.metrics.image`: peak 1, SSIM with an
11x11 Gaussian window of sigma 1.5), per frame on RGB in [0, 1], then averaged over frames.

LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", version 0.1):
both images are scaled to [-1, 1], shifted and scaled per channel (shift -0.030, -0.088, -0.188; scale 0.458,
0.448, 0.450), passed through AlexNet's convolutional part; at each of its five ReLU outputs the features are
unit-normalised along the channels, their squared difference is weighted per channel by a learnt non-negative
1x1 linear layer (``lin0`` .. ``lin4``), averaged over the image and the five layers' values summed.
No weights ship with the package and nothing is downloaded: :func:`load_lpips` reads, from a folder the user
fills, torchvision's ImageNet AlexNet (``alexnet-owt-7be5be79.pth``; only its ``features.*`` tensors are used) and
the LPIPS v0.1 linear layers (``alex.pth`` of the ``lpips`` package, keys ``lin0.model.1.weight`` ..). The network
is written here in plain torch (torchvision is not imported) with torchvision's parameter names.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import GftError
from ..metrics.image import psnr, ssim_map

__all__ = ["ALEXNET_URL", "LPIPS", "LPIPS_CHANNELS", "AlexNetFeatures", "ImageQuality", "LPIPSHeads",
           "WeightsUnavailableError", "frame_tensor", "load_lpips"]

#: where torchvision's ImageNet AlexNet weights come from (torch hub names the file after it)
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
#: channels of the five AlexNet ReLU outputs LPIPS compares
LPIPS_CHANNELS = (64, 192, 384, 256, 256)
_TAPS = (1, 4, 7, 9, 11)  # indices of those ReLUs in ``features``
_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SLICE = re.compile(r"^net\.slice\d\.(\d+\.(?:weight|bias))$")  # lpips' AlexNet slices -> features indices
_SCALE = (0.458, 0.448, 0.450)


class WeightsUnavailableError(GftError, FileNotFoundError):
    """Metric weights the user has to supply are missing; the message says what to get and where to put it."""


class AlexNetFeatures(nn.Module):
    """AlexNet's convolutional part, with torchvision's layer indices (so ``features.*`` state dicts load as is).

    forward: (B, 3, H, W) -> the five ReLU outputs [(B, 64, ...), (B, 192, ...), (B, 384, ...), (B, 256, ...),
    (B, 256, ...)] (H, W of at least 32 or so).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=False),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=False),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=False),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=False),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=False),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features[: _TAPS[-1] + 1]):
            x = layer(x)
            if i in _TAPS:
                out.append(x)
        return out


class LPIPSHeads(nn.Module):
    """The five non-negative 1x1 linear layers ``lin0`` .. ``lin4`` (C_k -> 1, no bias) of LPIPS v0.1."""

    def __init__(self) -> None:
        super().__init__()
        for k, c in enumerate(LPIPS_CHANNELS):
            self.add_module(f"lin{k}", nn.Conv2d(c, 1, kernel_size=1, bias=False))

    def layers(self) -> list[nn.Conv2d]:
        return [getattr(self, f"lin{k}") for k in range(len(LPIPS_CHANNELS))]

    @staticmethod
    def convert_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The ``lpips`` package's key names (``linK.model.1.weight``) -> this module's (``linK.weight``)."""
        return {k.replace(".model.1.", "."): v for k, v in state.items()}


def _unit_normalise(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """(B, C, H, W) features divided by their L2 norm over C."""
    return x / (x.pow(2).sum(1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone. forward(pred, target): (B, H, W, 3) in [0, 1] each -> (B,) distances."""

    def __init__(self, backbone: AlexNetFeatures | None = None, heads: LPIPSHeads | None = None) -> None:
        super().__init__()
        self.backbone = backbone or AlexNetFeatures()
        self.heads = heads or LPIPSHeads()
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _features(self, img: torch.Tensor) -> list[torch.Tensor]:
        x = (img.permute(0, 3, 1, 2) * 2 - 1 - self.shift) / self.scale
        return [_unit_normalise(f) for f in self.backbone(x)]

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[-1] != 3:
            raise ValueError(f"LPIPS needs two (B, H, W, 3) images of one shape, got {tuple(pred.shape)} and "
                             f"{tuple(target.shape)}")
        total = pred.new_zeros(pred.shape[0])
        for fp, ft, lin in zip(self._features(pred), self._features(target), self.heads.layers()):
            total = total + lin((fp - ft) ** 2).mean(dim=(1, 2, 3))
        return total


def _state_dict_of(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensor dict in a .pth/.pt file (unwrapping a ``state_dict`` entry), or None when it holds none."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError):  # not a torch tensor file
        return None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    return None


def _load_checked(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    want = module.state_dict()
    missing = [k for k in want if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in want.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        raise ValueError(f"{path}: not usable for LPIPS: missing {missing[:5]}, wrong shapes {wrong[:5]}")
    module.load_state_dict({k: state[k] for k in want})


def load_lpips(folder: str | os.PathLike, device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS from the weight files in ``folder`` (found by their contents, whatever their names): one with
    torchvision's AlexNet ``features.*`` tensors and one with the LPIPS v0.1 ``lin0`` .. ``lin4`` layers — or one file
    in the ``lpips`` package's own layout (a saved ``lpips.LPIPS(net="alex")`` state dict: the backbone as
    ``net.sliceK.N.*``, which keep torchvision's layer indices N, and the ``linK.model.1.weight`` layers).

    Raises WeightsUnavailableError naming what is missing and where to get it; ValueError for a file whose tensors
    have the right names but wrong shapes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsUnavailableError(f"{folder}: no such folder for the LPIPS weights")
    backbone_state = heads_state = None
    backbone_path = heads_path = folder
    for path in sorted(p for p in folder.iterdir() if p.suffix in (".pth", ".pt") and p.is_file()):
        state = _state_dict_of(path)
        if state is None:
            continue
        if backbone_state is None and "features.0.weight" in state:
            backbone_state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
            backbone_path = path
        elif backbone_state is None and "net.slice1.0.weight" in state:  # a saved lpips.LPIPS(net="alex") model
            backbone_state = {_LPIPS_SLICE.sub(r"\1", k): v for k, v in state.items() if _LPIPS_SLICE.match(k)}
            backbone_path = path
        if heads_state is None and any(k.startswith("lin0.") for k in state):
            heads_state, heads_path = LPIPSHeads.convert_state(state), path
    missing = []
    if backbone_state is None:
        missing.append(f"torchvision's AlexNet weights (alexnet-owt-7be5be79.pth from {ALEXNET_URL}, or torch hub's "
                       "checkpoints folder)")
    if heads_state is None:
        missing.append("the LPIPS v0.1 linear layers (alex.pth, in the lpips package at lpips/weights/v0.1/alex.pth)")
    if missing:
        raise WeightsUnavailableError(f"{folder}: LPIPS needs " + " and ".join(missing) + " in this folder")
    model = LPIPS()
    _load_checked(model.backbone.features, backbone_state, backbone_path)
    _load_checked(model.heads, heads_state, heads_path)
    return model.to(device)


def frame_tensor(frame: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (1, H, W, 3) in [0, 1] on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(frame)).to(device=device, dtype=torch.float32)[None] / 255.0


class ImageQuality:
    """Per-frame PSNR (dB), SSIM and, with an :class:`LPIPS` model, LPIPS of frames against reference frames.

    Pairs are scored ``batch`` at a time (fewer, larger convolutions: several times faster on a CPU).
    """

    def __init__(self, lpips: LPIPS | None = None, device: torch.device | str = "cpu", batch: int = 8) -> None:
        self.lpips, self.device, self.batch = lpips, torch.device(device), max(1, int(batch))
        self.psnr: list[float] = []
        self.ssim: list[float] = []
        self.lpips_values: list[float] = []
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, frame: np.ndarray, reference: np.ndarray) -> None:
        """One pair of uint8 (H, W, 3) frames of the same size."""
        if frame.shape != reference.shape:
            n = len(self.psnr) + len(self._pending)
            raise ValueError(f"frame {n}: sizes differ, {frame.shape} vs reference {reference.shape}")
        self._pending.append((frame, reference))
        if len(self._pending) >= self.batch:
            self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        if not self._pending:
            return
        x = torch.cat([frame_tensor(f, self.device) for f, _ in self._pending])  # (B, H, W, 3)
        y = torch.cat([frame_tensor(r, self.device) for _, r in self._pending])
        self._pending = []
        self.psnr.extend(psnr(x[i], y[i]) for i in range(len(x)))
        self.ssim.extend(ssim_map(x, y).mean(dim=(1, 2, 3)).tolist())
        if self.lpips is not None:
            self.lpips_values.extend(self.lpips(x, y).tolist())

    def per_frame(self) -> dict[str, np.ndarray]:
        """(T,) arrays: ``psnr``, ``ssim`` and ``lpips`` (when measured)."""
        self._flush()
        out = {"psnr": np.asarray(self.psnr), "ssim": np.asarray(self.ssim)}
        if self.lpips is not None:
            out["lpips"] = np.asarray(self.lpips_values)
        return out

    def summary(self) -> dict[str, float | int]:
        """Means over the frames (PSNR as the mean of the per-frame dB values), and the frame count."""
        values = self.per_frame()
        out: dict[str, float | int] = {"frames": len(self.psnr)}
        for name, v in values.items():
            out[name] = float(np.mean(v)) if len(v) else float("nan")
        return out
