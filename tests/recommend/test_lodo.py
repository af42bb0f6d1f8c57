"""Leave-one-dataset-out rule selection on a synthetic benchmark whose right answer is known."""

from __future__ import annotations

import numpy as np

from transferkit.lodo import (Task, bootstrap_mean_interval, candidate_rules, dataset_group, evaluate_rules,
                              leave_one_dataset_out, select_rule)


def _benchmark(seed: int = 0) -> list[Task]:
    """Each of m1, m2, m3 scrambles a different third of the models; every model keeps its true rank under
    two of the three, so the median (and here the mean) rank of m1..m3 is exactly right on every task,
    while each single method and the noise method are wrong somewhere."""
    rng = np.random.default_rng(seed)
    tasks = []
    for name in ["a", "a_10shot", "b", "b_10shot", "c", "d", "e"]:
        models = [f"model{i}" for i in range(9)]
        acc = dict(zip(models, rng.permutation(np.linspace(50, 90, 9))))
        order = sorted(models, key=lambda m: -acc[m])
        thirds = [order[0:3], order[3:6], order[6:9]]
        ms = {}
        for k, block in enumerate(thirds):
            scrambled = dict(zip(block, rng.permutation([acc[m] for m in block])[::-1]))
            while all(scrambled[m] == acc[m] for m in block):
                scrambled = dict(zip(block, rng.permutation([acc[m] for m in block])))
            ms[f"m{k + 1}"] = {m: scrambled.get(m, acc[m]) for m in models}
        ms["noise"] = {m: float(rng.normal()) for m in models}
        tasks.append(Task(name, ms, acc))
    return tasks


def test_dataset_group_keeps_few_shot_variants_together():
    assert dataset_group("eurosat_10shot") == "eurosat" == dataset_group("eurosat")
    assert Task("x_10shot", {}, {}).group == "x"


def test_lodo_finds_the_known_consensus_and_scores_it_out_of_sample():
    tasks = _benchmark()
    rules = candidate_rules(["m1", "m2", "m3", "noise"], sizes=(2, 3), aggregations=("rank_median", "zscore_mean"))
    out = leave_one_dataset_out(rules, tasks, top_k=())
    for h in out.held_out["any"]:
        assert h.rule.methods == ("m1", "m2", "m3") and h.rule.aggregation == "rank_median"
        assert h.metrics["weighted_tau_scipy"] == 1.0 and h.metrics["regret"] == 0.0
    assert out.chosen_on_all["any"].name == "rank_median(m1+m2+m3)"
    # single methods are wrong somewhere out of sample
    assert out.mean("single", "weighted_tau_scipy") < 1.0
    assert {h.task for h in out.held_out["single"]} == {t.name for t in tasks}


def test_a_held_out_dataset_and_its_few_shot_variant_are_chosen_without_both():
    tasks = _benchmark(1)
    rules = candidate_rules(["m1", "m2", "m3", "noise"], sizes=(2,), aggregations=("rank_mean",))
    out = leave_one_dataset_out(rules, tasks, top_k=())
    table = evaluate_rules(rules, tasks)
    by_task = {h.task: h.rule for h in out.held_out["single"]}
    train = [t.name for t in tasks if t.group != "a"]
    expected = select_rule(table, train, lambda r: r.is_single)
    assert by_task["a"] == by_task["a_10shot"] == expected


def test_top_k_family_uses_the_best_singles_of_the_training_tasks():
    tasks = _benchmark(2)
    rules = candidate_rules(["m1", "m2", "m3", "noise"], sizes=())
    out = leave_one_dataset_out(rules, tasks, top_k=(3,))
    for h in out.held_out["top_k"]:
        assert h.rule.methods == ("m1", "m2", "m3")


def test_bootstrap_interval_brackets_the_mean():
    lo, hi = bootstrap_mean_interval([0.2, 0.4, 0.6, 0.8])
    assert lo < 0.5 < hi and 0.2 <= lo and hi <= 0.8
