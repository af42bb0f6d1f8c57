"""Task-oriented knowledge transfer: a small deployable model from a large vision foundation model.

Following Vemulapalli et al. (2024), "Knowledge Transfer from Vision Foundation Models for Efficient
Training of Small Task-specific Models": (a) adapt the teacher to the target task (linear probe or full
fine-tune on the labeled images), (b) train the student on an unlabeled transfer set to match the adapted
teacher's task predictions, (c) fine-tune the student on the labeled images. The baselines of the paper's
comparison run through the same code: task-agnostic feature distillation, the student's pretrained
weights, and training from scratch.

>>> from transferkit.distill import DistillConfig, run_distill
>>> cfg = DistillConfig(teacher="local-dir:../shared/weights/tf_efficientnet_lite2.in1k",
...                     student="local-dir:../shared/weights/mobilenetv1_025.in1k",
...                     data="../shared/data/eurosat/eurosat.zip", per_class=10)   # doctest: +SKIP
>>> run_distill(cfg)["student_accuracy"]                                            # doctest: +SKIP
"""

from .config import METHODS, DistillConfig, StageConfig
from .export import export_onnx, onnx_predict, verify_onnx
from .losses import distillation_loss, feature_loss, kd_kl
from .pipeline import (evaluate, load_student, open_transfer, prepare_teacher_cache, run_comparison, run_distill,
                       summarize)
from .targets import TeacherFeatureStore
from .teacher import fit_linear_probe
from .trainer import Trainer
from .views import AugRecipe, View, ViewRenderer, make_view

__all__ = [
    "METHODS",
    "AugRecipe",
    "DistillConfig",
    "StageConfig",
    "TeacherFeatureStore",
    "Trainer",
    "View",
    "ViewRenderer",
    "distillation_loss",
    "evaluate",
    "export_onnx",
    "feature_loss",
    "fit_linear_probe",
    "kd_kl",
    "load_student",
    "make_view",
    "onnx_predict",
    "open_transfer",
    "prepare_teacher_cache",
    "run_comparison",
    "run_distill",
    "summarize",
    "verify_onnx",
]
