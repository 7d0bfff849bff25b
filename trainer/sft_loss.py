"""The supervised fine-tuning objective: negative log-likelihood of the response tokens only.

The step's loss is the mean over every response token of the step (all micro-batches, all ranks): each
micro-batch contributes -sum(logp * mask) / `denominator`, with `denominator` the step's response-token count,
so accumulating micro-batches (and summing ranks, trainer/engine.py) gives exactly that mean. Prompt tokens
(instruction, audio placeholders) never enter: `CompletionLogprobs` returns log-probs of the response only.
"""

from __future__ import annotations

import torch


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, denominator: float) -> torch.Tensor:
    """-sum(logp * mask) / denominator for [B, T] response log-probs and their 0/1 mask."""
    if denominator <= 0:
        raise ValueError(f"sft_loss needs a positive token count, got {denominator}")
    return -(logp * mask).sum() / denominator
