"""The front against a hand-checked set of points (ties, a dominated chain, an infeasible point that
would dominate everything), its hypervolume and picks, and the files drawn from it."""
import csv
import dataclasses
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import search.parity
import search.promote
from search import pareto, plots
from search.storage import Location

OBJECTIVES = ["accuracy", "latency_ms"]
# name: (accuracy %, latency ms, size KB, constraints)
POINTS = {
    "A": (90.0, 5.0, 40.0, [-1.0]),
    "B": (95.0, 10.0, 80.0, [-1.0]),
    "C": (95.0, 10.0, 70.0, [0.0]),   # ties B on both objectives; a constraint at exactly 0 is feasible
    "D": (85.0, 6.0, 30.0, [-1.0]),   # dominated by A and by G
    "E": (99.0, 4.0, 10.0, [2.0]),    # infeasible: would dominate every other point
    "F": (80.0, 3.0, 20.0, [-1.0]),
    "G": (89.0, 5.0, 35.0, [-1.0]),   # dominated by A only
}


def trials(points=POINTS):
    out = []
    for i, (name, (acc, lat, size, constraints)) in enumerate(points.items()):
        t = create_trial(values=[acc, lat], params={"w": float(i)}, distributions={"w": FloatDistribution(0, 100)},
                         user_attrs={"accuracy": acc, "latency_ms": lat, "size_kb": size, "test_accuracy": acc - 0.5,
                                     "baseline": "float" if name == "B" else ""},
                         constraints={"size_kb": c for c in constraints})
        t.number = i
        out.append(t)
    return out


def by_name(pts):
    names = list(POINTS)
    return {names[p.trial]: p for p in pts}


def test_front_ranks_ties_and_constraints():
    pts = by_name(pareto.points(trials(), OBJECTIVES))
    assert {n for n, p in pts.items() if p.pareto} == {"A", "B", "C", "F"}
    assert {n: p.rank for n, p in pts.items()} == {"A": 1, "B": 1, "C": 1, "F": 1, "G": 2, "D": 3, "E": 4}
    assert not pts["E"].feasible and pts["C"].feasible


def test_rerank_follows_changed_values_and_keeps_infeasible_points_off_the_front():
    import dataclasses
    pts = pareto.points(trials(), OBJECTIVES)
    # G measured faster than A (which it trailed by 1 point): G joins the front; D, dominated by both, ranks 2
    measured = [dataclasses.replace(p, values={**p.values, "latency_ms": 4.0}) if list(POINTS)[p.trial] == "G" else p
                for p in pts]
    again = by_name(pareto.rerank(measured, OBJECTIVES))
    assert {n for n, p in again.items() if p.pareto} == {"A", "B", "C", "F", "G"}
    assert again["D"].rank == 2 and not again["E"].pareto and again["E"].rank == 3  # infeasible: after every feasible point
    assert by_name(pareto.rerank(pts, OBJECTIVES)) == by_name(pts)  # unchanged values: unchanged ranks
    assert pareto.rerank([], OBJECTIVES) == []


def test_incomplete_trials_are_left_out():
    running = create_trial(state=TrialState.RUNNING, params={}, distributions={})
    failed = create_trial(state=TrialState.FAIL, params={}, distributions={})
    assert len(pareto.points([*trials(), running, failed], OBJECTIVES)) == len(POINTS)


def test_hypervolume_by_hand():
    # reference (70 %, 12 ms): F adds [3,12]x[70,80] = 90, A [5,12]x[80,90] = 70, B/C [10,12]x[90,95] = 10
    pts = pareto.points(trials(), OBJECTIVES)
    assert pareto.hypervolume(pts, OBJECTIVES, {"accuracy": 70.0, "latency_ms": 12.0}) == pytest.approx(170.0)
    # a reference the front does not improve on: nothing counted
    assert pareto.hypervolume(pts, OBJECTIVES, {"accuracy": 99.0, "latency_ms": 12.0}) == 0.0


def test_knee_and_most_accurate_picks():
    pts = pareto.points(trials(), OBJECTIVES)
    names = list(POINTS)
    # scaled over the front: F (1, 0), A (1/3, 2/7), B/C (0, 1): A is nearest the ideal corner
    assert names[pareto.knee(pts, OBJECTIVES).trial] == "A"
    assert names[pareto.most_accurate(pts, {}).trial] in {"B", "C"}  # E is more accurate but infeasible
    assert names[pareto.most_accurate(pts, {"latency_ms": 6.0}).trial] == "A"
    assert names[pareto.most_accurate(pts, {"latency_ms": 10.0, "size_kb": 75.0}).trial] == "C"
    with pytest.raises(ValueError, match="latency_ms <= 1.0"):
        pareto.most_accurate(pts, {"latency_ms": 1.0, "size_kb": None})


def test_fastest_within_an_accuracy_drop_of_the_float_baseline():
    """B is the float baseline (95%): within 5 points, A (90%, 5 ms) beats G (89%) and D; within 15, F (80%,
    3 ms); E is faster still but infeasible. `promote` picks the same with pick=fastest."""
    pts = pareto.points(trials(), OBJECTIVES)
    names = list(POINTS)
    assert pareto.accuracy_floor(pts, 5.0) == 90.0
    assert names[pareto.least(pts, pareto.accuracy_floor(pts, 5.0), "latency_ms").trial] == "A"
    assert names[pareto.least(pts, pareto.accuracy_floor(pts, 15.0), "latency_ms").trial] == "F"
    assert names[pareto.least(pts, pareto.accuracy_floor(pts, 0.0), "latency_ms").trial] in {"B", "C"}
    asked = search.promote.Request(
        where=Location("s", Path("s")), tracking_uri="sqlite:///m.db", cache_dir=".cache", trial=None, pick="fastest",
        rank_by="predicted", latency_budget_ms=None, size_budget_kb=None, max_drop=5.0, tolerance=1.0,
        min_agreement=99.5, litert_min_agreement=98.0, model_name="m", alias="candidate", threads=1, phone={})
    assert names[search.promote.choose(pts, asked, OBJECTIVES, pareto.accuracy_floor(pts, 5.0)).trial] == "A"
    with pytest.raises(ValueError, match="reaches accuracy 99.50"):
        pareto.least(pts, 99.5, "latency_ms")
    without = pareto.points([t for t in trials() if t.user_attrs["baseline"] != "float"], OBJECTIVES)
    with pytest.raises(ValueError, match="no float baseline"):
        pareto.accuracy_floor(without, 1.0)


def test_smallest_within_an_accuracy_drop_of_the_float_baseline():
    """Within 5 points of B (95%): A is the smallest (40 KB); within 15: F (20 KB); within 0: C (70 KB, B is 80); E
    is smaller still but infeasible. `promote` picks the same with pick=smallest."""
    pts = pareto.points(trials(), OBJECTIVES)
    names = list(POINTS)
    assert [names[pareto.least(pts, pareto.accuracy_floor(pts, drop), "size_kb").trial] for drop in (5.0, 15.0, 0.0)] \
        == ["A", "F", "C"]
    asked = search.promote.Request(
        where=Location("s", Path("s")), tracking_uri="sqlite:///m.db", cache_dir=".cache", trial=None, pick="smallest",
        rank_by="predicted", latency_budget_ms=None, size_budget_kb=None, max_drop=15.0, tolerance=1.0,
        min_agreement=99.5, litert_min_agreement=98.0, model_name="m", alias="candidate", threads=1, phone={})
    assert names[search.promote.choose(pts, asked, OBJECTIVES, pareto.accuracy_floor(pts, 15.0)).trial] == "F"


def test_csv_has_every_trial_choice_and_value(tmp_path):
    pts = pareto.points(trials(), OBJECTIVES)
    pareto.write_csv(pts, tmp_path / "pareto.csv")
    rows = list(csv.DictReader(open(tmp_path / "pareto.csv")))
    assert len(rows) == len(POINTS)
    assert {"trial", "pareto", "rank", "feasible", "baseline", "w", "accuracy", "latency_ms", "size_kb"} <= set(rows[0])
    assert sum(r["pareto"] == "True" for r in rows) == 4
    assert [int(r["rank"]) for r in rows] == sorted(int(r["rank"]) for r in rows)


@pytest.mark.parametrize("objectives", [OBJECTIVES, ["accuracy", "latency_ms", "size_kb"]])
def test_plots_are_written_for_every_pair(tmp_path, objectives):
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"][:len(objectives)])
    for t in trials():
        study.add_trial(create_trial(values=[t.user_attrs[o] for o in objectives], params=t.params,
                                     distributions=t.distributions, user_attrs=t.user_attrs))
    pts = pareto.points(study.trials, objectives)
    plots.write_html(pts, objectives, tmp_path / "front.html", "t")
    plots.write_png(pts, objectives, tmp_path / "front.png", "t")
    html = (tmp_path / "front.html").read_text()
    assert "plotly" in html and html.count('"xaxis') >= 1
    assert "predicted latency (ms)" in html and ("size (KB)" in html) == ("size_kb" in objectives)
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.pairs(objectives) == [("latency_ms", "accuracy"), ("size_kb", "accuracy"), ("latency_ms", "size_kb")][
        :len(objectives) * (len(objectives) - 1) // 2]


@pytest.mark.parametrize("images, disagree, refused", [(18, 1, False), (18, 2, True), (10_000, 50, False),
                                                        (10_000, 51, True), (10_000, 0, False)])
def test_the_parity_gate_counts_whole_images(images, disagree, refused):
    """min_agreement 99.5 allows 0.5% of the images, rounded up to a whole one: 1 of 18 (where one flip is 5.6%),
    50 of 10,000."""
    checked = search.parity.Parity(90.0, 90.0, 100 * (images - disagree) / images, 0.1, images)
    point = pareto.points(trials(), OBJECTIVES)[0]
    point = dataclasses.replace(point, values={**point.values, "test_accuracy": 90.0})
    asked = search.promote.Request(
        where=Location("s", Path("s")), tracking_uri="sqlite:///m.db", cache_dir=".cache", trial=None, pick="knee",
        rank_by="predicted", latency_budget_ms=None, size_budget_kb=None, max_drop=1.0, tolerance=1.0,
        min_agreement=99.5, litert_min_agreement=98.0, model_name="m", alias="candidate", threads=1, phone={})
    if refused:
        with pytest.raises(search.promote.ParityError, match=f"{disagree} images classified otherwise"):
            search.promote.gate(checked, point, asked, "ONNX file", ("min_agreement", 99.5))
    else:
        search.promote.gate(checked, point, asked, "ONNX file", ("min_agreement", 99.5))
