"""Log-probs of completion tokens under a policy (any family), with the prompt's audio features.

A `PolicyBatch` is what the rollout hands to the trainer: the prompts of a step (expanded token ids and Whisper
features, shared by the G samples of a question) and, per sequence, the completion token ids and optional
per-token arrays (advantage, old / reference / engine log-probs).

Sequences are right-padded: every real token keeps the positions (and, for the Omni thinkers, the rope index) it
had unpadded, and padding only ever follows real tokens, which causal attention never looks at. The LM head runs
only at the positions that predict completion tokens, so memory does not grow with the ~750 audio tokens of a
30 s clip times the vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from audio_thinker.core.encoding import EncodedPrompt, stack_features
from audio_thinker.core.families import audio_embeddings, forward_with_audio_embeddings, merge_audio_embeddings

# Any id works as right padding (padded positions are masked and come after all real tokens), except the
# audio placeholder, which the models count to place the audio features. 0 is <|endoftext|> in Qwen vocabularies.
PAD_ID = 0
PER_TOKEN_FIELDS = ("old_logprobs", "ref_logprobs", "engine_logprobs")


@dataclass
class PolicyBatch:
    """Sequences of one step. Per-sequence arrays are float32, one value per completion token."""

    prompts: list[EncodedPrompt]
    prompt_index: list[int]  # per sequence: which prompt it continues
    completion_ids: list[list[int]]
    advantages: list[float] | None = None
    old_logprobs: list[np.ndarray] | None = None
    ref_logprobs: list[np.ndarray] | None = None
    engine_logprobs: list[np.ndarray] | None = None  # reported by the rollout engine, only for the mismatch metric

    def __post_init__(self) -> None:
        n = len(self.completion_ids)
        if len(self.prompt_index) != n:
            raise ValueError(f"PolicyBatch: prompt_index has {len(self.prompt_index)} entries, completion_ids {n}")
        for i, p in enumerate(self.prompt_index):
            if not 0 <= p < len(self.prompts):
                raise ValueError(f"PolicyBatch: prompt_index[{i}] = {p} is outside 0..{len(self.prompts) - 1}")
        for j, prompt in enumerate(self.prompts):
            if not prompt.input_ids:
                raise ValueError(f"PolicyBatch: prompts[{j}] has no tokens")
        if self.advantages is not None and len(self.advantages) != n:
            raise ValueError(f"PolicyBatch: advantages has {len(self.advantages)} entries, completion_ids {n}")
        for name in PER_TOKEN_FIELDS:
            values = getattr(self, name)
            if values is None:
                continue
            if len(values) != n:
                raise ValueError(f"PolicyBatch: {name} has {len(values)} entries, completion_ids {n}")
            for i, (v, ids) in enumerate(zip(values, self.completion_ids)):
                if len(v) != len(ids):
                    raise ValueError(f"PolicyBatch: {name}[{i}] has {len(v)} values for {len(ids)} completion tokens")

    def __len__(self) -> int:
        return len(self.completion_ids)

    def select(self, indices: Sequence[int]) -> PolicyBatch:
        """The sub-batch of these sequences, carrying only the prompts they use."""
        used = sorted({self.prompt_index[i] for i in indices})
        remap = {p: k for k, p in enumerate(used)}

        def pick(values):
            return None if values is None else [values[i] for i in indices]

        return PolicyBatch(
            prompts=[self.prompts[p] for p in used],
            prompt_index=[remap[self.prompt_index[i]] for i in indices],
            completion_ids=[self.completion_ids[i] for i in indices],
            advantages=pick(self.advantages),
            old_logprobs=pick(self.old_logprobs),
            ref_logprobs=pick(self.ref_logprobs),
            engine_logprobs=pick(self.engine_logprobs),
        )


def pad_ragged(values: Sequence[Sequence[float]], width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[B, width] float32 tensor of ragged rows, zero-padded on the right."""
    out = torch.zeros(len(values), width, dtype=torch.float32)
    for i, v in enumerate(values):
        out[i, : len(v)] = torch.from_numpy(np.array(v, dtype=np.float32))  # a copy: Ray hands out read-only arrays
    return out.to(device)


def collate(
    batch: PolicyBatch, indices: Sequence[int], device: torch.device | str = "cpu", share_clips: bool = True
) -> dict[str, torch.Tensor]:
    """Model inputs for sequences `indices`: right-padded prompt+completion ids, the audio features of the
    distinct prompts they continue (`clip_index`: each row's clip; `share_clips=False`: one copy per row, the
    encoder then runs per sequence), and for every completion token its target id, the position whose logits
    predict it, and a mask."""
    rows = [batch.prompts[batch.prompt_index[i]].input_ids + list(batch.completion_ids[i]) for i in indices]
    prompt_lens = [len(batch.prompts[batch.prompt_index[i]].input_ids) for i in indices]
    comp_lens = [len(batch.completion_ids[i]) for i in indices]
    seq_len = max(len(r) for r in rows)
    width = max(max(comp_lens), 1)
    b = len(indices)
    input_ids = torch.full((b, seq_len), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros(b, seq_len, dtype=torch.long)
    targets = torch.zeros(b, width, dtype=torch.long)
    positions = torch.zeros(b, width, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.float32)
    for r, (row, p, c) in enumerate(zip(rows, prompt_lens, comp_lens)):
        input_ids[r, : len(row)] = torch.tensor(row)
        attention_mask[r, : len(row)] = 1
        targets[r, :c] = torch.tensor(row[p:], dtype=torch.long)
        # Token p + j is predicted by the logits at p + j - 1; padded slots point at a real position (masked).
        positions[r] = (p - 1 + torch.arange(width)).clamp(max=len(row) - 1)
        mask[r, :c] = 1
    rows_prompt = [batch.prompt_index[i] for i in indices]
    used = list(dict.fromkeys(rows_prompt)) if share_clips else rows_prompt
    clip_index = [used.index(p) for p in rows_prompt] if share_clips else list(range(b))
    features, feature_masks = stack_features([batch.prompts[p] for p in used])
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "input_features": torch.from_numpy(features).to(device),
        "feature_attention_mask": torch.from_numpy(feature_masks).to(device),
        "clip_index": torch.tensor(clip_index, dtype=torch.long).to(device),
        "positions": positions.to(device),
        "targets": targets.to(device),
        "mask": mask.to(device),
    }


@contextmanager
def _lm_head_at(lm_head: torch.nn.Module, positions: torch.Tensor) -> Iterator[None]:
    """Make the LM head see only the hidden states at `positions` ([B, T]) during one forward pass.

    Neither policy class takes `logits_to_keep` with per-row positions, and logits for every prompt position
    would cost B x L x vocab memory (and its gradient) for nothing.
    """

    def gather(_module, args):
        hidden = args[0]
        return (hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1])),)

    handle = lm_head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


class CompletionLogprobs(torch.nn.Module):
    """Wraps a policy so that its forward returns completion-token log-probs [B, T] (float32).

    This is the module DeepSpeed wraps (its engine must see the whole computation from inputs to the tensor
    the loss is built from); the reference model uses it as is. The audio encoder runs once per clip of
    `input_features` ([C, mel, frames]); row r reads clip `clip_index[r]`, so G samples of one question share
    one encoding and its gradient is the sum of theirs, as when each sample encoded its own copy.

    `router_aux=True` (a mixture-of-experts policy) also keeps the router's load-balancing loss of the last forward
    in `router_aux_loss` (transformers' Switch-Transformer loss over the real tokens; `trainer.router_aux_loss_coef`).
    """

    def __init__(self, policy: torch.nn.Module, router_aux: bool = False):
        super().__init__()
        self.policy = policy
        self.router_aux = router_aux
        self.router_aux_loss: torch.Tensor | None = None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        input_features: torch.Tensor,
        feature_attention_mask: torch.Tensor,
        clip_index: torch.Tensor,
        positions: torch.Tensor,
        targets: torch.Tensor,
        temperature: float,
    ) -> torch.Tensor:
        clips = audio_embeddings(self.policy, input_features, feature_attention_mask)
        embeds = merge_audio_embeddings(self.policy, input_ids, clips, clip_index)
        extra = {"output_router_logits": True} if self.router_aux else {}
        with _lm_head_at(self.policy.lm_head, positions):
            out = forward_with_audio_embeddings(
                self.policy, input_ids, attention_mask, embeds, feature_attention_mask[clip_index], **extra
            )
        self.router_aux_loss = out.aux_loss if self.router_aux else None
        logits = out.logits.float() / temperature
        picked = logits.gather(-1, targets[..., None]).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)


def micro_batches(n: int, size: int) -> list[list[int]]:
    """Consecutive index chunks of at most `size` covering range(n)."""
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


@torch.no_grad()
def compute_logprobs(
    module: torch.nn.Module,
    batch: PolicyBatch,
    micro_batch_size: int,
    device: torch.device | str,
    temperature: float,
    num_micro_batches: int | None = None,
    share_clips: bool = True,
) -> list[np.ndarray]:
    """Per-sequence float32 arrays of completion-token log-probs, `micro_batch_size` sequences per forward
    (each distinct clip of a micro-batch encoded once; `share_clips=False`: once per sequence).

    `num_micro_batches` pads the loop with repeats of the first micro-batch (results discarded): under ZeRO-3
    every rank must run the same number of forward passes, since each one gathers parameters collectively.
    """
    chunks = micro_batches(len(batch), micro_batch_size)
    extra = (num_micro_batches or len(chunks)) - len(chunks)
    if extra < 0:
        raise ValueError(f"num_micro_batches={num_micro_batches} is less than the {len(chunks)} needed")
    out: list[np.ndarray] = []
    for k, idx in enumerate(chunks + chunks[:1] * extra):
        inputs = collate(batch, idx, device, share_clips)
        mask = inputs.pop("mask")
        logp = module(**inputs, temperature=temperature)
        if k < len(chunks):
            for r in range(len(idx)):
                n = int(mask[r].sum())
                out.append(logp[r, :n].float().cpu().numpy())
    return out
