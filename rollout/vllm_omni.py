"""The Omni thinkers (Qwen2.5-Omni, Qwen3-Omni) on vLLM, as the vLLM adapter (`rollout/vllm_engine.py`) runs them:
a thinker-only folder, and audio-only prompts on a machine without torchvision.

1. **Thinker-only folders.** vLLM runs an Omni thinker only under the full Omni config (`model_type`
   `qwen2_5_omni` / `qwen3_omni_moe`, whose `thinker_config` it reads). A thinker-only folder (ours: the tiny
   models, every export) says `qwen2_5_omni_thinker` / `qwen3_omni_moe_thinker`; `thinker_as_full_config` (vLLM's
   `hf_overrides`) wraps that config in the full one, without a talker. The weights need nothing: vLLM's loader
   maps the thinker's own keys (`model.*`, `lm_head.*`, `audio_tower.*`, `visual.*`).
2. **No torchvision.** vLLM's Omni modules import transformers' Qwen2-VL image processor, which imports
   `torchvision.transforms.v2` at module level (vllm/model_executor/models/qwen{3_omni_moe,2_5_omni}_thinker.py ->
   qwen2_5_vl.py -> qwen2_vl.py -> transformers/models/qwen2_vl/image_processing_qwen2_vl.py:
   `ModuleNotFoundError: No module named 'torchvision'`), and vLLM's Omni processing builds the Omni processor,
   whose image and video processors need torchvision; no CPU build of torchvision exists for our torch.
   `register_audio_only` (only when torchvision is missing) imports those modules with a stand-in
   `torchvision.transforms.v2` in place (removed right after; anything that calls it raises), and registers the
   thinker class again, in this process, with a processor whose image and video parts are stand-ins that refuse
   any input: audio-only prompts work, an image or a video is an error naming this module.

3. **Mixture-of-experts weights on CPU.** vLLM's CPU experts repack their weights for the grouped GEMM when the
   model loads, but `reload_weights` skips that step on an update (`UnquantizedFusedMoEMethod._setup_kernel` runs
   the experts' `process_weights_after_loading` on the first call only): after a reload the CPU kernel reads the
   checkpoint layout as if packed, and the log-probs drift from the trainer's (0.4 nats on the tiny model).
   `repack_cpu_experts` finds the layers left in checkpoint layout (their first expert equals the tensor just
   sent) and repacks them; where vLLM repacks itself, nothing is found and nothing is done.

vLLM is imported inside the functions: the caller (`VLLMEngine`) has imported it already.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from collections.abc import Iterable
from functools import cache

import torch

from transformers import (
    AutoTokenizer,
    Qwen2_5OmniConfig,
    Qwen2_5OmniProcessor,
    Qwen3OmniMoeConfig,
    Qwen3OmniMoeProcessor,
    WhisperFeatureExtractor,
)
from transformers.image_processing_utils import BaseImageProcessor
from transformers.video_processing_utils import BaseVideoProcessor

# family -> (full Omni config class, its model_type, the architecture vLLM registers, vLLM's thinker module and
# class, the thinker-only model_type, the processor class)
OMNI = {
    "qwen2_5_omni": (
        Qwen2_5OmniConfig, "Qwen2_5OmniForConditionalGeneration",
        "vllm.model_executor.models.qwen2_5_omni_thinker", "Qwen2_5OmniThinkerForConditionalGeneration",
        "qwen2_5_omni_thinker", Qwen2_5OmniProcessor,
    ),
    "qwen3_omni": (
        Qwen3OmniMoeConfig, "Qwen3OmniMoeForConditionalGeneration",
        "vllm.model_executor.models.qwen3_omni_moe_thinker", "Qwen3OmniMoeThinkerForConditionalGeneration",
        "qwen3_omni_moe_thinker", Qwen3OmniMoeProcessor,
    ),
}  # fmt: skip
FIRST_GATE = re.compile(r"layers\.(\d+)\.mlp\.experts\.0\.gate_proj\.weight")  # a checkpoint key, per layer
_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")
STAND_IN_MODULES = (
    "torchvision", "torchvision.transforms", "torchvision.transforms.v2", "torchvision.transforms.v2.functional",
)  # fmt: skip


def thinker_as_full_config(config):
    """vLLM's `hf_overrides`: a thinker-only Omni config inside the full one (no talker); any other as it is."""
    for full_cls, arch, _, _, thinker_type, _ in OMNI.values():
        if config.model_type == thinker_type:
            full = full_cls(thinker_config=config.to_dict(), enable_audio_output=False)
            full.architectures = [arch]
            return full
    return config


def torchvision_missing() -> bool:
    return importlib.util.find_spec("torchvision") is None


class NoTorchvision(RuntimeError):
    """An image or video input on a machine without torchvision."""


def _refuse(*_args, **_kwargs):
    raise NoTorchvision(
        "image and video inputs need torchvision, which this machine lacks: the Omni thinker runs on vLLM here with "
        "an audio-only processor (rollout/vllm_omni.py)"
    )


class AudioOnlyImageProcessor(BaseImageProcessor):
    """The Omni processor's image part where torchvision is missing: its sizes, and an error for any image."""

    def __init__(self, merge_size: int, patch_size: int, temporal_patch_size: int):
        super().__init__()
        self.merge_size, self.patch_size, self.temporal_patch_size = merge_size, patch_size, temporal_patch_size

    __call__ = preprocess = _refuse


class AudioOnlyVideoProcessor(BaseVideoProcessor):
    """The Omni processor's video part where torchvision is missing: its sizes, and an error for any video."""

    def __init__(self, merge_size: int, patch_size: int, temporal_patch_size: int):
        super().__init__()
        self.merge_size, self.patch_size, self.temporal_patch_size = merge_size, patch_size, temporal_patch_size

    __call__ = preprocess = _refuse


def _check_argument(self, name: str, argument):
    """ProcessorMixin's class check, passing the stand-ins (transformers' video-processor registry is a dummy
    without torchvision, so the check itself fails there)."""
    if isinstance(argument, AudioOnlyImageProcessor | AudioOnlyVideoProcessor):
        return type(argument)
    return super(type(self), self).check_argument_for_proper_class(name, argument)


@cache
def _audio_only_class(family: str) -> type:
    *_, processor_cls = OMNI[family]
    body = {"check_argument_for_proper_class": _check_argument}
    return type(f"AudioOnly{processor_cls.__name__}", (processor_cls,), body)


def audio_only_processor(family: str, model_path: str, vision_config):
    """The family's Omni processor with stand-in image and video parts (sizes from the thinker's vision config)."""
    processor_cls = _audio_only_class(family)
    temporal = getattr(vision_config, "temporal_patch_size", 2)
    sizes = dict(merge_size=vision_config.spatial_merge_size, patch_size=vision_config.patch_size,
                 temporal_patch_size=temporal)  # fmt: skip
    return processor_cls(
        image_processor=AudioOnlyImageProcessor(**sizes),
        video_processor=AudioOnlyVideoProcessor(**sizes),
        feature_extractor=WhisperFeatureExtractor.from_pretrained(model_path),
        tokenizer=AutoTokenizer.from_pretrained(model_path),
    )


def _import_with_stand_in(module: str) -> types.ModuleType:
    """Import `module` with a stand-in `torchvision.transforms.v2.functional` (whose attributes raise) that is
    removed again afterwards; transformers' own torchvision checks ran before it existed and stay negative."""
    importlib.import_module("transformers.image_utils")  # decides "no torchvision" before the stand-in exists
    added = []
    for name in STAND_IN_MODULES:
        if name in sys.modules:
            continue
        stand_in = types.ModuleType(name)
        stand_in.__path__ = []
        stand_in.__getattr__ = _stand_in_attribute(name)
        sys.modules[name] = stand_in
        parent, _, leaf = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], leaf, stand_in)
        added.append(name)
    try:
        return importlib.import_module(module)
    finally:
        for name in added:
            del sys.modules[name]


def _stand_in_attribute(module: str):
    def attribute(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        _refuse()

    return attribute


def _prefix_thinker(weights):
    """Qwen2.5-Omni thinker weights as vLLM's loader names them: a thinker-only folder's keys get `thinker.`."""
    for name, tensor in weights:
        yield (name if name.startswith(("thinker.", "talker.", "token2wav.")) else "thinker." + name), tensor


@cache
def register_thinker(family: str) -> None:
    """Register, in this process, vLLM's thinker class of `family` again where it needs help here: with the
    audio-only processor when torchvision is missing, and for Qwen2.5-Omni with a `load_weights` that reads a
    thinker-only folder (vLLM's mapper expects the full checkpoint's `thinker.` prefix; Qwen3-Omni's maps both).
    Nothing is registered where neither applies."""
    from vllm import ModelRegistry
    from vllm.multimodal import MULTIMODAL_REGISTRY

    audio_only = torchvision_missing()
    if not audio_only and family != "qwen2_5_omni":
        return
    _, arch, module_name, class_name, _, _ = OMNI[family]
    module = _import_with_stand_in(module_name) if audio_only else importlib.import_module(module_name)
    thinker = getattr(module, class_name)
    body = {}
    if family == "qwen2_5_omni":
        body["load_weights"] = lambda self, weights: thinker.load_weights(self, _prefix_thinker(weights))
    ours = type(f"Ours{class_name}", (thinker,), body)
    if audio_only:
        factories = thinker._processor_factory  # what vLLM's register_processor decorator attached to the class

        class AudioOnlyInfo(factories.info):
            def get_hf_processor(self, **kwargs):
                return audio_only_processor(family, self.ctx.model_config.model, self.get_hf_config().vision_config)

        MULTIMODAL_REGISTRY.register_processor(
            factories.processor, info=AudioOnlyInfo, dummy_inputs=factories.dummy_inputs
        )(ours)
    ModelRegistry.register_model(arch, ours)


def first_expert_gates(named: Iterable[tuple[str, torch.Tensor]]) -> dict[int, torch.Tensor]:
    """Layer index -> the gate projection of its expert 0, from (checkpoint key, tensor) pairs being loaded."""
    return {int(m[1]): t for k, t in named if (m := FIRST_GATE.search(k))}


def repack_cpu_experts(model: torch.nn.Module, first_gates: dict[int, torch.Tensor]) -> int:
    """Repack the CPU experts that a reload left in checkpoint layout; returns how many layers were repacked.
    Runs inside vLLM's worker (`collective_rpc("apply_model", ...)`)."""
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts

    repacked = 0
    for name, module in model.named_modules():
        kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
        experts = getattr(kernel, "fused_experts", None)
        index = _LAYER_INDEX.search(name)
        if not isinstance(experts, CPUUnquantizedExperts) or index is None or int(index[1]) not in first_gates:
            continue
        sent = first_gates[int(index[1])]
        rows = module.w13_weight[0, : sent.shape[0]]
        if rows.shape == sent.shape and torch.equal(rows, sent.to(rows.dtype)):  # not repacked
            experts.process_weights_after_loading(module)
            repacked += 1
    return repacked
