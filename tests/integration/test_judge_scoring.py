"""Judge scoring: the calibrated-score math (hand-computed), prompt rendering, the single-token label check,
and the transformers backend against a plain forward pass of the tiny Qwen3 judge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from reward_server.backends import TransformersBackend
from reward_server.prompts import (
    ALL_LABELS,
    CONSISTENCY,
    PROMPTS,
    THINK_QUALITY,
    LabelTokenError,
    label_token_ids,
    render,
    render_ids,
)
from reward_server.schemas import JudgeItem
from reward_server.scoring import (
    BackendError,
    PromptTooLongError,
    expected_value,
    label_distribution,
    prepare,
    score_items,
    score_prepared,
)

ITEMS = [
    JudgeItem(
        question="Which instrument plays?",
        think="Bowed strings, high pitch.",
        answer="violin",
        choices=["violin", "drums"],
    ),
    JudgeItem(question="How many beeps?", think="I count one, two, three beeps, so three.", answer="three"),
    JudgeItem(question="Is the speaker male?", think="The voice is low.", answer="yes"),
]


@pytest.fixture(scope="module")
def backend(tiny_models) -> TransformersBackend:
    return TransformersBackend(str(tiny_models["qwen3_judge"]), device="cpu")


# ------------------------------------------------------------------------------------------------ score math


def test_consistency_is_p_yes_over_p_yes_plus_p_no():
    # P(yes) = 0.3, P(no) = 0.1 -> 0.3 / 0.4 = 0.75, whatever mass other tokens have.
    assert expected_value(CONSISTENCY, [math.log(0.3), math.log(0.1)]) == pytest.approx(0.75, abs=1e-12)
    assert expected_value(CONSISTENCY, [math.log(0.01), math.log(0.03)]) == pytest.approx(0.25, abs=1e-12)


def test_think_quality_is_the_expected_digit_over_nine():
    lp = np.full(10, -np.inf)
    lp[9] = math.log(0.2)
    assert expected_value(THINK_QUALITY, lp) == pytest.approx(1.0)
    lp = np.full(10, -np.inf)
    lp[0], lp[9] = math.log(0.05), math.log(0.15)  # renormalised: 0.25 * 0 + 0.75 * 1
    assert expected_value(THINK_QUALITY, lp) == pytest.approx(0.75)
    lp = np.full(10, -np.inf)
    lp[3], lp[6] = -2.0, -2.0  # (3/9 + 6/9) / 2
    assert expected_value(THINK_QUALITY, lp) == pytest.approx(0.5)
    assert expected_value(THINK_QUALITY, np.full(10, -7.0)) == pytest.approx(0.5)  # uniform: mean of 0..9 / 9


def test_label_distribution_edge_cases():
    np.testing.assert_allclose(label_distribution([-np.inf, math.log(0.2)]), [0.0, 1.0])
    with pytest.raises(BackendError, match="none of the verdict labels"):
        label_distribution([-np.inf, -np.inf])
    with pytest.raises(BackendError, match="invalid"):
        label_distribution([float("nan"), 0.0])


# ------------------------------------------------------------------------------------------------ prompts


def test_render_puts_every_field_in_and_ends_at_the_verdict():
    text = render(CONSISTENCY, ITEMS[0])
    for part in (
        "<question>\nWhich instrument plays?\n</question>",
        "<reasoning>\nBowed strings, high pitch.\n</reasoning>",
        "<final_answer>\nviolin\n</final_answer>",
        "<choices>\n<choice>violin</choice>\n<choice>drums</choice>\n</choices>",
    ):
        assert part in text
    assert text.endswith("Verdict:")
    assert render(THINK_QUALITY, ITEMS[1]).endswith("Score: ")
    assert "<choices>" not in render(THINK_QUALITY, ITEMS[1])
    # Braces in user text are data, not placeholders.
    assert "{answer}" in render(CONSISTENCY, JudgeItem(question="{answer}", think="t", answer="a"))


def test_labels_are_single_tokens_of_the_tiny_judge(backend):
    ids = label_token_ids(backend.tokenizer)
    assert list(ids) == list(ALL_LABELS)
    for prompt in PROMPTS.values():
        text = render(prompt, ITEMS[0])
        base = backend.tokenizer.encode(text, add_special_tokens=False)
        for label in prompt.labels:
            assert backend.tokenizer.encode(text + label, add_special_tokens=False) == base + [ids[label]]
        # The prompt's ids (tokenized piece by piece) end like the whole text's: the label follows the same token.
        assert render_ids(prompt, ITEMS[0], backend.tokenizer).ids[-5:] == base[-5:]


def test_label_check_names_a_label_that_is_split():
    # A byte-level BPE that never saw "yes": " yes" is several tokens, which must stop the judge at start-up.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(["the reasoning score verdict no"] * 20, trainer=trainer)
    with pytest.raises(LabelTokenError, match="' yes'"):
        label_token_ids(PreTrainedTokenizerFast(tokenizer_object=tok))


# ------------------------------------------------------------------------------------------------ backend


def test_backend_matches_a_plain_forward_pass(backend, tiny_models):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_models["qwen3_judge"]), dtype=torch.float32).eval()
    ids = [render_ids(CONSISTENCY, item, backend.tokenizer).ids for item in ITEMS]
    got = backend.label_logprobs(ids)  # one left-padded batch of three different lengths
    assert len({len(i) for i in ids}) == 3
    for row, seq in zip(got, ids):
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([seq])).logits[0, -1].double(), -1)
        np.testing.assert_allclose(row, ref[backend.label_ids].numpy(), atol=1e-5)
    # The score is the hand formula on these numbers.
    yes, no = got[0][0], got[0][1]
    result = score_items(backend, ITEMS[:1], ["consistency"])[0]
    assert result.consistency_prob == pytest.approx(math.exp(yes) / (math.exp(yes) + math.exp(no)), abs=1e-9)
    assert result.consistency == int(result.consistency_prob >= 0.5)
    assert result.think_quality is None


def test_batched_scores_equal_one_by_one_and_token_budget_chunks(backend):
    together = score_items(backend, ITEMS)
    alone = [score_items(backend, [item])[0] for item in ITEMS]
    backend.max_batch_tokens, saved = 64, backend.max_batch_tokens  # forces one forward per prompt
    try:
        chunked = score_items(backend, ITEMS)
    finally:
        backend.max_batch_tokens = saved
    for a, b, c in zip(together, alone, chunked):
        assert a.consistency_prob == pytest.approx(b.consistency_prob, abs=1e-5)
        assert a.think_quality == pytest.approx(b.think_quality, abs=1e-5)
        assert c.think_quality == pytest.approx(b.think_quality, abs=1e-5)
        assert 0.0 <= a.think_quality <= 1.0 and a.consistency in (0, 1)


def test_prepare_refuses_a_prompt_longer_than_the_judge_context(backend, tiny_models):
    long_item = JudgeItem(question="q", think="because " * 5000, answer="a")
    limit = backend.max_prompt_tokens
    # The judge's context minus the one position of the verdict token.
    assert limit == AutoConfig.from_pretrained(str(tiny_models["qwen3_judge"])).max_position_embeddings - 1
    with pytest.raises(
        PromptTooLongError,
        match=rf"items\[1\]: the consistency prompt is \d+ tokens, the judge takes at most {limit}",
    ):
        prepare(backend, [ITEMS[0], long_item], ["consistency", "think_quality"])
    prepared = prepare(backend, ITEMS, ["think_quality"])
    assert [p.scores for p in prepared] == [("think_quality",)] * 3
    assert [r.think_quality for r in score_prepared(backend, prepared)] == pytest.approx(
        [r.think_quality for r in score_items(backend, ITEMS)], abs=1e-5
    )
