"""Model loading for feature extraction, fine-tuning and distillation.

A model *spec* is one string:

==========================================  ====================================================================
``resnet50.a1_in1k``, ``hf-hub:timm/...``   timm name: weights from the Hugging Face hub (needs network)
``local-dir:/path/folder``, ``/path/folder``  timm folder (``config.json`` + ``model.safetensors``); the Coral
                                            ``mobilenetv1_025/050/075`` folders are built with timm's MobileNet-v1
                                            generator (``create_model('local-dir:')`` cannot build them in timm 1.0)
``resnet18@/path/ckpt.pth``                 checkpoint (``.pth``/``.pt``/``.bin``/``.th``/``.safetensors``) for a
                                            named timm (or built-in) architecture, loaded with ``weights_only=True``
``/path/resnet20-12fca82f.th``              akamaster CIFAR ResNet checkpoint (recognised from its keys)
``cifar_resnet20`` / ``cifar_resnet56``     the built-in He et al. CIFAR ResNet (option-A shortcuts), random init
==========================================  ====================================================================

Preprocessing comes from the model's own pretrained config (timm ``resolve_data_config``) and can be
overridden (``input_size``/``img_size``, ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``).
Source-class probabilities leave out a "background" output (index 0 of the Coral ImageNet models, the
last index of the Coral iNat models, as recorded in ``config.json`` ``background_class_index``).
A zoo file (YAML) lists models with per-model options: see :func:`read_zoo`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CifarResNet",
    "ModelEntry",
    "ResolvedModel",
    "file_sha256",
    "load_checkpoint_state",
    "load_model",
    "make_feature_fn",
    "read_zoo",
    "resolve_model",
    "state_dict_digest",
]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".th", ".tar", ".ckpt", ".safetensors")
PREPROCESS_KEYS = ("input_size", "img_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_CIFAR_RE = re.compile(r"^cifar_resnet(\d+)$")


# ------------------------------------------------------------------------------------------------
# hashing
# ------------------------------------------------------------------------------------------------
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) for this process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def state_dict_digest(model: nn.Module) -> str:
    """sha256 over the names and raw bytes of every parameter and buffer (for weights without a file)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        t = t.detach().cpu().contiguous()
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# built-in architecture: He et al. CIFAR ResNet (akamaster/pytorch_resnet_cifar10), option-A shortcuts
# ------------------------------------------------------------------------------------------------
class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # option A: subsample every second pixel and zero-pad planes/4 channels on each side (no parameters)
        sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
        return F.relu(out + sc)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 CIFAR images (He et al. 2016, sec. 4.2), state-dict compatible with the
    akamaster checkpoints. Exposes the timm interface used here (forward_features / forward_head /
    get_classifier / reset_classifier / num_features / pretrained_cfg)."""

    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.num_features = 64
        self.num_classes = num_classes
        self.linear = nn.Linear(64, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = {
            "architecture": f"cifar_resnet{depth}", "input_size": (3, 32, 32), "interpolation": "bilinear",
            "crop_pct": 1.0, "crop_mode": "center", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "num_classes": num_classes, "first_conv": "conv1", "classifier": "linear",
            "label_names": CIFAR10_CLASSES if num_classes == 10 else None,
        }
        self.default_cfg = self.pretrained_cfg

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.linear

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.linear = nn.Linear(64, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = dict(self.pretrained_cfg, num_classes=num_classes, label_names=None)
        self.default_cfg = self.pretrained_cfg


def _is_akamaster(sd: Mapping[str, torch.Tensor]) -> int | None:
    """Depth of an akamaster CIFAR ResNet state dict, or None."""
    w = sd.get("conv1.weight")
    if w is None or tuple(w.shape) != (16, 3, 3, 3) or "linear.weight" not in sd or "layer3.0.conv1.weight" not in sd:
        return None
    n = len({k.split(".")[1] for k in sd if k.startswith("layer1.")})
    return 6 * n + 2


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def load_checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (``weights_only=True``; safetensors read directly), unwrapped from
    ``state_dict``/``model``/... containers, with ``module.`` (DataParallel) and ``_orig_mod.``
    (torch.compile) prefixes removed."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except pickle.UnpicklingError as exc:  # torch's message is a page about weights_only: keep its key line
        why = next((ln.strip().split(". Please")[0] for ln in str(exc).splitlines() if "Unsupported global" in ln),
                   "not a PyTorch file, or one that holds Python objects besides tensors")
        raise ValueError(f"{path}: not a readable checkpoint (torch.load with weights_only=True refused it: "
                         f"{why})") from exc
    except Exception as exc:  # truncated, empty or foreign file: torch/safetensors errors do not name it
        first = (str(exc).strip().splitlines() or [""])[0][:200] or type(exc).__name__
        raise ValueError(f"{path}: not a readable checkpoint ({first})") from exc
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for k in ("state_dict", "model", "model_state_dict", "module", "net", "params",
                      "state_dict_ema", "model_ema"):
                if isinstance(obj.get(k), Mapping):
                    obj = obj[k]
                    break
            else:
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: no state dict found in the checkpoint")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            for prefix in ("module.", "_orig_mod."):
                if k.startswith(prefix):
                    k = k[len(prefix):]
            out[k] = v
    if not out:
        raise ValueError(f"{path}: the checkpoint holds no tensors")
    return out


# ------------------------------------------------------------------------------------------------
# resolved model specs
# ------------------------------------------------------------------------------------------------
@dataclass
class ResolvedModel:
    """A parsed model spec: what to build, its identity (cache key) and its preprocessing, all known
    without building the model (so a cache hit never loads weights)."""

    spec: str
    kind: str  # "timm" (hub / registry), "local-dir", "checkpoint", "builtin"
    arch: str | None = None
    path: Path | None = None  # local-dir folder or checkpoint file
    pretrained: bool = True
    model_args: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None  # requested head size (None: the weights' own head)
    preprocess: dict[str, Any] = field(default_factory=dict)  # user overrides
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    background_index: int | None = None
    _state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    _weights_sha: str | None = field(default=None, repr=False)

    # -- identity ----------------------------------------------------------------------------------
    @property
    def weights_file(self) -> Path | None:
        if self.kind == "checkpoint":
            return self.path
        if self.kind == "local-dir" and self.path is not None:
            for name in ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth"):
                if (self.path / name).exists():
                    return self.path / name
            for pat in ("*.safetensors", "*.pth", "*.pth.tar", "*.bin"):
                found = sorted(self.path.glob(pat))
                if found:
                    return found[0]
        return None

    @property
    def has_random_weights(self) -> bool:
        return not self.pretrained and self.kind != "checkpoint"

    def identity(self) -> dict[str, Any] | None:
        """Content identity of the weights and architecture; None when the weights are random (the
        caller then hashes the built model's state dict)."""
        if self.has_random_weights:
            return None
        ident: dict[str, Any] = {"kind": self.kind, "arch": self.arch, "model_args": self.model_args,
                                 "num_classes": self.num_classes}
        wf = self.weights_file
        if wf is not None:
            ident["weights_sha256"] = self.weights_sha256()
            if self.kind == "local-dir":
                ident["config_sha256"] = file_sha256(self.path / "config.json")
        else:  # hub weights are immutable per name + tag
            ident["hub"] = self.pretrained_cfg.get("hf_hub_id") or self.pretrained_cfg.get("url") or self.spec
            ident["tag"] = self.pretrained_cfg.get("tag")
        return ident

    def weights_sha256(self) -> str | None:
        wf = self.weights_file
        if wf is not None and self._weights_sha is None:
            self._weights_sha = file_sha256(wf)
        return self._weights_sha

    # -- preprocessing and labels ----------------------------------------------------------------
    def data_config(self, **overrides: Any) -> dict[str, Any]:
        """timm data config from the model's own pretrained config, with overrides applied."""
        from timm.data import resolve_data_config

        args = _normalise_preprocess({**self.preprocess, **overrides})
        cfg = resolve_data_config(args, pretrained_cfg=dict(self.pretrained_cfg) or {"input_size": (3, 224, 224)})
        return _jsonable(cfg)

    @property
    def source_label_names(self) -> list[str] | None:
        names = self.pretrained_cfg.get("label_names")
        return list(names) if names else None

    @property
    def config_needs_build(self) -> bool:
        """``hf-hub:`` models keep their preprocessing in the hub's config: known only after download."""
        return self.kind == "timm" and self.spec.startswith(("hf-hub:", "hf_hub:"))

    # -- building ----------------------------------------------------------------------------------
    def build(self) -> nn.Module:
        """Build the model in eval mode with its weights loaded."""
        import timm

        nc = {} if self.num_classes is None else {"num_classes": self.num_classes}
        if self.kind == "timm":
            overlay = {}
            if self.pretrained:  # no network: one line in seconds, not a minute of retries
                from .hub_access import check_weights_reachable

                cached = check_weights_reachable(self.spec, self.pretrained_cfg)
                if cached and not self.config_needs_build:
                    overlay = {"pretrained_cfg_overlay": {"file": cached}}
            try:
                model = timm.create_model(self.spec, pretrained=self.pretrained, **nc, **overlay, **self.model_args)
            except Exception as exc:  # a hub/network failure is one line with the offline hint
                from .hub_access import download_failure

                failure = download_failure(self.spec, exc) if self.pretrained else None
                if failure is None:
                    raise
                raise failure from exc
        elif self.kind == "local-dir":
            model = self._build_local_dir(nc)
        elif self.kind == "builtin":
            model = self._build_builtin()
        elif self.kind == "checkpoint":
            model = self._build_checkpoint()
        else:  # pragma: no cover
            raise ValueError(self.kind)
        if self.config_needs_build and getattr(model, "pretrained_cfg", None):
            self.pretrained_cfg = dict(model.pretrained_cfg)
        return model.eval()

    def _build_local_dir(self, nc: dict[str, int]) -> nn.Module:
        import timm

        cfg = json.loads((self.path / "config.json").read_text())
        margs = {**cfg.get("model_args", {}), **self.model_args}
        if cfg["architecture"].startswith("mobilenetv1_") and "channel_multiplier" in margs:
            # timm's registered mobilenetv1_* entrypoints fix the width, so config.json's model_args cannot
            # be honoured by create_model('local-dir:'); build through the generator (weights/README.md).
            from timm.models.efficientnet import _gen_mobilenet_v1

            pcfg = dict(self.pretrained_cfg, source="local-dir", file=str(self.path))
            return _gen_mobilenet_v1(cfg["architecture"], pretrained=self.pretrained,
                                     num_classes=nc.get("num_classes", pcfg.get("num_classes", 1000)),
                                     pretrained_cfg=pcfg, **margs)
        return timm.create_model(f"local-dir:{self.path}", pretrained=self.pretrained, **nc, **self.model_args)

    def _build_builtin(self) -> nn.Module:
        depth = int(_CIFAR_RE.match(self.arch).group(1))
        return CifarResNet(depth, num_classes=10 if self.num_classes is None else self.num_classes)

    def _build_checkpoint(self) -> nn.Module:
        import timm

        sd = self._state if self._state is not None else load_checkpoint_state(self.path)
        self._state = None
        if _CIFAR_RE.match(self.arch or ""):
            model: nn.Module = CifarResNet(int(_CIFAR_RE.match(self.arch).group(1)),
                                           num_classes=sd["linear.weight"].shape[0] if "linear.weight" in sd else 10)
        else:
            clf = timm.models.get_pretrained_cfg(self.arch)
            clf_key = (clf.classifier if clf is not None and isinstance(clf.classifier, str) else None)
            head = sd.get(f"{clf_key}.weight") if clf_key else None
            ckpt_nc = {"num_classes": int(head.shape[0])} if head is not None and head.ndim == 2 else {}
            model = timm.create_model(self.arch, pretrained=False, **ckpt_nc, **self.model_args)
        try:
            missing, unexpected = model.load_state_dict(sd, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise ValueError(f"{self.path}: checkpoint does not match architecture {self.arch!r}: {exc}") from exc
        if missing or unexpected:
            raise ValueError(f"{self.path}: checkpoint does not match architecture {self.arch!r}: "
                             f"missing {list(missing)[:8]}{'...' if len(missing) > 8 else ''}, "
                             f"unexpected {list(unexpected)[:8]}{'...' if len(unexpected) > 8 else ''}")
        if self.num_classes is not None and self.num_classes != getattr(model, "num_classes", None):
            model.reset_classifier(self.num_classes)
        return model


def _normalise_preprocess(opts: Mapping[str, Any]) -> dict[str, Any]:
    """User preprocessing overrides -> timm ``resolve_data_config`` args."""
    out: dict[str, Any] = {}
    for k, v in opts.items():
        if v is None:
            continue
        if k not in PREPROCESS_KEYS:
            raise ValueError(f"unknown preprocessing option {k!r}; use {PREPROCESS_KEYS}")
        if k in ("input_size", "img_size"):
            if isinstance(v, (int, np.integer)) or (isinstance(v, str) and v.isdigit()):
                out["input_size"] = (3, int(v), int(v))
            else:
                v = [int(x) for x in v]
                out["input_size"] = tuple(v) if len(v) == 3 else (3, *v)
        elif k in ("mean", "std"):
            out[k] = tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
        elif k == "crop_pct":
            out[k] = float(v)
        else:
            out[k] = str(v)
    return out


def _jsonable(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def _split_arch_ckpt(spec: str) -> tuple[str, str] | None:
    if "@" in spec:
        arch, _, ckpt = spec.partition("@")
        if arch and ckpt and "/" not in arch:
            return arch, ckpt
    return None


def resolve_model(spec: str | ModelEntry, *, num_classes: int | None = None, pretrained: bool = True,
                  model_args: Mapping[str, Any] | None = None, base_dir: str | Path | None = None,
                  **preprocess: Any) -> ResolvedModel:
    """Parse a model spec (see the module docstring) without building the model."""
    if isinstance(spec, ModelEntry):
        opts = spec.options
        return resolve_model(spec.spec, num_classes=opts.get("num_classes", num_classes),
                             pretrained=opts.get("pretrained", pretrained),
                             model_args={**(model_args or {}), **opts.get("model_args", {})},
                             base_dir=base_dir,
                             **{**preprocess, **{k: opts[k] for k in PREPROCESS_KEYS if k in opts}})
    spec = str(spec).strip()
    margs = dict(model_args or {})
    common = dict(pretrained=pretrained, model_args=margs, num_classes=num_classes, preprocess=dict(preprocess))
    base = Path(base_dir) if base_dir is not None else None

    def _path(p: str) -> Path:
        q = Path(p).expanduser()
        if not q.is_absolute() and base is not None:
            q = base / q
        return q.resolve()

    if spec.startswith("local-dir:"):
        return _resolve_local_dir(spec, _path(spec[len("local-dir:"):]), common)
    if spec.startswith(("hf-hub:", "hf_hub:", "timm/")):
        return _resolve_timm(spec, common)
    ac = _split_arch_ckpt(spec)
    if ac is not None:
        return _resolve_checkpoint(spec, _path(ac[1]), ac[0], common)
    looks_like_path = ("/" in spec or os.sep in spec or spec.startswith((".", "~"))
                       or Path(spec).suffix in CHECKPOINT_SUFFIXES)
    p = _path(spec)
    if looks_like_path:
        if not p.exists():
            raise FileNotFoundError(f"model path not found: {p}")
        if p.is_dir():
            if (p / "config.json").exists():
                return _resolve_local_dir(spec, p, common)
            ckpts = sorted(str(q.name) for q in p.iterdir() if q.suffix in CHECKPOINT_SUFFIXES)
            raise ValueError(f"{p}: a folder without config.json; pick a checkpoint file"
                             + (f" ({', '.join(ckpts)})" if ckpts else ""))
        return _resolve_checkpoint(spec, p, None, common)
    m = _CIFAR_RE.match(spec)
    if m:
        if pretrained:
            raise ValueError(f"{spec} has no downloadable weights: give a checkpoint ({spec}@/path/file.th) "
                             "or pretrained=False")
        rm = ResolvedModel(spec, "builtin", arch=spec, **common)
        rm.pretrained_cfg = dict(CifarResNet(int(m.group(1)), num_classes=num_classes or 10).pretrained_cfg)
        return rm
    return _resolve_timm(spec, common)


def _resolve_timm(spec: str, common: dict[str, Any]) -> ResolvedModel:
    import timm
    from timm.models import get_pretrained_cfg

    name = spec
    if spec.startswith(("hf-hub:", "hf_hub:")):
        arch, pcfg = None, {"hf_hub_id": spec.split(":", 1)[1]}
    else:
        name = spec.removeprefix("timm/")
        local = (" (a local folder needs the prefix: local-dir:" + name + ")") if Path(name).is_dir() else ""
        if not timm.is_model(name):
            raise ValueError(f"unknown model {spec!r}: not a timm architecture, an existing path, "
                             "'local-dir:<folder>', '<arch>@<checkpoint>' or a built-in (cifar_resnet20/56)"
                             + local)
        try:
            cfg = get_pretrained_cfg(name)
        except RuntimeError as exc:  # unknown pretrained tag
            arch, _, tag = name.partition(".")
            known = timm.list_pretrained(f"{arch}.*")
            raise ValueError(f"unknown model {spec!r}: timm has no pretrained tag {tag!r} for {arch}; it knows "
                             f"{', '.join(known) if known else 'none'}. A local folder (config.json + weights) "
                             "needs the prefix local-dir:, e.g. local-dir:path/to/" + name) from exc
        arch, pcfg = name.split(".")[0], (cfg.to_dict() if cfg is not None else {})
    return ResolvedModel(name if not spec.startswith(("hf-hub:", "hf_hub:")) else spec, "timm", arch=arch,
                         pretrained_cfg=pcfg, **common)


def _resolve_local_dir(spec: str, path: Path, common: dict[str, Any]) -> ResolvedModel:
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path}: no config.json (a timm local-dir folder needs config.json + weights)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg_path}: not a readable timm config.json ({exc})") from exc
    if not isinstance(cfg, dict) or not cfg.get("architecture"):
        raise ValueError(f"{cfg_path}: no 'architecture' entry (a timm local-dir config.json names its architecture)")
    if "pretrained_cfg" in cfg:
        pcfg = dict(cfg["pretrained_cfg"])
        for k in ("num_classes", "label_names", "label_descriptions"):
            if k in cfg:
                pcfg[k] = cfg[k]
    else:  # legacy single-dict format
        pcfg = {k: v for k, v in cfg.items() if k not in ("architecture", "model_args")}
    rm = ResolvedModel(spec, "local-dir", arch=cfg.get("architecture"), path=path, pretrained_cfg=pcfg, **common)
    if rm.pretrained and rm.weights_file is None:
        raise FileNotFoundError(f"{path}: has config.json but no weights file (model.safetensors, "
                                "pytorch_model.bin, *.pth or *.bin); copy the weights next to config.json")
    bg = cfg.get("background_class_index")
    rm.background_index = int(bg) if bg is not None else None
    return rm


def _resolve_checkpoint(spec: str, path: Path, arch: str | None, common: dict[str, Any]) -> ResolvedModel:
    from timm.models import get_pretrained_cfg, is_model

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    common = dict(common, pretrained=True)
    sd = None
    if arch is None:
        sd = load_checkpoint_state(path)
        depth = _is_akamaster(sd)
        if depth is None:
            raise ValueError(f"{path}: name the architecture of this checkpoint, e.g. 'resnet18@{path}'")
        arch = f"cifar_resnet{depth}"
    rm = ResolvedModel(spec, "checkpoint", arch=arch, path=path, **common)
    rm._state = sd
    if _CIFAR_RE.match(arch):
        nc = int(sd["linear.weight"].shape[0]) if sd is not None and "linear.weight" in sd else 10
        rm.pretrained_cfg = dict(CifarResNet(int(_CIFAR_RE.match(arch).group(1)), num_classes=nc).pretrained_cfg)
    elif is_model(arch):
        cfg = get_pretrained_cfg(arch)
        rm.pretrained_cfg = cfg.to_dict() if cfg is not None else {}
        rm.pretrained_cfg.pop("label_names", None)
    else:
        raise ValueError(f"unknown architecture {arch!r} for checkpoint {path}")
    return rm


def load_model(spec: str | ModelEntry, num_classes: int | None = None, pretrained: bool = True,
               **options: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Build a model from a spec; returns ``(model in eval mode, timm data config)``.

    ``num_classes``: a new classifier of that size (0: no classifier) instead of the weights' own head.
    ``options``: ``model_args`` (dict) and preprocessing overrides (``input_size``, ``crop_pct``, ...).
    Use ``timm.data.create_transform(**data_config)`` for the matching eval transform.
    """
    model_args = options.pop("model_args", None)
    rm = resolve_model(spec, num_classes=num_classes, pretrained=pretrained, model_args=model_args, **options)
    model = rm.build()
    model.transferkit_info = {"spec": rm.spec, "kind": rm.kind, "arch": rm.arch,  # type: ignore[assignment]
                              "background_index": rm.background_index if num_classes is None else None,
                              "weights_sha256": rm.weights_sha256()}
    return model, rm.data_config()


# ------------------------------------------------------------------------------------------------
# features and logits from one forward pass
# ------------------------------------------------------------------------------------------------
def _pool(t: torch.Tensor) -> torch.Tensor:
    if t.ndim == 4:  # N, C, H, W
        return t.float().mean((2, 3))
    if t.ndim == 3:  # N, tokens, C
        return t.float().mean(1)
    return t.float().flatten(1)


def make_feature_fn(model: nn.Module, layer: str | None = None,
                    with_logits: bool = True) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]:
    """``x -> (features, logits or None)`` in one forward pass.

    ``layer=None`` (or ``'penultimate'``): the pooled pre-logits features (timm ``forward_head(pre_logits=True)``).
    ``layer='logits'``: the logits. Any other value names a module (``model.named_modules()``), whose output
    is globally average-pooled (4-D maps over H, W; 3-D token sequences over tokens).
    """
    has_head = with_logits and int(getattr(model, "num_classes", 0) or 0) > 0
    timm_like = hasattr(model, "forward_features") and hasattr(model, "forward_head")
    if layer in (None, "penultimate", "pre_logits", "logits") and timm_like:
        want_logits = has_head or layer == "logits"

        def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            h = model.forward_features(x)
            logits = model.forward_head(h) if want_logits else None
            if layer == "logits":
                return logits.float(), (logits if has_head else None)
            return _pool(model.forward_head(h, pre_logits=True)), logits

        return fn
    modules = dict(model.named_modules())
    if layer in (None, "penultimate", "pre_logits", "logits"):
        clf = model.get_classifier() if hasattr(model, "get_classifier") else None
        if clf is None:
            linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError("cannot find the classifier of this model; pass layer=<module name>")
            clf = linears[-1]
        target, take_input = clf, layer != "logits"
    else:
        if layer not in modules:
            sample = ", ".join(n for n in list(modules)[1:12])
            raise ValueError(f"no module named {layer!r} in the model (e.g. {sample}, ...)")
        target, take_input = modules[layer], False
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: Any) -> None:
        t = inp[0] if take_input else out
        if isinstance(t, (tuple, list)):
            t = t[0]
        store["t"] = t

    handle = target.register_forward_hook(hook)

    def fn_hook(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = model(x)
        logits = out if (has_head and isinstance(out, torch.Tensor) and out.ndim == 2) else None
        return _pool(store.pop("t")), logits

    fn_hook.remove_hook = handle.remove  # type: ignore[attr-defined]
    return fn_hook


# ------------------------------------------------------------------------------------------------
# zoo files
# ------------------------------------------------------------------------------------------------
ENTRY_OPTIONS = frozenset(PREPROCESS_KEYS) | {"layer", "batch_size", "pretrained", "model_args", "num_classes",
                                             "drop_background", "precision"}
INFO_KEYS = ("imagenet_top1",)  # facts about a model (ModelEntry.info), not options


@dataclass
class ModelEntry:
    """One model of a zoo: display ``name``, ``spec`` string, per-model ``options`` and facts about the
    model that change nothing it computes (``info``: e.g. ``imagenet_top1``, the source accuracy the
    benchmark's ``source_accuracy`` baseline ranks by; kept out of ``options`` so cache keys are unchanged)."""

    name: str
    spec: str
    options: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: str | ModelEntry, name: str | None = None) -> ModelEntry:
        if isinstance(spec, ModelEntry):
            return spec
        return cls(name or default_model_name(spec), str(spec))


def default_model_name(spec: str) -> str:
    """Short display name of a spec: folder/file stem for paths, ``arch@stem`` for checkpoints."""
    s = str(spec).removeprefix("local-dir:").rstrip("/")
    ac = _split_arch_ckpt(s)
    if ac is not None:
        return f"{ac[0]}@{Path(ac[1]).stem}"
    if "/" in s or os.sep in s:
        p = Path(s)
        return p.name if p.suffix not in CHECKPOINT_SUFFIXES else p.stem
    return s.removeprefix("hf-hub:").removeprefix("timm/")


def read_zoo(path: str | Path) -> list[ModelEntry]:
    """Read a zoo YAML file.

    .. code-block:: yaml

        defaults: {batch_size: 32}          # options applied to every model (optional)
        models:
          - resnet50.a1_in1k                # a spec string
          - name: lite0                     # or a mapping: name + model (spec) + options
            model: local-dir:../shared/weights/tf_efficientnet_lite0.in1k
            crop_pct: 1.0
          - name: r18-finetuned
            arch: resnet18
            checkpoint: ckpt/resnet18.safetensors

    A top-level list, or ``models:`` as a ``{name: spec-or-mapping}`` mapping, also works. Relative paths
    are resolved against the YAML file's folder.
    """
    import yaml

    path = Path(path)
    doc = yaml.safe_load(path.read_text())
    base = path.resolve().parent
    defaults: dict[str, Any] = {}
    if isinstance(doc, Mapping):
        defaults = dict(doc.get("defaults") or {})
        items = doc.get("models")
        if items is None:
            raise ValueError(f"{path}: expected a 'models:' key")
    else:
        items = doc
    return zoo_entries(items, base, where=str(path), defaults=defaults)


def zoo_entries(items: Any, base: Path, where: str = "zoo",
                defaults: Mapping[str, Any] | None = None) -> list[ModelEntry]:
    """Model entries from a parsed zoo document (a list, or a name -> entry mapping).

    Each entry is a spec string or a mapping with ``model`` (or ``arch`` + ``checkpoint``), an
    optional ``name`` and per-model options; relative paths are taken from ``base``. Zoo files
    and inline zoos in benchmark specs share this one format.
    """
    defaults = dict(defaults or {})
    if isinstance(items, Mapping):
        items = [dict(v, name=k) if isinstance(v, Mapping) else {"name": k, "model": v} for k, v in items.items()]
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        raise ValueError(f"{where}: 'models' must be a non-empty list")
    bad = set(defaults) - ENTRY_OPTIONS
    if bad:
        raise ValueError(f"{where}: unknown default option(s) {sorted(bad)}")
    entries, seen = [], set()
    for item in items:
        if isinstance(item, str):
            item = {"model": item}
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: each model must be a string or a mapping, got {item!r}")
        item = dict(item)
        spec = item.pop("model", None) or item.pop("spec", None)
        arch, ckpt = item.pop("arch", None), item.pop("checkpoint", None)
        if ckpt is not None:
            spec = f"{arch or spec}@{ckpt}" if (arch or spec) else str(ckpt)
        elif spec is None:
            spec = arch
        if not spec:
            raise ValueError(f"{where}: model entry {item!r} has no 'model' (or arch/checkpoint)")
        spec = _rebase(str(spec), base)
        name = str(item.pop("name", None) or default_model_name(spec))
        info = {k: _percent(item.pop(k), f"{where}: model {name!r}: {k}") for k in INFO_KEYS if k in item}
        unknown = set(item) - ENTRY_OPTIONS
        if unknown:
            raise ValueError(f"{where}: model {name!r}: unknown option(s) {sorted(unknown)}; "
                             f"allowed {sorted(ENTRY_OPTIONS)}")
        if name in seen:
            raise ValueError(f"{where}: duplicate model name {name!r}")
        seen.add(name)
        entries.append(ModelEntry(name, spec, {**defaults, **item}, info))
    return entries


def _percent(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= float(v) <= 100:
        raise ValueError(f"{where} must be a number in [0, 100] (a top-1 accuracy in %), got {v!r}")
    return float(v)


def _rebase(spec: str, base: Path) -> str:
    """Make relative paths inside a spec absolute (relative to the zoo file's folder)."""
    def fix(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    if spec.startswith("local-dir:"):
        return "local-dir:" + fix(spec[len("local-dir:"):])
    ac = _split_arch_ckpt(spec)
    if ac is not None:
        return f"{ac[0]}@{fix(ac[1])}"
    if ("/" in spec or spec.startswith(".")) and not spec.startswith(("hf-hub:", "timm/")):
        return fix(spec)
    return spec
