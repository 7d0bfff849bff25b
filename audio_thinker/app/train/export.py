"""`audio-thinker export`: any kept checkpoint of a run as a Hugging Face folder (both engines and
`audio-thinker eval` load it). The trained policy of a finished run is already in `<run>/final/`.

Offline: DeepSpeed's sharded state is consolidated on the CPU of this machine (trainer/checkpoint.py,
`export_offline`), whatever the number of ranks that wrote it; no Ray, trainer group or GPU starts. The run's
saved config names the policy's family, dtype and LoRA settings, and, for a LoRA run, the base model folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from audio_thinker.app.errors import TrainingError
from audio_thinker.app.train.run_dir import CONFIG_FILE
from audio_thinker.core.presets import load_config
from trainer.checkpoint import STATE_FILE, checkpoint_dir, export_offline, list_checkpoints


def find_checkpoint(run_dir: Path, step: int | None) -> Path:
    """The run's checkpoint of `step` (default the latest); the error lists the steps that are kept."""
    root = run_dir / "checkpoints"
    kept = list_checkpoints(root)
    folder = (kept[-1] if kept else None) if step is None else checkpoint_dir(root, step)
    if folder is None or not (folder / STATE_FILE).is_file():
        steps = ", ".join(p.name for p in kept) or "none"
        wanted = "a checkpoint" if step is None else f"step {step}"
        raise TrainingError(f"{run_dir}: no complete checkpoint for {wanted} (kept: {steps})")
    return folder


def export_run(run_dir: Path, step: int | None = None, out: Path | None = None, overwrite: bool = False) -> Path:
    """Export the checkpoint of `step` (default the latest) to `out` (default <run>/final for the latest,
    <run>/export-step-N otherwise); an existing `out` is replaced only with `overwrite`. Returns the folder."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise TrainingError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    config = load_config(run_dir / CONFIG_FILE, saved_run=True)
    folder = find_checkpoint(run_dir, step)
    state = json.loads((folder / STATE_FILE).read_text())
    out = Path(out) if out else run_dir / ("final" if step is None else f"export-step-{state['extra']['step']}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass --overwrite to replace it, or --out DIR)")
    m = config.model
    model_path = Path(state.get("model_path") or m.policy_path)
    if not (model_path / "config.json").is_file():
        raise TrainingError(
            f"{folder}: the policy folder it was trained from, {model_path}, is gone (its config, tokenizer and "
            "processor files go into the export)"
        )
    return export_offline(folder, out, model_path, m.family, m.dtype, config.trainer.lora)
