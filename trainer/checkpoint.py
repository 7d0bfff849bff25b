"""Training checkpoints (resume after preemption) and the Hugging Face export the engines load.

A checkpoint is a folder `<root>/step-<step>/` holding
- `deepspeed/`: DeepSpeed's state (weights, AdamW moments, lr scheduler, global step), one shard per rank;
- `rng/rank-<r>.json`: the python, numpy and torch (and CUDA) RNG states of each rank;
- `trainer_state.json`: step, world size, family and the caller's `extra` (e.g. the data position).
It is written into `<root>/.tmp-step-<step>/` and renamed when complete, so a folder named `step-*` is
always whole; a crash mid-save leaves only a temp folder that the next save replaces. `trainer_state.json`
also lists every file's size: a checkpoint damaged later (a truncated or missing file) is skipped with a
warning, never loaded, and the one before it is the resume point. All ranks call
`save_checkpoint` / `load_checkpoint` / `export_hf` together (they are collective); on several nodes the
root must be a shared file system. `export_offline` writes the same Hugging Face folder from a checkpoint alone,
in one CPU process (`audio-thinker export`: no Ray, no trainer, no GPU).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from audio_thinker.core.trainer_config import LoraConfig
from audio_thinker.core.chat import FULL_OMNI_TYPES
from audio_thinker.core.families import checkpoint_items, model_class
from audio_thinker.core.log import get_logger
from audio_thinker.core.models import DTYPES, load_policy
from trainer.engine import DS_TAG, PolicyEngine
from trainer.lora import merged_checkpoint

log = get_logger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"
MODULE_PREFIX = "policy."  # DeepSpeed wraps `CompletionLogprobs(policy)`: its parameter names start so
# Files of a model folder that are not weights: tokenizer, processor / feature extractor, chat template, ...
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def capture_rng() -> dict:
    """JSON-able RNG states of python, numpy, torch (and every CUDA device)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def file_sizes(folder: Path) -> dict[str, int]:
    """Every file under `folder` (but the state file) -> its size in bytes."""
    return {
        str(f.relative_to(folder)): f.stat().st_size
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.name != STATE_FILE
    }


def damage(folder: Path) -> str | None:
    """Why a `step-*` folder cannot be loaded (None: it is whole)."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        return f"{STATE_FILE} unreadable ({exc})"
    for name, size in state.get("files", {}).items():  # absent in checkpoints of older versions
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Whole checkpoints under root, oldest first; a damaged one is left out with a warning."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if (m := STEP_DIR.match(p.name)) and (p / STATE_FILE).exists():
            reason = damage(p)
            if reason is None:
                found.append((int(m.group(1)), p))
            else:
                log.warning("checkpoint %s is damaged (%s): skipped, never loaded", p, reason)
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(engine: PolicyEngine, root: str | Path, extra: dict | None = None, keep: int = 2) -> Path:
    """Save the full training state at the engine's current step, atomically; keep the newest `keep`."""
    extra = extra or {}
    try:
        json.dumps(extra)
    except TypeError as exc:
        raise ValueError(f"checkpoint extra must be JSON-serialisable: {exc}") from None
    final = checkpoint_dir(root, engine.step)
    tmp = final.parent / f".tmp-{final.name}"
    if engine.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    _barrier()
    engine.save_state(tmp, client_state={})
    (tmp / "rng" / f"rank-{engine.rank}.json").write_text(json.dumps(capture_rng()))
    _barrier()
    if engine.rank == 0:
        state = {
            "step": engine.step,
            "world_size": engine.world_size,
            "family": engine.family,
            "model_path": str(engine.model_path),
            "saved_at": time.time(),
            "extra": extra,
            "files": file_sizes(tmp),
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        if final.exists():  # the same step saved again (e.g. after a resume): replace it
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old)
        log.info("checkpoint %s saved", final)
    _barrier()
    return final


def load_checkpoint(engine: PolicyEngine, folder: str | Path) -> dict:
    """Restore a checkpoint written by `save_checkpoint` with the same number of ranks; returns its
    trainer_state (step, extra, ...)."""
    folder = Path(folder)
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{folder} is not a complete checkpoint (no {STATE_FILE})")
    state = json.loads(state_file.read_text())
    if state["world_size"] != engine.world_size:
        raise ValueError(
            f"{folder} was saved by {state['world_size']} trainer ranks, this group has {engine.world_size}; "
            "resume with the same trainer.num_ranks"
        )
    if state["family"] != engine.family:
        raise ValueError(f"{folder} holds a {state['family']} policy, the engine is {engine.family}")
    engine.load_state(folder)
    restore_rng(json.loads((folder / "rng" / f"rank-{engine.rank}.json").read_text()))
    if engine.step != state["step"]:
        raise RuntimeError(f"{folder}: DeepSpeed restored step {engine.step}, trainer_state says {state['step']}")
    return state


def _write_folder(out: Path, model_path: Path, config, tensors: dict[str, torch.Tensor]) -> Path:
    """The Hugging Face folder: every non-weight file of `model_path`, `config` and the tensors; written to a
    temp folder and renamed over `out`."""
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for src in sorted(model_path.iterdir()):
        if src.is_file() and src.name != "config.json" and not src.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(src, tmp / src.name)
    config.save_pretrained(tmp)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def export_hf(engine: PolicyEngine, out: str | Path) -> Path:
    """Write a Hugging Face folder of the current policy: safetensors under checkpoint keys (the hub layout both
    `load_policy` and vLLM read), config, and every non-weight file of the source folder (generation config,
    tokenizer, processor / feature extractor, chat template). Atomic like checkpoints; collective."""
    out = Path(out)
    tensors = {}
    for name, tensor in engine.checkpoint_tensors():  # every rank iterates: ZeRO-3 gathers are collective
        if engine.rank == 0:
            tensors[name] = tensor.detach().to("cpu", copy=True).contiguous()
    if engine.rank == 0:
        _write_folder(out, engine.model_path, engine.policy.config, tensors)
        log.info("exported %s policy (%d tensors) to %s", engine.family, len(tensors), out)
    _barrier()
    return out


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors of which no two share memory (tied weights are two keys of one tensor; safetensors
    writes each key's own copy, as `export_hf` does)."""
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        value = value.detach().contiguous()
        if value.data_ptr() in seen:
            value = value.clone()
        seen.add(value.data_ptr())
        out[key] = value
    return out


def _policy_config(model_path: Path, family: str, dtype: str):
    """The transformers config the trainer's policy has (a full Omni checkpoint: its thinker's), in `dtype`."""
    model_type = json.loads((model_path / "config.json").read_text()).get("model_type")
    config = model_class(family, model_type).config_class.from_pretrained(model_path)
    config = config.thinker_config if model_type in FULL_OMNI_TYPES else config
    for part in [config, *(getattr(config, name) for name in config.sub_configs)]:
        part.dtype = DTYPES[dtype]
    return config


def export_offline(
    folder: str | Path, out: str | Path, model_path: str | Path, family: str, dtype: str, lora: LoraConfig | None
) -> Path:
    """`export_hf`'s folder from a checkpoint alone, in this process on the CPU: DeepSpeed's shards (ZeRO-2 or 3,
    any number of ranks) consolidated by its zero_to_fp32 and cast to the run's `dtype`, as the trainer's own
    weights are. A LoRA checkpoint holds only what trained: the base policy is loaded from `model_path` and
    each adapter merged into its layer (W + alpha / r B A), as `merged_entries` does in the trainer."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # DeepSpeed: only here

    folder, out, model_path = Path(folder), Path(out), Path(model_path)
    with contextlib.redirect_stdout(io.StringIO()) as said:  # its progress prints would mix with a command's output
        consolidated = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=DS_TAG)
    log.debug("zero_to_fp32: %s", said.getvalue())
    target = DTYPES[dtype]
    trained = {
        k.removeprefix(MODULE_PREFIX): v.to(target) if v.is_floating_point() else v for k, v in consolidated.items()
    }
    if lora is None:
        tensors = {key: t for k, v in trained.items() for key, t in checkpoint_items(family, k, v)}
    else:  # the adapters merged into the base as the trainer merges them (Qwen3-Omni's experts included)
        tensors = merged_checkpoint(load_policy(model_path, family, dtype), family, lora, trained)
    _write_folder(out, model_path, _policy_config(model_path, family, dtype), _unshared(tensors))
    log.info("exported %s (%d tensors) to %s, offline", folder, len(tensors), out)
    return out
