"""The mixture schedule: realised per-source counts follow the configured weights, phase by phase;
each source is read in whole shuffled passes; bad mixture keys are one-line config errors."""

from __future__ import annotations

import numpy as np
import pytest

from medtune.config import stage_from_dict
from medtune.data.schedule import mixture_order, phase_weights
from medtune.errors import MedtuneError


def test_constant_mixture_counts_match_the_weights_exactly():
    plan = mixture_order([100, 400], [0.3, 0.7], None, phases=10, total=1000, seed=0)
    assert len(plan.phases) == 1 and plan.phases[0]["counts"] == [300, 700]
    assert np.bincount(plan.source_of).tolist() == [300, 700]
    assert len(plan.order) == 1000
    # source 0 holds rows 0..99: upsampled in 3 whole passes, every row exactly 3 times
    assert np.bincount(plan.order[plan.source_of == 0], minlength=100).tolist() == [3] * 100
    assert set(plan.order[plan.source_of == 1].tolist()) <= set(range(100, 500))


def test_anneal_moves_from_the_first_weights_to_the_final_ones():
    plan = mixture_order([1000, 1000], [0.9, 0.1], [0.1, 0.9], phases=5, total=5000, seed=1)
    text_share = [p["counts"][0] / p["samples"] for p in plan.phases]
    assert text_share == pytest.approx([0.9, 0.7, 0.5, 0.3, 0.1])
    # realised over windows of the order itself, not only in the record
    windows = plan.source_of.reshape(5, 1000)
    assert [(w == 0).mean() for w in windows] == pytest.approx(text_share)
    assert [p["weights"] for p in plan.phases][0] == [0.9, 0.1]
    assert sum(sum(e) for e in plan.epochs) == 5000 and len(plan.epochs) == 3  # epoch = 2000 rows


def test_sampled_mixture_is_deterministic_and_within_tolerance_per_window():
    a = mixture_order([37, 11, 5], [5, 3, 2], None, phases=1, total=900, seed=7)
    b = mixture_order([37, 11, 5], [5, 3, 2], None, phases=1, total=900, seed=7)
    assert (a.order == b.order).all()
    counts = np.bincount(a.source_of)
    assert counts.tolist() == [450, 270, 180]
    # shuffled inside the phase: any 300-sample window is close to the weights too
    window = np.bincount(a.source_of[300:600], minlength=3) / 300
    assert window == pytest.approx([0.5, 0.3, 0.2], abs=0.08)


def test_phase_weights_interpolate_linearly():
    assert [[float(x) for x in w] for w in phase_weights([1, 0], [0, 1], 3)] == [[1, 0], [0.5, 0.5], [0, 1]]


def test_an_empty_source_with_a_weight_is_refused():
    with pytest.raises(MedtuneError, match="source 1 has no training rows"):
        mixture_order([10, 0], [0.5, 0.5], None, phases=1, total=10, seed=0)


BASE = {"stage": "sft", "model": {"path": "m"}, "output": "out",
        "data": {"train": ["corpus.jsonl", "chat.jsonl"], "mixture": "anneal", "weights": [0.9, 0.1],
                 "final_weights": [0.2, 0.8]}}


def make(stage="sft", **data):
    return stage_from_dict({**BASE, "stage": stage, "data": {**BASE["data"], **data}}, "run.yaml")


def test_a_good_mixture_config_loads():
    cfg = make()
    assert cfg.data.mixture == "anneal" and cfg.data.final_weights == [0.2, 0.8] and cfg.data.mixture_phases == 10
    assert make(stage="pt").data.weights == [0.9, 0.1]


@pytest.mark.parametrize("changes,pattern", [
    ({"weights": [1.0]}, r"data.weights needs one weight per data.train entry \(2\), got 1"),
    ({"final_weights": [0.5, 0.3, 0.2]}, r"data.final_weights needs one weight per data.train entry"),
    ({"weights": [-1, 2]}, r"data.weights\[0\] must be >= 0"),
    ({"weights": [0, 0]}, r"data.weights: all weights are 0"),
    ({"weights": [0, 1], "final_weights": [0, 1]}, r"entry 'corpus.jsonl' has weight 0 in every phase"),
    ({"mixture": "constant"}, r"data.final_weights applies only with data.mixture: anneal"),
    ({"mixture": "constant", "final_weights": [], "mixture_phases": 4}, r"mixture_phases applies only with data.mixture: anneal"),
    ({"mixture": "none"}, r"data.weights applies only with data.mixture: constant or anneal"),
    ({"mixture": "anneel"}, r"data.mixture: 'anneel' is not allowed \(did you mean 'anneal'\?\)"),
    ({"mixture_phases": 0}, r"data.mixture_phases must be >= 1"),
    ({"curriculum": "length"}, r"cannot be combined with data.curriculum"),
    ({"weights": ["a", 1]}, r"data.weights\[0\]: expected float"),
    ({"mixtures": "anneal"}, r"unknown key 'data.mixtures' \(did you mean 'mixture'"),
])
def test_bad_mixture_keys_are_one_line_errors(changes, pattern):
    with pytest.raises(MedtuneError, match=pattern) as exc:
        make(**changes)
    assert "\n" not in str(exc.value) and str(exc.value).startswith("run.yaml: ")


def test_mixture_is_refused_by_stages_that_cannot_mix():
    raw = {**BASE, "stage": "dpo"}
    with pytest.raises(MedtuneError, match=r"data.mixture applies to pt and sft, not stage dpo"):
        stage_from_dict(raw, "run.yaml")
