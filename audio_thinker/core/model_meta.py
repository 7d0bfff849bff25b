"""Model shapes that need transformers: a Hugging Face folder's shape with its parameters counted on the meta
device (no weights read, no memory), and a known shape's transformers config (`bench/gpu_check.py` builds it with
random weights). The planner imports this only for a model folder that is on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from transformers.initialization import no_init_weights

from audio_thinker.core.chat import FULL_OMNI_TYPES, MODEL_TYPES
from audio_thinker.core.families import model_class
from audio_thinker.core.model_shapes import KNOWN_SHAPES, ModelShape, shape_of


def known_config(name: str) -> transformers.PretrainedConfig:
    """The transformers config of a known shape (to build the model with random weights)."""
    cls_name, kwargs, _ = KNOWN_SHAPES[name]
    return getattr(transformers, cls_name)(**kwargs)


def count_params(model: torch.nn.Module) -> tuple[int, int, int]:
    """(all parameters, audio encoder parameters, the largest module's own parameters)."""
    total = sum(p.numel() for p in model.parameters())
    towers = [m for name, m in model.named_modules() if name.split(".")[-1] == "audio_tower"]
    audio_params = sum(p.numel() for p in towers[0].parameters()) if towers else 0
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, audio_params, largest


def folder_shape(path: str | Path) -> ModelShape:
    """The shape of a Hugging Face folder: its config.json, parameters counted on the meta device (no weights read)."""
    path = Path(path)
    raw = json.loads((path / "config.json").read_text())
    model_type = raw.get("model_type")
    config = transformers.AutoConfig.from_pretrained(path)
    if model_type in MODEL_TYPES:
        if model_type in FULL_OMNI_TYPES:
            config = config.thinker_config  # we train the thinker
        cls = model_class(MODEL_TYPES[model_type])
    else:
        cls = transformers.AutoModelForCausalLM
    with torch.device("meta"), no_init_weights():  # shapes only: no memory, no initialisation
        model = cls.from_config(config) if cls is transformers.AutoModelForCausalLM else cls(config)
    return shape_of(path.name, str(path / "config.json"), config, count_params(model))
