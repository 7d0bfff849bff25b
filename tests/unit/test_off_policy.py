"""Off-policy correction (trainer/off_policy.py, trainer/grpo.py): every importance weight and its truncation, the
corrected loss and its gradient, ESS, KL and the other mismatch metrics against values written out by hand from the
formulas; the metrics merged over micro-batches, ranks and updates equal the whole batch's; the config's checks."""

from __future__ import annotations

import math

import pytest
import torch

from audio_thinker.core.presets import ConfigError, load_config
from trainer.update_metrics import merge_rank_metrics, merge_update_metrics
from trainer.grpo import grpo_loss, merge_stats
from trainer.off_policy import importance_weights, merge_mismatch, mismatch_metrics, mismatch_sums

E = math.exp
LN2 = math.log(2)

# Two sequences: l = prox - behav = [0.2, 1.0, -0.1] and [-0.4, -0.3, padding]; padding holds garbage (inf).
PROX = torch.tensor([[-1.0, -0.5, -2.0], [-0.7, -0.1, math.inf]], dtype=torch.float64)
BEHAV = torch.tensor([[-1.2, -1.5, -1.9], [-0.3, 0.2, -math.inf]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)


def test_token_tis_truncates_each_token_at_the_cap():
    w = importance_weights(PROX, BEHAV, MASK, "token_tis", 2.0)
    # e^1.0 = 2.718 > 2 is truncated to 2; the others are below the cap; padding 0.
    expected = [[E(0.2), 2.0, E(-0.1)], [E(-0.4), E(-0.3), 0.0]]
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    # A cap above every weight leaves them all untruncated.
    w = importance_weights(PROX, BEHAV, MASK, "token_tis", 3.0)
    torch.testing.assert_close(w[0], torch.tensor([E(0.2), E(1.0), E(-0.1)], dtype=torch.float64), rtol=1e-12, atol=0)


def test_seq_tis_gives_every_token_its_sequence_weight():
    # Sequence sums: 0.2 + 1.0 - 0.1 = 1.1 (e^1.1 = 3.004 > 2: truncated) and -0.4 - 0.3 = -0.7.
    w = importance_weights(PROX, BEHAV, MASK, "seq_tis", 2.0)
    expected = [[2.0, 2.0, 2.0], [E(-0.7), E(-0.7), 0.0]]
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    w = importance_weights(PROX, BEHAV, MASK, "seq_tis", 5.0)
    torch.testing.assert_close(w[0], torch.full((3,), E(1.1), dtype=torch.float64), rtol=1e-12, atol=0)


def test_seq_tis_never_overflows():
    """1000 tokens of l = 1: exp(1000) is inf in float64, the truncated weight is the cap exactly."""
    prox, behav, mask = torch.zeros(1, 1000), -torch.ones(1, 1000), torch.ones(1, 1000)
    w = importance_weights(prox, behav, mask, "seq_tis", 2.0)
    assert torch.equal(w, torch.full((1, 1000), 2.0))


def test_decoupled_drops_the_tokens_above_the_cap():
    # AReaL's behav_imp_weight_cap: e^1.0 > 2 gets weight 0, the others keep their untruncated weight.
    w = importance_weights(PROX, BEHAV, MASK, "decoupled", 2.0)
    expected = [[E(0.2), 0.0, E(-0.1)], [E(-0.4), E(-0.3), 0.0]]
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_weights_are_constants():
    prox = PROX.clone().requires_grad_(True)
    assert not importance_weights(prox, BEHAV, MASK, "token_tis", 2.0).requires_grad
    with pytest.raises(ValueError, match="one of token_tis, seq_tis, decoupled, got 'none'"):
        importance_weights(PROX, BEHAV, MASK, "none", 2.0)
    with pytest.raises(ValueError, match="finite number > 1, got 1.0"):
        importance_weights(PROX, BEHAV, MASK, "token_tis", 1.0)


def test_mismatch_metrics_by_hand():
    tokens = [0.2, 1.0, -0.1, -0.4, -0.3]
    seqs = [1.1, -0.7]
    m = mismatch_metrics(mismatch_sums(PROX, BEHAV, MASK, "token_tis", 2.0))
    assert m["mismatch/is_mean"] == pytest.approx(sum(E(x) for x in tokens) / 5, rel=1e-12)
    assert m["mismatch/is_clip_frac"] == pytest.approx(1 / 5)  # only l = 1.0 > ln 2
    assert m["mismatch/kl"] == pytest.approx(sum(E(x) - x - 1 for x in tokens) / 5, rel=1e-12)
    w0, w1 = (E(x) for x in seqs)
    assert m["mismatch/ess"] == pytest.approx((w0 + w1) ** 2 / (2 * (w0**2 + w1**2)), rel=1e-12)
    assert m["actor/logprob_mismatch_mean"] == pytest.approx(2.0 / 5, rel=1e-12)  # (0.2 + 1 + 0.1 + 0.4 + 0.3) / 5
    assert m["actor/logprob_mismatch_max"] == pytest.approx(1.0, rel=1e-12)
    # seq_tis counts sequences: e^1.1 > 2, e^-0.7 < 2; everything else is the same whatever the mode.
    s = mismatch_metrics(mismatch_sums(PROX, BEHAV, MASK, "seq_tis", 2.0))
    assert s["mismatch/is_clip_frac"] == 0.5
    assert {k: v for k, v in s.items() if k != "mismatch/is_clip_frac"} == {
        k: v for k, v in m.items() if k != "mismatch/is_clip_frac"
    }
    assert mismatch_metrics(mismatch_sums(PROX, BEHAV, MASK, "none", 2.0)) == m  # none reports the same


def test_ess_extremes_in_log_space():
    """Equal sequence weights: ESS 1 (on-policy, and even at e^800 each, past float64's range); one weight
    dominating: 1/N."""
    assert mismatch_metrics(mismatch_sums(torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3, 2), "none", 2.0)) == {
        "mismatch/is_mean": 1.0,
        "mismatch/is_clip_frac": 0.0,
        "mismatch/ess": 1.0,
        "mismatch/kl": 0.0,
        "actor/logprob_mismatch_mean": 0.0,
        "actor/logprob_mismatch_max": 0.0,
    }
    prox = torch.tensor([[400.0, 400.0], [400.0, 400.0]], dtype=torch.float64)  # s_i = 800 for both
    assert mismatch_metrics(mismatch_sums(prox, torch.zeros(2, 2), torch.ones(2, 2), "none", 2.0))["mismatch/ess"] == (
        pytest.approx(1.0, rel=1e-12)
    )
    prox = torch.tensor([[400.0, 400.0], [0.0, 0.0]], dtype=torch.float64)  # w = (e^800, 1): (w)^2 / (2 w^2) = 1/2
    ess = mismatch_metrics(mismatch_sums(prox, torch.zeros(2, 2), torch.ones(2, 2), "none", 2.0))["mismatch/ess"]
    assert ess == pytest.approx(0.5, rel=1e-12)
    assert mismatch_metrics(mismatch_sums(PROX, BEHAV, torch.zeros(2, 3), "none", 2.0)) == {}  # no tokens


def random_batch(b: int, t: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    prox = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 3
    behav = prox - (torch.rand(b, t, generator=gen, dtype=torch.float64) - 0.4) * 2  # weights on both sides of 2
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(torch.float64)
    mask[1] = 0  # a sequence without tokens
    logp = prox + (torch.rand(b, t, generator=gen, dtype=torch.float64) - 0.5) * 0.6
    adv = torch.randn(b, generator=gen, dtype=torch.float64)
    return logp, prox, behav, adv, mask


@pytest.mark.parametrize("mode", ["none", "token_tis", "seq_tis", "decoupled"])
def test_metrics_merged_over_unequal_micro_batches_ranks_and_updates_equal_the_whole_batch(mode):
    _, prox, behav, _, mask = random_batch(7, 6, 3)
    whole = mismatch_metrics(mismatch_sums(prox, behav, mask, mode, 2.0))
    assert 0 < whole["mismatch/is_clip_frac"] < 1 and 0 < whole["mismatch/ess"] < 1
    parts = [mismatch_sums(prox[s], behav[s], mask[s], mode, 2.0) for s in (slice(0, 2), slice(2, 7))]
    merged = mismatch_metrics(merge_mismatch(parts))
    assert merged.keys() == whole.keys()
    for key, value in whole.items():
        assert merged[key] == pytest.approx(value, rel=1e-12), key
    # The split is one where a mean of the parts' means would be wrong.
    means = [mismatch_metrics(p)["mismatch/is_mean"] for p in parts]
    assert abs(sum(means) / 2 - whole["mismatch/is_mean"]) > 1e-3

    # The same through the engine's merges: two ranks (micro-batches of 2 + 1 and 4 sequences), then two epochs
    # of two mini-batches of unequal size (sequences 0-2 and 3-6).
    def rank(rows):
        return {
            "loss": 0.0,
            "grad_norm": 1.0,
            "lr": 1e-3,
            "step": 1,
            "stats": merge_stats([_stats(mask[rows])]),
            "mismatch": merge_mismatch(
                [mismatch_sums(prox[r], behav[r], mask[r], mode, 2.0) for r in _chunks(rows, 2)]
            ),
        }

    one_update = merge_update_metrics([merge_rank_metrics([rank([0, 1, 2]), rank([3, 4, 5, 6])])])
    minis = [merge_rank_metrics([rank([0, 1]), rank([2])]), merge_rank_metrics([rank([3, 4]), rank([5, 6])])]
    several = merge_update_metrics(minis * 2, epochs=2)
    for metrics in (one_update, several):
        for key, value in whole.items():
            assert metrics[key] == pytest.approx(value, rel=1e-12), key
        assert "mismatch" not in metrics


def _stats(mask):
    n = float(mask.sum())
    return {
        "clip_frac": 0.0,
        "kl": 0.0,
        "ratio_mean": 1.0,
        "ratio_min": 1.0,
        "ratio_max": 1.0,
        "tokens": n,
        "sequences": float((mask.sum(1) > 0).sum()),
    }


def _chunks(rows, size):
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def test_no_engine_logprobs_no_mismatch_metrics():
    part = {"loss": 0.5, "grad_norm": 1.0, "lr": 1e-3, "step": 1, "stats": _stats(MASK), "mismatch": None}
    metrics = merge_update_metrics([merge_rank_metrics([part])])
    assert not any(k.startswith("mismatch") or "logprob_mismatch" in k for k in metrics)


# ------------------------------------------------------------------------------------------------ the corrected loss

# One sequence of three tokens, logp = 0, A = +1, eps 0.2, loss_type grpo (mean over the 3 tokens):
#   old (proximal)  [-0.1, 0.0, -0.5]   ratio r = [e^0.1, 1, e^0.5]; e^0.5 = 1.65 > 1.2: the clip binds (no gradient)
#   behav           [-0.1 - ln 3, -0.5, -0.7]   l = old - behav = [ln 3, 0.5, 0.2]
# Each token's clipped term c = [e^0.1, 1, 1.2] is multiplied by its weight w: loss = -sum(w * c) / 3, and
# d loss / d logp_t = -w_t * r_t / 3 on the unclipped tokens, 0 on the clipped one.
OLD = [[-0.1, 0.0, -0.5]]
BEH = [[-0.1 - math.log(3), -0.5, -0.7]]
W_SEQ = 3 * E(0.7)  # exp(ln 3 + 0.5 + 0.2) = 6.04
BY_HAND = {
    ("token_tis", 2.0): [2.0, E(0.5), E(0.2)],  # 3 truncated to 2
    ("token_tis", 4.0): [3.0, E(0.5), E(0.2)],
    ("seq_tis", 2.0): [2.0, 2.0, 2.0],  # 6.04 truncated to 2
    ("seq_tis", 10.0): [W_SEQ, W_SEQ, W_SEQ],
    ("decoupled", 2.0): [0.0, E(0.5), E(0.2)],  # 3 > 2: dropped, still counted in the mean's 3 tokens
    ("decoupled", 4.0): [3.0, E(0.5), E(0.2)],
}


def corrected(mode, cap, beta=0.0, ref=None):
    logp = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    loss, stats = grpo_loss(
        logp,
        torch.tensor(OLD, dtype=torch.float64),
        ref,
        torch.tensor([1.0], dtype=torch.float64),
        torch.ones(1, 3),
        beta=beta,
        behav_logprobs=torch.tensor(BEH, dtype=torch.float64),
        is_correction=mode,
        is_cap=cap,
    )
    (g,) = torch.autograd.grad(loss, logp)
    return loss.item(), g[0].tolist(), stats


@pytest.mark.parametrize("mode,cap", sorted(BY_HAND))
def test_corrected_loss_and_gradient_by_hand(mode, cap):
    w = BY_HAND[(mode, cap)]
    clipped_terms = [E(0.1), 1.0, 1.2]
    loss, g, stats = corrected(mode, cap)
    assert loss == pytest.approx(-sum(wt * c for wt, c in zip(w, clipped_terms)) / 3, rel=1e-12)
    assert g == pytest.approx([-w[0] * E(0.1) / 3, -w[1] * 1.0 / 3, 0.0], rel=1e-12, abs=1e-15)
    assert stats["clip_frac"] == pytest.approx(1 / 3)  # the PPO clip statistics are not the weights'


def test_the_kl_penalty_is_not_reweighted():
    # ref = -1 everywhere: d = ref - logp = -1, k3 = e^-1 per token, d k3 / d logp = 1 - e^-1. With beta 0.1 the
    # loss gains 0.1 * e^-1 (mean of three equal terms) and each token's gradient 0.1 * (1 - e^-1) / 3.
    ref = torch.full((1, 3), -1.0, dtype=torch.float64)
    loss0, g0, _ = corrected("token_tis", 2.0)
    loss, g, _ = corrected("token_tis", 2.0, beta=0.1, ref=ref)
    assert loss == pytest.approx(loss0 + 0.1 * E(-1), rel=1e-12)
    assert g == pytest.approx([x + 0.1 * (1 - E(-1)) / 3 for x in g0], rel=1e-12)


def test_correction_needs_the_engine_logprobs():
    logp, old = torch.zeros(1, 3), torch.zeros(1, 3)
    with pytest.raises(ValueError, match="is_correction=seq_tis needs behav_logprobs"):
        grpo_loss(logp, old, None, torch.ones(1), torch.ones(1, 3), beta=0.0, is_correction="seq_tis")
    with pytest.raises(ValueError, match="is_correction must be one of none, token_tis, seq_tis, decoupled"):
        grpo_loss(logp, old, None, torch.ones(1), torch.ones(1, 3), beta=0.0, is_correction="tis")
    with pytest.raises(ValueError, match=r"behav_logprobs has shape \(1, 2\)"):
        grpo_loss(logp, old, None, torch.ones(1), torch.ones(1, 3), beta=0.0, behav_logprobs=torch.zeros(1, 2))


# ------------------------------------------------------------------------------------------------ config


def test_config_defaults_and_checks():
    cfg = load_config()
    assert (cfg.trainer.is_correction, cfg.trainer.is_cap) == ("none", 2.0)
    assert load_config(None, ["trainer.is_correction=decoupled", "trainer.is_cap=5"]).trainer.is_cap == 5.0
    for bad in ("trainer.is_cap=1", "trainer.is_cap=0.5", "trainer.is_cap=.inf", "trainer.is_correction=tis"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])
    with pytest.raises(
        ConfigError,
        match=r"trainer.is_correction=token_tis needs the behaviour policy's log-probs.*"
        r"rollout.temperature=1 \(got 0.7\)",
    ):
        load_config(None, ["trainer.is_correction=token_tis", "rollout.temperature=0.7"])
    assert load_config(None, ["rollout.temperature=0.7"]).trainer.is_correction == "none"  # the metric only
