"""grpo_loss against a plain-python reference: values, gradients, micro-batch accumulation, stats; then its variants
(trainer/grpo.py): loss types, asymmetric clipping, GSPO's sequence ratio, each by hand (value and gradient), against
a loop reference on random batches, and accumulated over micro-batches with the step's denominator."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.grpo import grpo_loss, loss_denominator, merge_stats


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
    loss, _ = grpo_loss(logp_a, old, ref, adv, mask, clip_eps_low=eps, clip_eps_high=eps, beta=beta)
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
    loss, stats = grpo_loss(logp, old, ref, torch.tensor([2.0]), torch.ones(1, 1), beta=0.1)
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
        part_loss, part_stats = grpo_loss(acc[sl], old[sl], ref[sl], adv[sl], mask[sl], denominator=6)
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
    loss, stats = grpo_loss(logp, torch.randn(2, 3), torch.randn(2, 3), torch.ones(2), torch.zeros(2, 3), denominator=8)
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


# ------------------------------------------------------------------------------------------------ variants

# Two on-policy sequences of 2 and 3 tokens, beta 0: every ratio is 1 and the loss is -sum_it w_it * A_i, so
# the gradient per token is -A_i * w_it with w the loss type's weight:
#   grpo    w = 1 / (|o_i| * N):  seq 1: 1/4,  seq 2: 1/6   loss -(1 * 1 + (-0.5) * 1) / 2          = -0.25
#   bnpo    w = 1 / tokens:       1/5 for both              loss -(2 * 1 + 3 * (-0.5)) / 5          = -0.1
#   dr_grpo w = 1 / (N * L), L=4: 1/8 for both              loss -(2 - 1.5) / 8                     = -0.0625
#   dapo    w = 1 / tokens:       1/5 (one batch: = bnpo)   loss                                    = -0.1
MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float64)
ADV = torch.tensor([1.0, -0.5], dtype=torch.float64)
BY_HAND = {
    "grpo": (-0.25, [-1 / 4, -1 / 4, 0, 0], [0.5 / 6] * 3 + [0]),
    "bnpo": (-0.1, [-1 / 5, -1 / 5, 0, 0], [0.5 / 5] * 3 + [0]),
    "dr_grpo": (-0.0625, [-1 / 8, -1 / 8, 0, 0], [0.5 / 8] * 3 + [0]),
    "dapo": (-0.1, [-1 / 5, -1 / 5, 0, 0], [0.5 / 5] * 3 + [0]),
}


@pytest.mark.parametrize("loss_type", sorted(BY_HAND))
def test_loss_types_on_policy_by_hand(loss_type):
    value, row0, row1 = BY_HAND[loss_type]
    logp = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True)
    loss, _ = grpo_loss(logp, logp.detach(), None, ADV, MASK, beta=0.0, loss_type=loss_type)
    (g,) = torch.autograd.grad(loss, logp)
    assert loss.item() == pytest.approx(value, abs=1e-12)
    torch.testing.assert_close(g, torch.tensor([row0, row1], dtype=torch.float64))


def one_token(delta: float, adv: float, **kw) -> tuple[float, float]:
    """(loss, d loss / d logp) of one token with logp - old = delta, beta 0."""
    logp = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    old = torch.full((1, 1), -delta, dtype=torch.float64)
    loss, _ = grpo_loss(logp, old, None, torch.tensor([adv], dtype=torch.float64), torch.ones(1, 1), beta=0.0, **kw)
    (g,) = torch.autograd.grad(loss, logp)
    return loss.item(), g.item()


def test_clip_higher_by_hand():
    r = math.exp(0.25)  # 1.2840, A = +1
    # eps_high 0.28: clipped at 1.28 < r, the clip binds: loss -1.28, no gradient.
    assert one_token(0.25, 1.0, clip_eps_high=0.28) == (pytest.approx(-1.28), 0.0)
    # eps_high 0.3: 1.3 > r, unclipped: loss -r, gradient d(-r)/dlogp = -r.
    assert one_token(0.25, 1.0, clip_eps_high=0.3) == (pytest.approx(-r), pytest.approx(-r))
    # The low side is untouched by eps_high: r = e^-0.3 = 0.7408, A = -1, eps_low 0.2 clips at 0.8:
    # min(-0.7408, -0.8) = -0.8 binds: loss 0.8, no gradient; eps_low 0.3 leaves it: loss r, gradient r.
    low = math.exp(-0.3)
    assert one_token(-0.3, -1.0, clip_eps_high=0.28) == (pytest.approx(0.8), 0.0)
    assert one_token(-0.3, -1.0, clip_eps_low=0.3) == (pytest.approx(low), pytest.approx(low))


def test_sequence_ratio_by_hand():
    # One sequence, logp - old = [0.1, 0.3], A = +1, beta 0.
    logp = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-0.1, -0.3]], dtype=torch.float64)
    adv, mask = torch.tensor([1.0], dtype=torch.float64), torch.ones(1, 2)

    def run(**kw):
        loss, stats = grpo_loss(logp, old, None, adv, mask, beta=0.0, **kw)
        (g,) = torch.autograd.grad(loss, logp)
        return loss.item(), g[0].tolist(), stats

    s = math.exp(0.2)  # GSPO: exp(mean log-ratio) = 1.2214 for both tokens
    # eps 0.2: s > 1.2 is clipped for the whole sequence: loss -1.2, no gradient.
    loss, g, stats = run(ratio_level="sequence")
    assert loss == pytest.approx(-1.2) and g == [0.0, 0.0] and stats["clip_frac"] == 1.0
    assert stats["ratio_mean"] == pytest.approx(s)
    # eps_high 0.25: unclipped: loss -s, d(-s)/dlogp_t = -s / |o| = -0.6107 for each token.
    loss, g, _ = run(ratio_level="sequence", clip_eps_high=0.25)
    assert loss == pytest.approx(-s) and g == pytest.approx([-s / 2, -s / 2])
    # Token level, eps_high 0.25: e^0.1 = 1.1052 free, e^0.3 = 1.3499 clipped at 1.25: loss -(1.1052 + 1.25) / 2.
    loss, g, _ = run(clip_eps_high=0.25)
    assert loss == pytest.approx(-(math.exp(0.1) + 1.25) / 2) and g == pytest.approx([-math.exp(0.1) / 2, 0.0])


def reference_loss(logp, old, ref, adv, mask, eps_low, eps_high, beta, loss_type, ratio_level, max_len, weights=None):
    """The loss as loops over sequences and tokens, one scalar op at a time (autograd-able); `weights` (floats per
    token) multiply the clipped terms."""
    terms, n_tokens = [], 0
    for i in range(len(logp)):
        idx = [t for t in range(len(logp[i])) if mask[i][t]]
        n_tokens += len(idx)
        seq_ratio = torch.exp(sum(logp[i][t] - old[i][t] for t in idx) / len(idx)) if idx else None
        row = []
        for t in idx:
            ratio = seq_ratio if ratio_level == "sequence" else torch.exp(logp[i][t] - old[i][t])
            surrogate = torch.minimum(ratio * adv[i], torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv[i])
            if weights is not None:
                surrogate = surrogate * weights[i][t]
            d = ref[i][t] - logp[i][t]
            row.append(surrogate - beta * (torch.exp(d) - d - 1))
        terms.append(row)
    n = len(logp)
    if loss_type == "grpo":
        return -sum(sum(row) / len(row) for row in terms if row) / n
    total = sum(x for row in terms for x in row)
    return -total / {"bnpo": n_tokens, "dapo": n_tokens, "dr_grpo": n * max_len}[loss_type]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("b,t,seed,eps_low,eps_high,beta", [(2, 5, 1, 0.2, 0.28, 0.04), (5, 9, 2, 0.1, 0.3, 0.3)])
def test_variants_match_reference_value_and_gradient(loss_type, ratio_level, b, t, seed, eps_low, eps_high, beta):
    logp, old, ref, adv, mask = random_case(b, t, seed, spread=0.3 if ratio_level == "sequence" else 0.5)
    logp_a = logp.clone().requires_grad_(True)
    loss, _ = grpo_loss(logp_a, old, ref, adv, mask, eps_low, eps_high, beta, loss_type, ratio_level)
    (grad_a,) = torch.autograd.grad(loss, logp_a)

    logp_b = logp.clone().requires_grad_(True)
    rows = [[logp_b[i, j] for j in range(t)] for i in range(b)]
    expected = reference_loss(rows, old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), eps_low, eps_high, beta,
                              loss_type, ratio_level, t)
    (grad_b,) = torch.autograd.grad(expected, logp_b)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-10, atol=1e-12)
    assert (grad_a[~mask.bool()] == 0).all()


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("splits", [[1, 1, 1, 1, 1, 1], [2, 4], [3, 1, 2]])
def test_micro_batches_with_the_step_denominator_equal_the_full_batch(loss_type, splits):
    logp, old, ref, adv, mask = random_case(6, 9, 7)
    full = logp.clone().requires_grad_(True)
    loss, _ = grpo_loss(full, old, ref, adv, mask, loss_type=loss_type)  # the batch is the step; dr_grpo: L = 9
    loss.backward()
    denominator = loss_denominator(loss_type, 6, int(mask.sum()), len(splits), max_completion_length=9)
    acc = logp.clone().requires_grad_(True)
    total, start = 0.0, 0
    for size in splits:
        sl = slice(start, start + size)
        part, _ = grpo_loss(acc[sl], old[sl], ref[sl], adv[sl], mask[sl], loss_type=loss_type, denominator=denominator)
        part.backward()
        total += part.item()
        start += size
    assert total == pytest.approx(loss.item(), rel=1e-12)
    torch.testing.assert_close(acc.grad, full.grad, rtol=1e-12, atol=1e-14)


def test_bnpo_is_the_mean_of_micro_batch_token_means():
    logp, old, ref, adv, mask = random_case(6, 9, 7)
    splits = [slice(0, 2), slice(2, 6)]
    own = [grpo_loss(logp[s], old[s], ref[s], adv[s], mask[s], loss_type="bnpo")[0].item() for s in splits]
    parts = [grpo_loss(logp[s], old[s], ref[s], adv[s], mask[s], loss_type="bnpo", denominator=2)[0].item()
             for s in splits]
    assert sum(parts) == pytest.approx(sum(own) / 2, rel=1e-12)
    # One micro-batch of everything: bnpo = dapo.
    bnpo = grpo_loss(logp, old, ref, adv, mask, loss_type="bnpo")[0].item()
    assert bnpo == pytest.approx(grpo_loss(logp, old, ref, adv, mask, loss_type="dapo")[0].item(), rel=1e-12)


def test_loss_denominator_and_errors():
    assert loss_denominator("grpo", 16, 900, 4) == 16
    assert loss_denominator("bnpo", 16, 900, 4) == 4
    assert loss_denominator("dr_grpo", 16, 900, 4, max_completion_length=1024) == 16 * 1024
    assert loss_denominator("dapo", 16, 900, 4) == 900
    assert loss_denominator("dapo", 16, 0, 4) == 1  # an empty step divides by 1, not 0
    with pytest.raises(ValueError, match="dr_grpo needs max_completion_length"):
        loss_denominator("dr_grpo", 16, 900)
    with pytest.raises(ValueError, match="loss_type must be one of grpo, bnpo, dr_grpo, dapo, got 'ppo'"):
        loss_denominator("ppo", 1, 1)
    logp, old, _, adv, mask = random_case(2, 3, 5)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        grpo_loss(logp, old, None, adv, mask, beta=0.0, loss_type="ppo")
    with pytest.raises(ValueError, match="ratio_level must be one of token, sequence, got 'group'"):
        grpo_loss(logp, old, None, adv, mask, beta=0.0, ratio_level="group")


# ------------------------------------------------------------------------------------------------ off-policy correction


def reference_weights(old, behav, mask, mode, cap):
    """The importance weights of `mode` in plain python floats, from the formulas (docs/trainer.md)."""
    out = []
    for i in range(len(old)):
        idx = [t for t in range(len(old[i])) if mask[i][t]]
        seq = math.exp(sum(old[i][t] - behav[i][t] for t in idx))
        row = []
        for t in range(len(old[i])):
            w = math.exp(old[i][t] - behav[i][t]) if mask[i][t] else 0.0
            row.append({"token_tis": min(w, cap), "seq_tis": min(seq, cap), "decoupled": w if w <= cap else 0.0}[mode])
        out.append(row)
    return out


def behaviour(old, mask, seed):
    """Engine log-probs around `old`: weights exp(old - behav) on both sides of a cap of 1.5; garbage on padding."""
    gen = torch.Generator().manual_seed(seed)
    behav = old - (torch.rand(old.shape, generator=gen, dtype=torch.float64) - 0.4) * 1.5
    return torch.where(mask.bool(), behav, torch.full_like(old, math.inf))


@pytest.mark.parametrize("mode", ["token_tis", "seq_tis", "decoupled"])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_corrections_match_reference_value_and_gradient(mode, loss_type, ratio_level):
    logp, old, ref, adv, mask = random_case(5, 7, 8, spread=0.3)
    behav = behaviour(old, mask, 9)
    weights = reference_weights(old.tolist(), behav.tolist(), mask.tolist(), mode, 1.5)
    flat = [w for row, m in zip(weights, mask.tolist()) for w, k in zip(row, m) if k]
    assert any(w == 1.5 or w == 0.0 for w in flat) and any(0 < w < 1.5 for w in flat)  # the cap binds somewhere
    logp_a = logp.clone().requires_grad_(True)
    args = (old, ref, adv, mask, 0.2, 0.28, 0.04, loss_type, ratio_level)
    loss, _ = grpo_loss(logp_a, *args, behav_logprobs=behav, is_correction=mode, is_cap=1.5)
    (grad_a,) = torch.autograd.grad(loss, logp_a)
    logp_b = logp.clone().requires_grad_(True)
    rows = [[logp_b[i, j] for j in range(7)] for i in range(5)]
    plain = (old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.28, 0.04, loss_type, ratio_level, 7)
    expected = reference_loss(rows, *plain, weights)
    (grad_b,) = torch.autograd.grad(expected, logp_b)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-10, atol=1e-12)
    assert (grad_a[~mask.bool()] == 0).all()


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_no_correction_is_todays_loss_bit_for_bit(loss_type, ratio_level):
    """is_correction=none with engine log-probs given is the uncorrected loss and gradient exactly; so is token_tis
    on-policy (engine = old: every weight exp(0) = 1)."""
    logp, old, ref, adv, mask = random_case(4, 6, 12)
    results = []
    for kw in ({}, {"behav_logprobs": behaviour(old, mask, 13)}, {"behav_logprobs": old, "is_correction": "token_tis"}):
        x = logp.clone().requires_grad_(True)
        loss, stats = grpo_loss(x, old, ref, adv, mask, loss_type=loss_type, ratio_level=ratio_level, **kw)
        (g,) = torch.autograd.grad(loss, x)
        results.append((loss, g, stats))
    for loss, g, stats in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(g, results[0][1]) and stats == results[0][2]
