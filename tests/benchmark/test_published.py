"""Built-in published ground truth: shapes, values against the shared reference files, provenance."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest
from shared_data import shared_path

from transferkit.benchmark.published import list_tables, load_table, published_metrics, table_rows


def test_tables_have_the_published_shapes() -> None:
    assert list_tables() == ["itm10", "sfda_selfsup12", "sfda_supervised11"]
    itm = load_table("itm10")
    assert sorted(itm) == sorted(["caltech101", "cars", "cifar100", "cifar10", "dtd", "aircraft", "flowers", "food",
                                  "pets", "sun397"])
    assert all(len(v) == 10 for v in itm.values())
    assert itm["cifar10"]["MAE-L16"] == 98.55 and itm["aircraft"]["SimMIM-B16"] == 68.32
    sup = load_table("sfda_supervised11")
    assert len(sup) == 11 and all(len(v) == 11 for v in sup.values())
    ssl = load_table("sfda_selfsup12")
    assert len(ssl["cifar10"]) == 12 and len(ssl["eurosat"]) == 10  # SimCLR placeholders (0) left out
    assert all(0 < a <= 100 for t in (itm, sup, ssl) for v in t.values() for a in v.values())
    with pytest.raises(KeyError, match="unknown published table"):
        table_rows("nope")


def test_values_match_the_shared_reference() -> None:
    ref = json.loads(shared_path("reference", "published", "finetune_acc_sfda_group1.json").read_text())
    assert load_table("sfda_supervised11") == {d: {m: float(a) for m, a in v.items()} for d, v in ref.items()}
    ref2 = json.loads(shared_path("reference", "published", "finetune_acc_sfda_group2.json").read_text())
    ssl = load_table("sfda_selfsup12")
    assert all(ssl[d] == {m: float(a) for m, a in v.items()} for d, v in ref2.items())


def test_itm_table3_and_table1_match_the_paper_text() -> None:
    text = shared_path("seeds", "itm-transferability-estimation.txt").read_text()
    row = re.search(r"^DINO-S8\t(.+)$", text[text.index("Table 3:"):], re.M).group(1).split("\t")
    itm = load_table("itm10")
    order = ["caltech101", "cars", "cifar100", "cifar10", "dtd", "aircraft", "flowers", "food", "pets", "sun397"]
    assert [itm[d]["DINO-S8"] for d in order] == [float(v) for v in row]
    wtau = published_metrics("itm10")
    assert wtau["ITM"]["dtd"] == 0.77 and wtau["LogME"]["caltech101"] == 0.71
    assert published_metrics("itm10", "seconds")["ITM"]["sun397"] == 11.5
    assert published_metrics("sfda_supervised11")["SFDA"]["cifar10"] == 0.949


def test_provenance_readme_is_shipped() -> None:
    readme = resources.files("transferkit.benchmark").joinpath("published").joinpath("README.md").read_text()
    for name in ("itm_table3.csv", "sfda_supervised11.csv", "sfda_selfsup12.csv", "published_metrics.csv"):
        assert name in readme
