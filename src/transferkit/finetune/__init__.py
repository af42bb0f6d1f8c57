"""Ground-truth fine-tuning (the protocol of the ITM paper, Sec. 4.1), resumable and seeded.

>>> from transferkit.finetune import FinetuneConfig, finetune
>>> cfg = FinetuneConfig("local-dir:../shared/weights/mobilenetv2_100.in1k", "../shared/data/eurosat/eurosat.zip",
...                      per_class_train=40, per_class_test=50, img_size=64, epochs=5,
...                      output="groundtruth.csv")                                     # doctest: +SKIP
>>> finetune(cfg).accuracy                                                            # doctest: +SKIP
"""

from .config import PAPER_LRS, PAPER_WEIGHT_DECAYS, FinetuneConfig
from .groundtruth import append_ground_truth, ground_truth_by_dataset, ground_truth_pairs, read_ground_truth_rows
from .images import ImageTensors, augment_batch, load_image_tensors, normalize_batch
from .run import FinetuneResult, finetune, records_path, run_dir
from .train import evaluate, train_grid_point

__all__ = [
    "PAPER_LRS",
    "PAPER_WEIGHT_DECAYS",
    "FinetuneConfig",
    "FinetuneResult",
    "ImageTensors",
    "append_ground_truth",
    "augment_batch",
    "evaluate",
    "finetune",
    "ground_truth_by_dataset",
    "ground_truth_pairs",
    "load_image_tensors",
    "normalize_batch",
    "read_ground_truth_rows",
    "records_path",
    "run_dir",
    "train_grid_point",
]
