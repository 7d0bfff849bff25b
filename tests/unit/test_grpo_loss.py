"""grpo_loss against a plain-python reference: values, gradients, micro-batch accumulation, stats."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.grpo import grpo_loss, merge_stats


def reference_objective(logp, old, ref, adv, mask, eps, beta):
    """The objective written as loops over sequences and tokens, one scalar op at a time (autograd-able)."""
    total = 0.0
    for i in range(len(logp)):
        terms = []
        for t in range(len(logp[i])):
            if not mask[i][t]:
                continue
            ratio = torch.exp(logp[i][t] - old[i][t])
            low, high = 1 - eps, 1 + eps
            clipped_ratio = torch.clamp(ratio, low, high)
            surrogate = torch.minimum(ratio * adv[i], clipped_ratio * adv[i])
            d = ref[i][t] - logp[i][t]
            kl = torch.exp(d) - d - 1
            terms.append(surrogate - beta * kl)
        if terms:
            total = total + sum(terms) / len(terms)
    return total / len(logp)


def random_case(b, t, seed, spread=0.5):
    """Random log-probs whose ratios land on both sides of the clip range, ragged masks, mixed-sign advantages."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 3
    logp = old + (torch.rand(b, t, generator=gen, dtype=torch.float64) - 0.5) * 2 * spread
    ref = old + (torch.rand(b, t, generator=gen, dtype=torch.float64) - 0.5)
    adv = torch.randn(b, generator=gen, dtype=torch.float64)
    adv[0] = abs(adv[0]) + 0.1
    if b > 1:
        adv[1] = -abs(adv[1]) - 0.1
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    lengths[-1] = t
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(torch.float64)
    # Padded positions hold garbage the loss must ignore (including non-finite values).
    logp = torch.where(mask.bool(), logp, torch.full_like(logp, 50.0))
    old = torch.where(mask.bool(), old, torch.full_like(old, -math.inf))
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("b,t,seed", [(1, 1, 0), (2, 5, 1), (4, 7, 2), (8, 16, 3), (3, 33, 4)])
@pytest.mark.parametrize("eps,beta", [(0.2, 0.04), (0.1, 0.5), (0.3, 0.0)])
def test_matches_reference_value_and_gradient(b, t, seed, eps, beta):
    logp, old, ref, adv, mask = random_case(b, t, seed)
    logp_a = logp.clone().requires_grad_(True)
    loss, _ = grpo_loss(logp_a, old, ref, adv, mask, clip_eps=eps, beta=beta)
    (grad_a,) = torch.autograd.grad(loss, logp_a)

    logp_b = logp.clone().requires_grad_(True)
    rows = [[logp_b[i, j] for j in range(t)] for i in range(b)]
    expected = -reference_objective(rows, old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), eps, beta)
    (grad_b,) = torch.autograd.grad(expected, logp_b)

    assert loss.item() == pytest.approx(expected.item(), rel=1e-12, abs=1e-12)
    assert torch.isfinite(grad_a).all()
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-10, atol=1e-12)
    assert (grad_a[~mask.bool()] == 0).all()


def test_cases_exercise_both_clip_sides():
    """The random cases above really contain clipped and unclipped tokens for both advantage signs."""
    logp, old, ref, adv, mask = random_case(8, 16, 3)
    ratio = torch.exp(logp - old)[mask.bool()]
    assert (ratio > 1.2).any() and (ratio < 0.8).any() and ((ratio > 0.8) & (ratio < 1.2)).any()
    _, stats = grpo_loss(logp, old, ref, adv, mask)
    assert 0 < stats["clip_frac"] < 1


def test_hand_computed_single_token():
    # One token, ratio e^0.5 = 1.6487 > 1.2, A = +2: clipped term 1.2 * 2 = 2.4 binds (min of 3.297 and 2.4).
    # k3 with d = ref - logp = -1: e^-1 + 1 - 1 = 0.36788. Objective 2.4 - 0.1 * 0.36788 = 2.363212.
    logp = torch.tensor([[0.0]], requires_grad=True)
    old = torch.tensor([[-0.5]])
    ref = torch.tensor([[-1.0]])
    loss, stats = grpo_loss(logp, old, ref, torch.tensor([2.0]), torch.ones(1, 1), clip_eps=0.2, beta=0.1)
    assert loss.item() == pytest.approx(-(2.4 - 0.1 * math.exp(-1)), abs=1e-6)
    assert stats["clip_frac"] == 1.0
    assert stats["kl"] == pytest.approx(math.exp(-1), abs=1e-6)
    assert stats["ratio_mean"] == pytest.approx(math.exp(0.5), abs=1e-6)
    # Clipped: only the KL term has a gradient: d/dlogp[-(-beta*(e^d - d - 1))] = beta * (-(e^d) + 1) = 0.1*(1-e^-1).
    (g,) = torch.autograd.grad(loss, logp)
    assert g.item() == pytest.approx(0.1 * (1 - math.exp(-1)), abs=1e-6)


def test_on_policy_gradient_is_minus_advantage_over_length():
    """With old = logp and ref = logp, the gradient per token is -A_i / (|o_i| * B): the plain GRPO signal."""
    logp = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    adv = torch.tensor([1.0, -0.5])
    loss, stats = grpo_loss(logp, logp.detach(), logp.detach(), adv, mask)
    (g,) = torch.autograd.grad(loss, logp)
    expected = torch.tensor([[-1 / 4, -1 / 4, 0, 0], [0.5 / 8] * 4])
    torch.testing.assert_close(g, expected)
    assert stats["clip_frac"] == 0 and stats["kl"] == 0
    assert stats["ratio_min"] == stats["ratio_max"] == 1.0
    assert stats["tokens"] == 6 and stats["sequences"] == 2


@pytest.mark.parametrize("splits", [[1, 1, 1, 1, 1, 1], [2, 4], [3, 1, 2], [5, 1]])
def test_micro_batch_accumulation_equals_full_batch(splits):
    logp, old, ref, adv, mask = random_case(6, 9, 7)
    full = logp.clone().requires_grad_(True)
    loss, stats = grpo_loss(full, old, ref, adv, mask)
    loss.backward()

    acc = logp.clone().requires_grad_(True)
    total, parts, start = 0.0, [], 0
    for size in splits:
        sl = slice(start, start + size)
        part_loss, part_stats = grpo_loss(acc[sl], old[sl], ref[sl], adv[sl], mask[sl], num_sequences=6)
        part_loss.backward()  # gradients accumulate in acc.grad
        total += part_loss.item()
        parts.append(part_stats)
        start += size
    assert total == pytest.approx(loss.item(), rel=1e-12)
    torch.testing.assert_close(acc.grad, full.grad, rtol=1e-12, atol=1e-14)
    merged = merge_stats(parts)
    for key, value in stats.items():
        assert merged[key] == pytest.approx(value, rel=1e-12), key


def test_empty_sequence_contributes_nothing():
    logp, old, ref, adv, mask = random_case(3, 5, 11)
    mask[1] = 0
    loss, stats = grpo_loss(logp, old, ref, adv, mask)
    rows = [[logp[i, j] for j in range(5)] for i in range(3)]
    expected = -reference_objective(rows, old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.04)
    assert loss.item() == pytest.approx(float(expected), rel=1e-12)
    assert stats["sequences"] == 2


def test_all_masked_batch_has_zero_loss_and_gradient():
    logp = torch.randn(2, 3, requires_grad=True)
    loss, stats = grpo_loss(logp, torch.randn(2, 3), torch.randn(2, 3), torch.ones(2), torch.zeros(2, 3), num_sequences=8)
    loss.backward()
    assert loss.item() == 0 and (logp.grad == 0).all()
    assert stats["tokens"] == 0 and stats["sequences"] == 0
    assert merge_stats([stats, {**stats, "tokens": 1.0, "sequences": 1.0, "ratio_min": 0.9, "ratio_max": 1.1,
                                "ratio_mean": 1.0, "kl": 0.5, "clip_frac": 0.0}])["ratio_min"] == 0.9


def test_beta_zero_allows_no_reference_and_bad_shapes_are_named():
    logp, old, _, adv, mask = random_case(2, 3, 5)
    loss0, _ = grpo_loss(logp, old, None, adv, mask, beta=0.0)
    loss1, _ = grpo_loss(logp, old, torch.zeros_like(logp), adv, mask, beta=0.0)
    assert loss0.item() == pytest.approx(loss1.item())
    with pytest.raises(ValueError, match="ref_logprobs is required"):
        grpo_loss(logp, old, None, adv, mask, beta=0.04)
    with pytest.raises(ValueError, match="mask has shape"):
        grpo_loss(logp, old, None, adv, mask[:, :2], beta=0.0)
    with pytest.raises(ValueError, match="advantages must be"):
        grpo_loss(logp, old, None, adv[:1], mask, beta=0.0)
