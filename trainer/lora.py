"""LoRA adapters on the policy's language model (`trainer.lora`); the only module of the project that imports peft.

peft wraps each targeted linear layer in place: `<name>.base_layer` keeps the frozen weight W, `<name>.lora_A` /
`<name>.lora_B` hold the adapter (A: r x in, B: out x r, B starts at zero) and the layer computes
W x + (alpha / r) B A x. Only the language model's decoder layers are searched (a regex anchored at the family's
language-model prefix): Qwen2-Audio's audio encoder has q_proj/k_proj/v_proj too, and Qwen2.5-Omni's vision
merger has gate_proj/up_proj/down_proj, and neither is wrapped.

`merged_entries` is how every consumer outside the trainer sees a LoRA policy: one tensor per original name,
the adapted weights merged (W + (alpha / r) B A), so rollout workers, the export and checksums get a plain
Hugging Face checkpoint (docs/trainer.md says why merged weights rather than vLLM LoRA adapters).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from peft.tuners.lora import LoraLayer

from audio_thinker.core.config import LoraConfig
from audio_thinker.core.families import audio_tower_prefix, language_model_prefix, model_class

ADAPTER = "default"  # peft's adapter name; one adapter per policy


def target_pattern(family: str, names: Sequence[str]) -> str:
    """peft's regex form of target_modules: the named linear layers of the language model's decoder layers."""
    prefix = re.escape(language_model_prefix(family))
    return rf"{prefix}\.layers\.\d+\.(?:.+\.)?(?:{'|'.join(map(re.escape, names))})"


def lora_targets(policy: torch.nn.Module, family: str, lora: LoraConfig) -> list[str]:
    """The module names `lora` wraps in `policy`; a target name that matches no linear layer of the language
    model is an error naming it (and the names that exist)."""
    pattern = re.compile(target_pattern(family, lora.target_modules))
    linear = [n for n, m in policy.named_modules() if isinstance(m, torch.nn.Linear)]
    found = [n for n in linear if pattern.fullmatch(n)]
    leaves = {n.rsplit(".", 1)[-1] for n in found}
    missing = [t for t in lora.target_modules if t not in leaves]
    if missing:
        prefix = re.compile(rf"{re.escape(language_model_prefix(family))}\.layers\.\d+\.")
        available = sorted({n.rsplit(".", 1)[-1] for n in linear if prefix.match(n)})
        raise ValueError(
            f"trainer.lora.target_modules: {missing} match no linear layer of the {family} language model "
            f"(it has {', '.join(available)})"
        )
    return found


def meta_policy(model_path: str | Path, family: str) -> torch.nn.Module:
    """The policy's architecture on the meta device (no weights read, no memory): for checks and counts."""
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{model_path} is not a Hugging Face model folder (no config.json)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    cls = model_class(family, model_type)
    config = cls.config_class.from_pretrained(model_path)
    with torch.device("meta"):
        model = cls(config)
    return model.thinker if model_type == "qwen2_5_omni" else model


def check_lora(model_path: str | Path, family: str, lora: LoraConfig) -> int:
    """Check `trainer.lora` against the model's architecture before anything starts; returns the number of
    wrapped layers."""
    return len(lora_targets(meta_policy(model_path, family), family, lora))


def adapter_parameter_count(policy: torch.nn.Module, family: str, lora: LoraConfig) -> int:
    """Parameters of the adapters: rank x (in + out) per wrapped linear layer (the planner's LoRA term)."""
    modules = dict(policy.named_modules())
    return sum(
        lora.rank * (modules[n].in_features + modules[n].out_features) for n in lora_targets(policy, family, lora)
    )


def apply_lora(policy: torch.nn.Module, family: str, lora: LoraConfig, train_audio_encoder: bool) -> torch.nn.Module:
    """Wrap the targeted layers in place and freeze everything else, except the audio encoder's parameters that
    were trainable before when `train_audio_encoder` (its fixed position table stays frozen). Returns the
    PeftModel; the transformers model (with adapters inside) stays `policy`."""
    targets = lora_targets(policy, family, lora)
    tower = audio_tower_prefix(family) + "."
    audio = [n for n, p in policy.named_parameters() if p.requires_grad and n.startswith(tower)]
    config = PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_pattern(family, lora.target_modules),
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):  # A's init: the same on every rank, the global RNG untouched
        torch.manual_seed(lora.init_seed)
        wrapped = get_peft_model(policy, config, adapter_name=ADAPTER)
    if train_audio_encoder:
        params = dict(policy.named_parameters())
        for name in audio:
            params[name].requires_grad_(True)
    wrapped_names = {n for n, m in policy.named_modules() if isinstance(m, LoraLayer)}
    if wrapped_names != set(targets):
        raise RuntimeError(f"peft wrapped {sorted(wrapped_names ^ set(targets))} unlike the target list")
    return wrapped


@dataclass(frozen=True)
class Entry:
    """One tensor of the original checkpoint and the model tensors it is made of: itself, or a wrapped layer's
    base weight with its adapter (`scaling` = alpha / r)."""

    name: str
    sources: tuple[str, ...]
    scaling: float | None = None

    def merge(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.scaling is None:
            return tensors[0]
        weight, a, b = tensors
        delta = b.float() @ a.float()
        return (weight.float() + self.scaling * delta).to(weight.dtype)


def merged_entries(model: torch.nn.Module) -> list[Entry]:
    """The tensors of `model`'s original checkpoint in state-dict order (the names it had before peft), each
    with its sources in `model`; a model without adapters maps every name to itself."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    entries = []
    for key in model.state_dict(keep_vars=True):
        owner, _, leaf = key.rpartition(".")
        layer_name = owner.removesuffix(".base_layer")
        if ".lora_" in key:
            continue
        if layer_name in layers and owner.endswith(".base_layer"):
            if leaf == "weight":
                prefix = f"{layer_name}.lora_"
                sources = (key, f"{prefix}A.{ADAPTER}.weight", f"{prefix}B.{ADAPTER}.weight")
                entries.append(Entry(f"{layer_name}.weight", sources, layers[layer_name].scaling[ADAPTER]))
            else:
                entries.append(Entry(f"{layer_name}.{leaf}", (key,)))
            continue
        entries.append(Entry(key, (key,)))
    return entries


def adapters_disabled(module: torch.nn.Module) -> Callable:
    """Context manager: the PeftModel computes with its base weights only (the reference policy)."""
    return module.disable_adapter()
