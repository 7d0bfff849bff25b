"""LoRA adapters on the policy's language model (`trainer.lora`); the only module of the project that imports peft.

peft wraps each targeted linear layer in place: `<name>.base_layer` keeps the frozen weight W, `<name>.lora_A` /
`<name>.lora_B` hold the adapter (A: r x in, B: out x r, B starts at zero) and the layer computes
W x + (alpha / r) B A x. Only the language model's decoder layers are searched: Qwen2-Audio's audio encoder has
q_proj/k_proj/v_proj too, and the Omni vision mergers have gate_proj/up_proj/down_proj, and none is wrapped. peft
gets the exact module names (a regex would be rewritten for mixture-of-experts models: peft resolves it to leaf
names, which then match the audio encoder too).

Qwen3-Omni's experts are fused 3-D parameters (`<layer>.mlp.experts.gate_up_proj` [E, 2I, H], `.down_proj`
[E, H, I]): naming gate_proj and up_proj (both: they are one weight) or down_proj targets them through peft's
`target_parameters` (`lora.ParamWrapper`): per expert e a rank-r adapter, A_e (r x in) and B_e (out x r) stored as
A [r E, in] and B [out, r E], and the expert computes with W_e + (alpha / r) B_e A_e.

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
from peft.tuners.lora import LoraLayer, ParamWrapper
from transformers import AutoConfig

from audio_thinker.core.trainer_config import LoraConfig
from audio_thinker.core.families import audio_tower_prefix, checkpoint_items, language_model_prefix, model_class

ADAPTER = "default"  # peft's adapter name; one adapter per policy
# Target names that mean a fused expert parameter (`<layer>.mlp.experts.<parameter>`) where the layer has one.
EXPERT_PARAMETERS = {"gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "gate_up_proj": "gate_up_proj",
                     "down_proj": "down_proj"}  # fmt: skip


def _decoder_layer(family: str) -> re.Pattern:
    return re.compile(rf"{re.escape(language_model_prefix(family))}\.layers\.\d+\.")


def lora_targets(policy: torch.nn.Module, family: str, lora: LoraConfig) -> list[str]:
    """The module names `lora` wraps in `policy` (linear layers of the language model's decoder layers) followed by
    the fused expert parameters it adapts; a target name that matches nothing is an error naming it (and the names
    that exist)."""
    layer = _decoder_layer(family)
    names = set(lora.target_modules)
    linear = [n for n, m in policy.named_modules() if isinstance(m, torch.nn.Linear) and layer.match(n)]
    modules = [n for n in linear if n.rsplit(".", 1)[-1] in names]
    experts = [n for n, p in policy.named_parameters() if p.ndim == 3 and layer.match(n) and ".mlp.experts." in n]
    wanted = {EXPERT_PARAMETERS[n] for n in names if n in EXPERT_PARAMETERS}
    parameters = [n for n in experts if n.rsplit(".", 1)[-1] in wanted]
    found = {n.rsplit(".", 1)[-1] for n in modules} | {n for n in names if parameters and n in EXPERT_PARAMETERS}
    missing = [t for t in lora.target_modules if t not in found]
    if missing:
        available = sorted({n.rsplit(".", 1)[-1] for n in linear})
        fused = sorted({n.rsplit(".", 1)[-1] for n in experts})
        extra = f"; its experts are fused: {', '.join(fused)}, gate_proj and up_proj name gate_up_proj" if fused else ""
        raise ValueError(
            f"trainer.lora.target_modules: {missing} match no linear layer of the {family} language model "
            f"(it has {', '.join(available)}{extra})"
        )
    if parameters and {"gate_proj", "up_proj"} & names and not {"gate_proj", "up_proj"} <= names | {"gate_up_proj"}:
        raise ValueError(
            "trainer.lora.target_modules: the experts hold gate_proj and up_proj in one weight (gate_up_proj): name "
            "both or neither"
        )
    if parameters and lora.dropout:
        raise ValueError(
            f"trainer.lora.dropout={lora.dropout}: peft's adapters on fused expert weights take no dropout (the input "
            "of each expert is not separable from the weight); set it to 0 or leave the experts out of target_modules"
        )
    return modules + parameters


def meta_policy(model_path: str | Path, family: str) -> torch.nn.Module:
    """The policy's architecture on the meta device (no weights read, no memory): for checks and counts."""
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{model_path} is not a Hugging Face model folder (no config.json)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    cls = model_class(family, model_type)
    if model_type == "qwen3_omni_moe":  # a full Qwen3-Omni folder: the thinker class builds from its thinker_config
        config = AutoConfig.from_pretrained(model_path).thinker_config
    else:
        config = cls.config_class.from_pretrained(model_path)
    with torch.device("meta"):
        model = cls(config)
    return model.thinker if model_type == "qwen2_5_omni" else model


def check_lora(model_path: str | Path, family: str, lora: LoraConfig) -> int:
    """Check `trainer.lora` against the model's architecture before anything starts; returns the number of
    wrapped layers."""
    return len(lora_targets(meta_policy(model_path, family), family, lora))


def adapter_parameter_count(policy: torch.nn.Module, family: str, lora: LoraConfig) -> int:
    """Parameters of the adapters: rank x (in + out) per wrapped linear layer, and per expert of a fused expert
    weight [E, out, in] rank x (in + out) again, E times (the planner's LoRA term)."""
    modules, params = dict(policy.named_modules()), dict(policy.named_parameters())
    total = 0
    for name in lora_targets(policy, family, lora):
        if name in params:
            experts, out, inp = params[name].shape
            total += experts * lora.rank * (inp + out)
        else:
            total += lora.rank * (modules[name].in_features + modules[name].out_features)
    return total


def apply_lora(policy: torch.nn.Module, family: str, lora: LoraConfig, train_audio_encoder: bool) -> torch.nn.Module:
    """Wrap the targeted layers in place and freeze everything else, except the audio encoder's parameters that
    were trainable before when `train_audio_encoder` (its fixed position table stays frozen). Returns the
    PeftModel; the transformers model (with adapters inside) stays `policy`."""
    targets = lora_targets(policy, family, lora)
    params = dict(policy.named_parameters())
    tower = audio_tower_prefix(family) + "."
    audio = [n for n, p in params.items() if p.requires_grad and n.startswith(tower)]
    config = PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=[n for n in targets if n not in params],
        target_parameters=[n for n in targets if n in params] or None,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):  # A's init: the same on every rank, the global RNG untouched
        torch.manual_seed(lora.init_seed)
        peft = get_peft_model(policy, config, adapter_name=ADAPTER)
    if train_audio_encoder:
        params = dict(policy.named_parameters())
        for name in audio:
            params[name].requires_grad_(True)
    wrapped = {_original_name(n) + (f".{m.parameter_name}" if isinstance(m, ParamWrapper) else "")
               for n, m in policy.named_modules() if isinstance(m, LoraLayer)}  # fmt: skip
    if wrapped != set(targets):
        raise RuntimeError(f"peft wrapped {sorted(wrapped ^ set(targets))} unlike the target list")
    return peft


def _original_name(name: str) -> str:
    """A name inside peft's wrappers -> the name it had before (wrappers nest: `<m>.base_layer.base_layer`)."""
    return name.replace(".base_layer", "")


@dataclass(frozen=True)
class Entry:
    """One tensor of the original checkpoint and the model tensors it is made of: itself, or a wrapped layer's
    base weight with its adapter (`scaling` = alpha / r; `experts`: a fused expert weight [E, out, in] whose
    adapter holds one (A_e, B_e) per expert)."""

    name: str
    sources: tuple[str, ...]
    scaling: float | None = None
    experts: int | None = None

    def merge(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.scaling is None:
            return tensors[0]
        weight, a, b = tensors
        if self.experts is None:
            delta = b.float() @ a.float()
        else:  # A [r E, in] -> [E, r, in]; B [out, r E] -> [out, r, E]; delta_e = B_e A_e
            a = a.float().reshape(self.experts, -1, a.shape[-1])
            b = b.float().reshape(b.shape[0], -1, self.experts)
            delta = torch.einsum("ore,eri->eoi", b, a)
        return (weight.float() + self.scaling * delta).to(weight.dtype)


def merged_entries(model: torch.nn.Module) -> list[Entry]:
    """The tensors of `model`'s original checkpoint in state-dict order (the names it had before peft), each
    with its sources in `model`; a model without adapters maps every name to itself."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    entries = []
    for key in model.state_dict(keep_vars=True):
        if ".lora_" in key:
            continue
        owner, _, leaf = key.rpartition(".")
        wrapper = _wrapper_of(layers, owner, leaf)
        if wrapper is None:
            entries.append(Entry(_original_name(key), (key,)))
            continue
        layer = layers[wrapper]
        prefix = f"{wrapper}.lora_"
        sources = (key, f"{prefix}A.{ADAPTER}.weight", f"{prefix}B.{ADAPTER}.weight")
        experts = None
        if isinstance(layer, ParamWrapper):
            if not layer._did_swap_in_out_features:  # transformers 5.19's experts are [E, out, in]
                raise RuntimeError(f"{key}: a fused expert weight laid out [E, in, out] is not supported")
            experts = layer.num_experts
        entries.append(Entry(_original_name(key), sources, layer.scaling[ADAPTER], experts))
    return entries


def _wrapper_of(layers: dict, owner: str, leaf: str) -> str | None:
    """The peft layer that adapts the tensor `<owner>.<leaf>`, if any: a linear layer's `weight` (its owner is the
    layer's `base_layer`), or the parameter a ParamWrapper along the `base_layer` chain names."""
    candidates = []
    while owner.endswith(".base_layer"):
        owner = owner.removesuffix(".base_layer")
        candidates.append(owner)
    for name in candidates:
        layer = layers.get(name)
        if isinstance(layer, ParamWrapper) and layer.parameter_name == leaf:
            return name
        if layer is not None and not isinstance(layer, ParamWrapper) and leaf == "weight":
            return name
    return None


def merged_checkpoint(
    base: torch.nn.Module, family: str, lora: LoraConfig, trained: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of a LoRA policy from its base model and a checkpoint's trained tensors (peft's names:
    the adapters, and the audio encoder when it trained), merged as the trainer's `checkpoint_tensors` merges them
    (every family, Qwen3-Omni's expert adapters included): for an export from a checkpoint alone. `base` is wrapped
    in place."""
    apply_lora(base, family, lora, train_audio_encoder=any(".lora_" not in k for k in trained))
    state = base.state_dict()
    unknown = sorted(set(trained) - set(state))
    if unknown:
        raise KeyError(f"{unknown[:3]}: not tensors of the {family} policy with these adapters")
    with torch.no_grad():
        for name, value in trained.items():
            state[name].copy_(value)
    out = {}
    for entry in merged_entries(base):
        out.update(checkpoint_items(family, entry.name, entry.merge([state[s] for s in entry.sources])))
    return out


def adapters_disabled(module: torch.nn.Module) -> Callable:
    """Context manager: the PeftModel computes with its base weights only (the reference policy)."""
    return module.disable_adapter()
