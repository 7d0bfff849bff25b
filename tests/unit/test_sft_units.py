"""The SFT objective by hand, its targets, and how a CoT training set without rationales is refused."""

from __future__ import annotations

import json
import math

import pytest
import torch

from audio_thinker.app.train.sft_data import load_sft_data, sft_target
from audio_thinker.app.data.synthetic import write_synthetic_dataset
from audio_thinker.core.manifests import DataError
from audio_thinker.core.presets import load_config
from audio_thinker.core.protocol import parse_response
from trainer.sft_loss import sft_loss


def test_sft_loss_is_the_mean_nll_of_the_response_tokens():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.5, 0.1, 0.1]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # 3 response tokens; padding never counts
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.5)) / 3
    assert sft_loss(logp, mask, 3).item() == pytest.approx(expected)
    # Two micro-batches, each divided by the step's token count, add up to the step's mean.
    parts = sft_loss(logp[:1], mask[:1], 3) + sft_loss(logp[1:], mask[1:], 3)
    assert parts.item() == pytest.approx(expected)
    with pytest.raises(ValueError):
        sft_loss(logp, mask, 0)


def test_sft_targets_are_well_formed_responses():
    answer = sft_target("a dog", None)
    cot = sft_target("a dog", "I hear barking. Therefore, the answer is a dog.")
    assert answer == "<answer>a dog</answer><|im_end|>"
    assert (parse_response(answer).mode, parse_response(answer).answer) == ("no_think", "a dog")
    assert (parse_response(cot).mode, parse_response(cot).think) == (
        "think",
        "I hear barking. Therefore, the answer is a dog.",
    )


def test_a_cot_set_needs_rationales(tmp_path):
    manifest = write_synthetic_dataset(tmp_path, n=3, seed=0, split="train")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[0]["rationale"] = "I count them. Therefore, the answer is x."
    rows[2]["rationale"] = "<think>nested</think>"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [f"data.train_manifest={manifest}", f"data.audio_root={tmp_path}", "sft.target=cot"]
    with pytest.raises(DataError, match=r"row 2: missing or empty field 'rationale'"):
        load_sft_data(load_config(None, overrides))
    data, rationales = load_sft_data(load_config(None, [*overrides, "data.skip_bad_rows=true"]))
    assert len(data) == 1 and rationales == ["I count them. Therefore, the answer is x."]
    assert [row for row, _ in data.skipped] == [2, 3]
    answers, none = load_sft_data(load_config(None, overrides[:2]))  # answer targets need no rationale
    assert len(answers) == 3 and none == [None, None, None]
