"""Before a timm model downloads its weights: are they cached, and can the hub be reached at all?

Without this check, a hub name with no network spends about a minute in retries and ends in a long
traceback. Here the hub host gets one short TCP probe per process (a few seconds at most); when the
weights are not in the local cache and the hub cannot be reached, or ``HF_HUB_OFFLINE=1`` is set, the
caller gets one line saying what to do instead (a ``local-dir:`` folder, or the cache).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["HubUnavailableError", "cached_weights", "check_weights_reachable", "download_failure", "host_reachable"]

PROBE_TIMEOUT_S = 3.0
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                    "open_clip_pytorch_model.bin")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_REACHABLE: dict[tuple[str, int], bool] = {}

OFFLINE_HINT = ("without network, use a local timm folder: local-dir:<folder> holding config.json and "
                "model.safetensors (e.g. local-dir:../shared/weights/mobilenetv2_100.in1k), or set "
                "HF_HUB_OFFLINE=1 to use only weights already in the Hugging Face cache")


class HubUnavailableError(ValueError):
    """The weights must be downloaded and cannot be."""


def host_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connection attempt to the host of ``url`` (remembered for the process). Behind an HTTP
    proxy the probe is skipped (the proxy decides), so this never blocks a working set-up."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    parts = urlsplit(url)
    if not parts.hostname:
        return True
    key = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    if key not in _REACHABLE:
        try:
            with socket.create_connection(key, timeout=timeout):
                _REACHABLE[key] = True
        except OSError:
            _REACHABLE[key] = False
    return _REACHABLE[key]


def _hf_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def cached_weights(pretrained_cfg: dict[str, Any]) -> str | None:
    """Local path of the weights a timm pretrained config points to, if they are already downloaded."""
    hub_id = pretrained_cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = str(hub_id).partition("@")
        names = ([pretrained_cfg["hf_hub_filename"]] if pretrained_cfg.get("hf_hub_filename")
                 else list(_HF_WEIGHT_FILES))
        for name in names:
            found = try_to_load_from_cache(repo, name, revision=revision or None)
            if isinstance(found, str):
                return found
    url = pretrained_cfg.get("url")
    if url:
        import torch.hub

        p = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(url).path).name
        if p.is_file():
            return str(p)
    return None


def check_weights_reachable(spec: str, pretrained_cfg: dict[str, Any]) -> str | None:
    """Fail fast when the weights of ``spec`` must be downloaded but cannot be.

    Returns the cached weights file when the hub is unreachable but the weights are cached (the caller
    can then load that file instead of waiting for the hub's retries), else None.
    """
    if pretrained_cfg.get("file") or pretrained_cfg.get("state_dict") is not None:
        return None
    cached = cached_weights(pretrained_cfg)
    if pretrained_cfg.get("hf_hub_id"):
        from huggingface_hub import constants

        endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
        if cached:
            return cached if (_hf_offline() or not host_reachable(endpoint)) else None
        if _hf_offline():
            raise HubUnavailableError(
                f"cannot load the weights of {spec!r}: HF_HUB_OFFLINE is set and {pretrained_cfg['hf_hub_id']} "
                "is not in the local Hugging Face cache; use a local timm folder instead: local-dir:<folder> "
                "holding config.json and model.safetensors")
        where = endpoint
    elif pretrained_cfg.get("url"):
        if cached:
            return None  # torch.hub loads its own cache without the network
        where = str(pretrained_cfg["url"])
    else:
        return None
    if not host_reachable(where):
        host = urlsplit(where).hostname or where
        raise HubUnavailableError(f"cannot download the weights of {spec!r}: {host} is not reachable "
                                  "(no network?); " + OFFLINE_HINT)
    return None


_NETWORK_MODULES = ("huggingface_hub", "httpx", "httpcore", "requests", "urllib3", "urllib")


def download_failure(spec: str, exc: BaseException) -> HubUnavailableError | None:
    """When ``exc`` (raised while timm fetched pretrained weights) is a network or hub error, the one-line
    error to raise instead of its traceback; None for anything else (a real model error stays as it is)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        module = type(cur).__module__ or ""
        if module.split(".")[0] in _NETWORK_MODULES or isinstance(cur, (ConnectionError, TimeoutError, socket.gaierror)):
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0].rstrip(".")
            return HubUnavailableError(f"cannot download the weights of {spec!r} ({first[:200]}); " + OFFLINE_HINT)
        cur = cur.__cause__ or cur.__context__
    return None
