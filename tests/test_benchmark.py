"""Benchmark tables: task naming, the paper's reference figures, seed means and the headline."""

import pytest

from offline_chunk.benchmark import (
    Evaluation,
    headline,
    load_reference,
    markdown_table,
    paper_value,
    parse_task,
    summarize,
)


def test_parse_task_maps_names_and_reward_protocol():
    assert parse_task("scene-play-singletask-task2-v0") == ("scene-play-task2", "sparse")
    assert parse_task("puzzle-3x3-play-singletask-task1-v0") == ("puzzle-3x3-play-task1", "sparse")
    assert parse_task("cube-double-play-singletask-task5-v0") == ("cube-double-play-task5", "ogbench")
    with pytest.raises(ValueError, match="unknown task"):
        parse_task("hopper-medium-v2")


def test_reference_values_are_the_published_ones():
    reference = load_reference()
    # The reference README quotes these figures (rounded to two decimals) at 1M steps ...
    two_decimals = pytest.approx
    assert paper_value(reference, "scene-play-task1", "QC", 1_000_000) == (
        two_decimals(0.99, abs=0.005 + 1e-9),
        1.0,
    )
    assert paper_value(reference, "cube-double-play-task1", "QC", 1_000_000) == (
        two_decimals(0.83, abs=0.005 + 1e-9),
        1.0,
    )
    assert paper_value(reference, "cube-double-play-task1", "FQL", 1_000_000) == (
        two_decimals(0.64, abs=0.005 + 1e-9),
        1.0,
    )
    # ... and at 100k: QC 0.98 on scene task 1; the nearest reference step to 120k is 0.1M.
    assert paper_value(reference, "scene-play-task1", "QC", 120_000) == (
        two_decimals(0.98, abs=0.005 + 1e-9),
        0.1,
    )
    assert paper_value(reference, "scene-play-task1", "nonexistent", 1) is None


def test_summary_means_over_seeds_and_headline_is_last_three():
    evaluations = [
        Evaluation("cpql", seed, step, wall_s=step / 100 + seed, success=success)
        for seed, successes in ((0, [0.0, 0.2, 0.4, 0.6]), (1, [0.2, 0.4, 0.6, 1.0]))
        for step, success in zip((1000, 2000, 3000, 4000), successes, strict=True)
    ]
    rows = summarize(evaluations)
    assert [r["step"] for r in rows] == [1000, 2000, 3000, 4000]
    assert [r["success"] for r in rows] == pytest.approx([0.1, 0.3, 0.5, 0.8])
    assert rows[0]["seeds"] == 2 and rows[0]["wall_s"] == pytest.approx(10.5)
    assert headline(rows, "cpql") == pytest.approx((0.3 + 0.5 + 0.8) / 3)
    table = markdown_table(rows, "scene-play-task1", load_reference())
    assert "| 4,000 | 0.800 (40) n=2 |" in table
    assert "0.000 @0.0M" in table  # the paper at the nearest reference step to 4k updates
    assert "cpql 0.533" in table
