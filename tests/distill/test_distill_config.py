"""DistillConfig: YAML round trip, validation with clear errors, overrides, run digest."""

from __future__ import annotations

import pytest

from transferkit.distill import DistillConfig, StageConfig
from distill_fixtures import *  # noqa: F401,F403 - fixtures


def _cfg(**kw):
    base = dict(teacher="t", student="s", data="d")
    base.update(kw)
    return DistillConfig(**base)


def test_yaml_round_trip(tmp_path):
    cfg = _cfg(per_class=10, views=3, aug_scale=(0.5, 1.0), distill={"epochs": 2, "lr": 0.01},
               probe_l2=[0.1, 1.0], log_formats=["jsonl"])
    assert isinstance(cfg.distill, StageConfig) and cfg.distill.lr == 0.01
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    back = DistillConfig.from_yaml(path)
    assert back == cfg
    assert back.digest() == cfg.digest()


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match="bogus"):
        DistillConfig.from_dict({"teacher": "t", "bogus": 1})
    with pytest.raises(ValueError, match="lrr"):
        DistillConfig.from_dict({"distill": {"lrr": 1}})
    p = tmp_path / "bad.yaml"
    p.write_text("teacher: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        DistillConfig.from_yaml(p)
    with pytest.raises(FileNotFoundError):
        DistillConfig.from_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize("changes, message", [
    ({"method": "magic"}, "method must be one of"),
    ({"teacher": ""}, "needs a teacher"),
    ({"student": ""}, "no student"),
    ({"data": ""}, "no labeled target dataset"),
    ({"views": 0}, "views"),
    ({"temperature": 0}, "temperature"),
    ({"soft_weight": 0, "hard_weight": 0}, "not both 0"),
    ({"aug_scale": (0.0, 1.0)}, "aug_scale"),
    ({"distill": {"lr": -1}}, "distill.lr"),
    ({"finetune": {"batch_size": 0}}, "finetune.batch_size"),
    ({"precision": "fp8"}, "precision"),
    ({"per_class": 0}, "per_class"),
    ({"log_formats": ["xml"]}, "log_formats"),
])
def test_validation_names_the_problem(changes, message):
    with pytest.raises(ValueError, match=message):
        _cfg(**changes).validate()


def test_baselines_need_no_teacher():
    _cfg(teacher="", method="pretrained").validate()
    _cfg(teacher="", method="scratch").validate()


def test_override_and_digest():
    cfg = _cfg()
    new = cfg.override(["distill.lr=0.5", "views=4", "transfer=null", "aug_scale=[0.2, 0.9]"])
    assert new.distill.lr == 0.5 and new.views == 4 and new.aug_scale == (0.2, 0.9)
    assert cfg.distill.lr != 0.5  # the original is untouched
    with pytest.raises(ValueError, match="unknown config key"):
        cfg.override(["nope=1"])
    with pytest.raises(ValueError, match="unknown stage field"):
        cfg.override(["distill.nope=1"])
    with pytest.raises(ValueError, match="key=value"):
        cfg.override(["views"])
    # output locations and logging do not change what is computed; learning rates do
    assert cfg.replace(out_dir="elsewhere", progress=False, num_workers=3).digest() == cfg.digest()
    assert new.digest() != cfg.digest()


def test_stage_steps():
    st = StageConfig(epochs=2.5, batch_size=10)
    assert st.num_steps(100) == 25
    assert StageConfig(epochs=1, batch_size=64).num_steps(10) == 1
    assert StageConfig(steps=7).num_steps(10_000) == 7
