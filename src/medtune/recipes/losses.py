"""Preference losses as pure functions of per-sequence log-probs and scores (torchtune style).

Each function returns one loss per pair (per example for KTO); the recipes take the mean, so a
batch of 4 and 4 accumulated batches of 1 give the same gradient. Example::

    import torch
    from medtune.recipes.losses import dpo_loss
    dpo_loss(torch.tensor([-5.0]), torch.tensor([-7.0]), torch.tensor([-6.0]), torch.tensor([-6.0]), beta=0.1)
    # tensor([0.5981]) = -log sigmoid(0.1 * ((-5 + 6) - (-7 + 6)))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -100  # label of a token that takes no loss (as medtune.data.tokenize.IGNORE)
DPO_LOSSES = ("sigmoid", "ipo", "hinge")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(summed log-probs, token count)`` of each row's labelled tokens.

    ``logits[:, t]`` predicts ``labels[:, t + 1]``; labels are ``-100`` where no loss is taken.
    Computed as gathered logit minus logsumexp, in fp32, without a full log-softmax tensor.
    """
    logits = logits[:, :-1].float()
    labels = labels[:, 1:]
    mask = labels != IGNORE
    picked = logits.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    token_logps = (picked - logits.logsumexp(-1)) * mask
    return token_logps.sum(-1), mask.sum(-1)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float, kind: str = "sigmoid",
             label_smoothing: float = 0.0, chosen_tokens=None, rejected_tokens=None) -> torch.Tensor:
    """Return the DPO loss of each pair from summed answer log-probs of policy and reference.

    ``sigmoid``: -log σ(βΔ), with ``label_smoothing`` ε the conservative form
    -(1-ε) log σ(βΔ) - ε log σ(-βΔ); ``hinge``: relu(1 - βΔ); ``ipo``: (Δ̄ - 1/(2β))² where Δ̄
    uses per-token log-ratios (needs ``chosen_tokens`` / ``rejected_tokens``; IPO's authors and TRL
    normalise by length). Δ = (π_c - ref_c) - (π_r - ref_r).
    """
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    if kind == "sigmoid":
        margin = beta * (chosen - rejected)
        return -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    if kind == "hinge":
        return torch.relu(1 - beta * (chosen - rejected))
    if kind == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss needs chosen_tokens and rejected_tokens (per-token log-ratios)")
        delta = chosen / chosen_tokens.clamp(min=1) - rejected / rejected_tokens.clamp(min=1)
        return (delta - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown DPO loss {kind!r} (choose from {', '.join(DPO_LOSSES)})")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """Return log(1 - exp(x)) for x < 0, stable on both sides of -ln 2."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def log_odds_ratio(chosen_avg_logps, rejected_avg_logps) -> torch.Tensor:
    """Return log(odds(chosen) / odds(rejected)) with odds(y) = p / (1 - p), p the mean-token prob."""
    return (chosen_avg_logps - rejected_avg_logps) - (log1mexp(chosen_avg_logps) - log1mexp(rejected_avg_logps))


def orpo_loss(chosen_avg_logps, rejected_avg_logps, lam: float) -> torch.Tensor:
    """Return ORPO's loss per pair: NLL of the chosen answer - λ log σ(log odds ratio).

    Inputs are length-averaged answer log-probs, so the NLL term is the chosen answer's mean token
    NLL (the paper's L_SFT).
    """
    return -chosen_avg_logps - lam * F.logsigmoid(log_odds_ratio(chosen_avg_logps, rejected_avg_logps))


def simpo_loss(chosen_avg_logps, rejected_avg_logps, beta: float, gamma: float) -> torch.Tensor:
    """Return SimPO's loss per pair: -log σ(β (avg_c - avg_r) - γ); no reference model."""
    return -F.logsigmoid(beta * (chosen_avg_logps - rejected_avg_logps) - gamma)


def kto_kl(policy_kl_logps, ref_kl_logps) -> torch.Tensor:
    """Return KTO's reference point: mean policy/reference log-ratio of mismatched pairs, ≥ 0, detached."""
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(policy_logps, ref_logps, desirable, kl, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> torch.Tensor:
    """Return KTO's loss per example: w_d (1 - σ(β(r - kl))) if desirable, else w_u (1 - σ(β(kl - r))).

    r = policy - reference summed answer log-prob; ``desirable`` is a bool tensor.
    """
    ratio = policy_logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio)))
    return torch.where(desirable.bool(), good, bad)


def pairwise_reward_loss(chosen_scores, rejected_scores) -> torch.Tensor:
    """Return the Bradley-Terry reward-model loss per pair: -log σ(r_c - r_r)."""
    return -F.logsigmoid(chosen_scores - rejected_scores)
