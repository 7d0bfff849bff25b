"""Completion log-probs of every policy family: padded micro-batches equal one unpadded forward per sequence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audio_thinker.core.encoding import PromptEncoder
from audio_thinker.core.chat import render_chat
from audio_thinker.core.models import load_feature_extractor, load_policy, load_tokenizer
from trainer.grpo import grpo_loss
from trainer.logprobs import CompletionLogprobs, PolicyBatch, _lm_head_at, collate, compute_logprobs, pad_ragged

FAMILIES = ["qwen2_audio", "qwen2_5_omni", "qwen3_omni"]


def make_batch(path, family: str) -> PolicyBatch:
    """Two clips of different lengths and prompt texts; four completions of ragged lengths."""
    enc = PromptEncoder(load_tokenizer(path), load_feature_extractor(path))
    rng = np.random.default_rng(0)
    prompts = [
        enc.encode(render_chat(family, "What is the sound?"), (rng.standard_normal(16000) * 0.1).astype(np.float32)),
        enc.encode(render_chat(family, "How many beeps are there in this clip, one or two?"),
                   (rng.standard_normal(40000) * 0.1).astype(np.float32)),
    ]
    completions = [[25, 26, 27], [28, 29, 30, 31, 32, 33], [34], [35, 36, 37, 38]]
    return PolicyBatch(prompts, [0, 1, 0, 1], completions)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on 2 shared cores: one thread is ~10x faster than oversubscribed intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=FAMILIES)
def case(request, tiny_models):
    family = request.param
    path = tiny_models[family]
    return family, load_policy(path, family, "float32"), make_batch(path, family)


def unpadded_reference(model, batch: PolicyBatch, temperature: float) -> list[np.ndarray]:
    """log_softmax(logits / T) at the completion tokens, one sequence at a time, with no padding at all."""
    out = []
    for i, completion in enumerate(batch.completion_ids):
        prompt = batch.prompts[batch.prompt_index[i]]
        ids = torch.tensor([prompt.input_ids + completion])
        with torch.no_grad():
            logits = model(
                input_ids=ids, attention_mask=torch.ones_like(ids),
                input_features=torch.from_numpy(prompt.input_features)[None],
                feature_attention_mask=torch.from_numpy(prompt.feature_attention_mask)[None],
            ).logits[0]
        logp = torch.log_softmax(logits.float() / temperature, dim=-1)
        start = len(prompt.input_ids) - 1
        out.append(np.array([logp[start + j, tok].item() for j, tok in enumerate(completion)], dtype=np.float32))
    return out


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_batched_equals_unpadded(case, temperature):
    family, model, batch = case
    expected = unpadded_reference(model, batch, temperature)
    module = CompletionLogprobs(model)
    for micro in (1, 3, 4):
        got = compute_logprobs(module, batch, micro, "cpu", temperature)
        assert [len(g) for g in got] == [3, 6, 1, 4]
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, atol=2e-5, err_msg=f"{family} micro={micro}")


def test_temperature_scales_logits(case):
    _, model, batch = case
    module = CompletionLogprobs(model)
    hot = compute_logprobs(module, batch, 4, "cpu", 2.0)
    cold = compute_logprobs(module, batch, 4, "cpu", 1.0)
    assert not np.allclose(hot[0], cold[0])
    assert all((h <= 0).all() for h in hot)


def test_padding_micro_batches_changes_nothing(case):
    _, model, batch = case
    module = CompletionLogprobs(model)
    plain = compute_logprobs(module, batch, 3, "cpu", 1.0)
    padded = compute_logprobs(module, batch, 3, "cpu", 1.0, num_micro_batches=4)
    for a, b in zip(plain, padded):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="less than the 2 needed"):
        compute_logprobs(module, batch, 3, "cpu", 1.0, num_micro_batches=1)


def per_sample_logprobs(model, inputs: dict, temperature: float = 1.0) -> torch.Tensor:
    """What `CompletionLogprobs` computed before clips were shared: transformers' own forward, every row with its
    own copy of its clip's features (the encoder runs once per sequence)."""
    rows = inputs["clip_index"]
    with _lm_head_at(model.lm_head, inputs["positions"]):
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
            input_features=inputs["input_features"][rows],
            feature_attention_mask=inputs["feature_attention_mask"][rows],
            use_cache=False,
        ).logits.float() / temperature
    return logits.gather(-1, inputs["targets"][..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def loss_and_grads(model, logp: torch.Tensor, mask: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    """A GRPO loss with a KL term (old = logp detached, made-up reference and advantages) and its gradients."""
    model.zero_grad()
    ref = (logp.detach() + 0.1 * torch.arange(logp.shape[1])).where(mask.bool(), 0)
    adv = torch.tensor([1.0, -0.5, 0.25, -2.0])
    loss, _ = grpo_loss(logp, logp.detach(), ref, adv, mask, beta=0.04)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def test_each_clip_encoded_once_gives_the_per_sample_loss_and_gradients(case):
    """Two clips, each continued by two of the four sequences of one micro-batch: the encoder runs on 2 clips,
    and the loss and every gradient (audio encoder included: summed over the clip's samples) equal the
    per-sample path's to 1e-5."""
    family, model, batch = case
    shared = collate(batch, range(4))
    assert shared["input_features"].shape[0] == 2 and shared["clip_index"].tolist() == [0, 1, 0, 1]
    mask = shared.pop("mask")
    module = CompletionLogprobs(model)
    loss, grads = loss_and_grads(model, module(**shared, temperature=1.0), mask)
    expected_loss, expected = loss_and_grads(model, per_sample_logprobs(model, shared), mask)
    assert loss == pytest.approx(expected_loss, abs=1e-5)
    assert grads.keys() == expected.keys() and any("audio_tower" in n for n in grads)
    for name, g in expected.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-5, msg=f"{family} {name}")
    unshared = collate(batch, range(4), share_clips=False)
    assert unshared["input_features"].shape[0] == 4 and unshared["clip_index"].tolist() == [0, 1, 2, 3]
    unshared.pop("mask")
    unshared_logp, shared_logp = module(**unshared, temperature=1.0), module(**shared, temperature=1.0)
    torch.testing.assert_close(unshared_logp, shared_logp, rtol=0, atol=1e-5)


def test_on_policy_old_logprobs_equal_a_separate_old_pass(case):
    """One update per batch: the loss pass's detached log-probs (what the trainer uses when the driver skips the
    old pass) give ratio 1 exactly and the same loss, statistics and gradients as a separate old forward."""
    family, model, batch = case
    module = CompletionLogprobs(model)
    inputs = collate(batch, range(4))
    mask = inputs.pop("mask")
    separate = pad_ragged(compute_logprobs(module, batch, 4, "cpu", 1.0), mask.shape[1])
    ref = separate + 0.05
    adv = torch.tensor([1.0, -0.5, 0.25, -2.0])
    results = []
    for old in (None, separate):
        model.zero_grad()
        logp = module(**inputs, temperature=1.0)
        loss, stats = grpo_loss(logp, logp.detach() if old is None else old, ref, adv, mask, beta=0.04)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((float(loss.detach()), stats, grads))
    model.zero_grad(set_to_none=True)
    (loss, stats, grads), (sep_loss, sep_stats, sep_grads) = results
    assert stats["ratio_min"] == stats["ratio_max"] == stats["ratio_mean"] == 1.0
    assert loss == pytest.approx(sep_loss, abs=1e-6)
    for key in ("kl", "clip_frac", "ratio_mean", "tokens"):
        assert stats[key] == pytest.approx(sep_stats[key], abs=1e-6), key
    for name, g in sep_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=f"{family} {name}")


def test_collate_layout(tiny_models):
    """Right padding; each completion token's target and the position whose logits predict it."""
    batch = make_batch(tiny_models["qwen2_audio"], "qwen2_audio")
    p0, p1 = (len(p.input_ids) for p in batch.prompts)
    x = collate(batch, [2, 1])  # prompt 0 + [34], prompt 1 + 6 tokens
    assert x["input_ids"].shape == (2, p1 + 6)
    assert x["attention_mask"][0].sum() == p0 + 1 and x["attention_mask"][1].sum() == p1 + 6
    assert x["input_ids"][0, p0].item() == 34 and (x["input_ids"][0, p0 + 1:] == 0).all()
    assert x["targets"].tolist() == [[34, 0, 0, 0, 0, 0], [28, 29, 30, 31, 32, 33]]
    assert x["mask"].tolist() == [[1, 0, 0, 0, 0, 0], [1] * 6]
    assert x["positions"][0, 0].item() == p0 - 1
    assert x["positions"][1].tolist() == list(range(p1 - 1, p1 + 5))
    assert x["input_features"].shape == (2, 128, 3000)
    assert x["feature_attention_mask"][0].sum() < x["feature_attention_mask"][1].sum()  # 1 s vs 2.5 s clip


def test_select_keeps_only_used_prompts(tiny_models):
    batch = make_batch(tiny_models["qwen2_audio"], "qwen2_audio")
    batch.advantages = [0.1, 0.2, 0.3, 0.4]
    sub = batch.select([1, 3])
    assert len(sub.prompts) == 1 and sub.prompt_index == [0, 0]
    assert sub.prompts[0] is batch.prompts[1]
    assert sub.completion_ids == [[28, 29, 30, 31, 32, 33], [35, 36, 37, 38]]
    assert sub.advantages == [0.2, 0.4]


def test_batch_validation_names_the_field(tiny_models):
    batch = make_batch(tiny_models["qwen2_audio"], "qwen2_audio")
    with pytest.raises(ValueError, match=r"prompt_index\[1\] = 5"):
        PolicyBatch(batch.prompts, [0, 5], [[1], [2]])
    with pytest.raises(ValueError, match="advantages has 1 entries"):
        PolicyBatch(batch.prompts, [0, 1], [[1], [2]], advantages=[0.5])
    with pytest.raises(ValueError, match=r"ref_logprobs\[1\] has 1 values for 2 completion tokens"):
        PolicyBatch(batch.prompts, [0, 1], [[1], [2, 3]], ref_logprobs=[np.zeros(1), np.zeros(1)])
