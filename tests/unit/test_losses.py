"""Preference losses: golden values worked out by hand with math.log / math.exp, and TRL's own
loss functions where TRL exposes one (CPO's ``cpo_loss``, ORPO's ``odds_ratio_loss``; TRL 1.16's
DPO and KTO losses are written inline in ``_compute_loss`` and cannot be called on tensors)."""

import math
import os
from types import SimpleNamespace

import pytest
import torch

from medtune.recipes.losses import (
    dpo_loss,
    kto_kl,
    kto_loss,
    orpo_loss,
    pairwise_reward_loss,
    sequence_logps,
    simpo_loss,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def softplus(x):  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_sequence_logps_sums_only_labelled_next_tokens():
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]]])
    labels = torch.tensor([[-100, 1, 2]])  # position 0 predicts token 1, position 1 predicts token 2
    total, count = sequence_logps(logits, labels)
    lse0 = math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.5))
    lse1 = math.log(math.exp(0.0) + math.exp(-1.0) + math.exp(3.0))
    assert total.item() == pytest.approx((2.0 - lse0) + (3.0 - lse1), abs=1e-6)
    assert count.tolist() == [2]
    masked, none = sequence_logps(logits, torch.tensor([[-100, -100, 2]]))
    assert masked.item() == pytest.approx(3.0 - lse1, abs=1e-6) and none.tolist() == [1]


# policy chosen -5, rejected -7; reference -6 for both: log-ratios +1 and -1, Δ = 2
POLICY_C, POLICY_R, REF_C, REF_R = t(-5.0), t(-7.0), t(-6.0), t(-6.0)


def test_dpo_sigmoid_and_label_smoothing():
    assert dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1).item() == pytest.approx(softplus(-0.2), abs=1e-6)
    assert dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.5).item() == pytest.approx(softplus(-1.0), abs=1e-6)
    smoothed = dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1, label_smoothing=0.2).item()
    assert smoothed == pytest.approx(0.8 * softplus(-0.2) + 0.2 * softplus(0.2), abs=1e-6)


def test_dpo_hinge():
    assert dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1, kind="hinge").item() == pytest.approx(0.8)
    assert dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=1.0, kind="hinge").item() == 0.0


def test_dpo_ipo_uses_per_token_log_ratios():
    loss = dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1, kind="ipo",
                    chosen_tokens=t(4), rejected_tokens=t(2))
    assert loss.item() == pytest.approx((1 / 4 + 1 / 2 - 1 / (2 * 0.1)) ** 2, abs=1e-5)  # 18.0625
    with pytest.raises(ValueError, match="tokens"):
        dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1, kind="ipo")
    with pytest.raises(ValueError, match="unknown DPO loss"):
        dpo_loss(POLICY_C, POLICY_R, REF_C, REF_R, beta=0.1, kind="robust")


def test_dpo_reference_matters():
    same_ref = dpo_loss(POLICY_C, POLICY_R, POLICY_C, POLICY_R, beta=0.1)
    assert same_ref.item() == pytest.approx(math.log(2), abs=1e-6)  # policy == reference: no preference yet


def test_orpo_is_chosen_nll_minus_lambda_log_sigmoid_odds_ratio():
    c, r = -0.5, -1.5
    log_odds = (c - r) - (math.log(1 - math.exp(c)) - math.log(1 - math.exp(r)))
    for lam in (0.1, 1.0):
        expected = -c + lam * softplus(-log_odds)
        assert orpo_loss(t(c), t(r), lam).item() == pytest.approx(expected, abs=1e-6)


def test_simpo_margin_and_gamma():
    assert simpo_loss(t(-1.0), t(-2.0), beta=2.0, gamma=0.5).item() == pytest.approx(softplus(-1.5), abs=1e-6)
    assert simpo_loss(t(-1.0), t(-2.0), beta=2.0, gamma=0.0).item() == pytest.approx(softplus(-2.0), abs=1e-6)
    assert simpo_loss(t(-1.0), t(-2.0), beta=1.0, gamma=0.5).item() == pytest.approx(softplus(-0.5), abs=1e-6)


def test_kto_weights_and_reference_point():
    policy, ref, desirable = t(-3.0, -4.0), t(-3.5, -3.5), torch.tensor([True, False])  # ratios +0.5, -0.5
    losses = kto_loss(policy, ref, desirable, kl=t(0.2), beta=0.1, desirable_weight=1.5, undesirable_weight=0.5)
    assert losses[0].item() == pytest.approx(1.5 * (1 - sigmoid(0.1 * (0.5 - 0.2))), abs=1e-6)
    assert losses[1].item() == pytest.approx(0.5 * (1 - sigmoid(0.1 * (0.2 + 0.5))), abs=1e-6)
    plain = kto_loss(policy, ref, desirable, kl=t(0.0), beta=0.1)
    assert plain.tolist() == pytest.approx([1 - sigmoid(0.05), 1 - sigmoid(0.05)], abs=1e-6)


def test_kto_kl_is_a_clamped_detached_mean():
    policy = torch.tensor([-2.0, -3.0], requires_grad=True)
    assert kto_kl(policy, t(-2.5, -2.0)).item() == 0.0  # mean(0.5, -1.0) < 0 -> 0
    kl = kto_kl(policy, t(-2.5, -3.5))
    assert kl.item() == pytest.approx(0.5) and not kl.requires_grad


def test_pairwise_reward_loss():
    assert pairwise_reward_loss(t(1.0), t(0.5)).item() == pytest.approx(softplus(-0.5), abs=1e-6)
    assert pairwise_reward_loss(t(0.5), t(1.0)).item() == pytest.approx(softplus(0.5), abs=1e-6)


# --- TRL's own loss functions, called on the same tensors -------------------------------------

CHOSEN, REJECTED = t(-0.4, -1.2, -2.0, -0.9), t(-0.8, -0.7, -2.5, -3.0)  # length-averaged log-probs


def trl_self(**fields):
    return SimpleNamespace(accelerator=SimpleNamespace(device=torch.device("cpu")), alpha=0.0,
                           label_smoothing=0.0, **fields)


@pytest.fixture(scope="module")
def trl_experimental():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    cpo = pytest.importorskip("trl.experimental.cpo")
    orpo = pytest.importorskip("trl.experimental.orpo")
    return cpo.CPOTrainer, orpo.ORPOTrainer


def test_simpo_matches_trl_cpo(trl_experimental):
    cpo, _ = trl_experimental
    theirs, _, _ = cpo.cpo_loss(trl_self(loss_type="simpo", beta=2.0, simpo_gamma=0.5), CHOSEN, REJECTED)
    torch.testing.assert_close(simpo_loss(CHOSEN, REJECTED, 2.0, 0.5), theirs)


@pytest.mark.parametrize("kind,smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("hinge", 0.0), ("ipo", 0.0)])
def test_dpo_losses_match_trl_cpo_with_a_zero_reference(trl_experimental, kind, smoothing):
    # CPO's loss is DPO's with the reference log-ratio left out (and IPO on its given log-probs).
    cpo, _ = trl_experimental
    fake = trl_self(loss_type=kind, beta=0.3)
    fake.label_smoothing = smoothing
    theirs, _, _ = cpo.cpo_loss(fake, CHOSEN, REJECTED)
    zero, one = torch.zeros(4), torch.ones(4)
    ours = dpo_loss(CHOSEN, REJECTED, zero, zero, 0.3, kind, smoothing, chosen_tokens=one, rejected_tokens=one)
    torch.testing.assert_close(ours, theirs)


def test_orpo_matches_trl(trl_experimental):
    _, orpo = trl_experimental
    ratio_term, _, _, _, _ = orpo.odds_ratio_loss(trl_self(beta=0.1), CHOSEN, REJECTED)
    torch.testing.assert_close(orpo_loss(CHOSEN, REJECTED, 0.1), -CHOSEN - ratio_term)  # TRL: nll - losses
