"""Export the final student to ONNX and check that ONNX Runtime predicts what PyTorch predicts.

Needs the optional ``export`` extra (``pip install "transferkit[export]"``: onnx + onnxruntime). The graph
has a dynamic batch axis; input ``input`` (N, 3, H, W, normalised like the student's data config), output
``logits`` (N, classes). Uses the TorchScript-based exporter (``dynamo=False``), which needs no extra
package and handles timm's "same"-padding convolutions at a fixed resolution.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..reporting import temp_file_beside

__all__ = ["export_onnx", "onnx_predict", "verify_onnx"]


def export_onnx(model: nn.Module, path: str | Path, input_size: tuple[int, int], *, opset: int = 17) -> Path:
    """Write ``model`` (eval mode, CPU, float32) to ``path`` atomically; returns the path."""
    try:
        import onnx  # noqa: F401 - the exporter needs it
    except ImportError as exc:
        raise ImportError('ONNX export needs the optional extra: pip install "transferkit[export]" '
                          "(onnx, onnxruntime)") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was = model.training
    model = model.eval()
    dev = next(model.parameters()).device
    model_cpu = model.to("cpu").float()
    x = torch.zeros(2, 3, *input_size)
    fd, tmp = temp_file_beside(path)  # 0o666 & ~umask, not 0600
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in favour of dynamo
            torch.onnx.export(model_cpu, (x,), tmp, dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                              do_constant_folding=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        model.to(dev)
        model.train(was)
    return path


def onnx_predict(path: str | Path, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Logits of an exported model on a batch, with ONNX Runtime (CPU)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError('checking the ONNX file needs onnxruntime: pip install "transferkit[export]"') from exc
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return sess.run(None, {sess.get_inputs()[0].name: arr.astype(np.float32)})[0]


@torch.no_grad()
def verify_onnx(path: str | Path, model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Compare ONNX Runtime with PyTorch on ``x``: max |logit difference| and arg-max agreement."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    ref = model(x.to(dev)).float().cpu().numpy()
    model.train(was)
    got = onnx_predict(path, x)
    return {"n": int(len(x)), "max_abs_diff": float(np.abs(got - ref).max()) if len(x) else 0.0,
            "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()) if len(x) else 1.0}
