"""`audio-thinker export`: any kept checkpoint of a run as a Hugging Face folder (both engines and
`audio-thinker eval` load it). The trained policy of a finished run is already in `<run>/final/`.

The checkpoint is DeepSpeed's sharded state, so the export loads it the way the run saved it: a trainer group
of the same size (the run's `trainer` config) on a local Ray instance, or the cluster of RAY_ADDRESS.
"""

from __future__ import annotations

import json
from pathlib import Path

import ray

from actors.trainer_group import PolicyTrainerGroup
from audio_thinker.app.errors import TrainingError
from audio_thinker.app.train.launch import connect_ray
from audio_thinker.core.log import get_logger
from audio_thinker.core.presets import load_config
from trainer.checkpoint import STATE_FILE, checkpoint_dir, list_checkpoints

log = get_logger(__name__)


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


def export_run(run_dir: Path, step: int | None = None, out: Path | None = None) -> Path:
    """Export the checkpoint of `step` (default the latest) to `out` (default <run>/final for the latest,
    <run>/export-step-N otherwise); returns the folder."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise TrainingError(f"{run_dir} is not a run directory (no config.yaml)")
    config = load_config(run_dir / "config.yaml", saved_run=True)
    folder = find_checkpoint(run_dir, step)
    state = json.loads((folder / STATE_FILE).read_text())
    out = Path(out) if out else run_dir / ("final" if step is None else f"export-step-{state['extra']['step']}")
    m = config.model
    trainer_cfg = config.trainer.model_copy(update={"num_ranks": state["world_size"]})
    owns_ray = connect_ray()
    trainer = None
    try:
        trainer = PolicyTrainerGroup(m.policy_path, m.family, trainer_cfg, config.run.total_steps, m.dtype).ready()
        trainer.load_checkpoint(folder)
        path = trainer.export(out)
    finally:
        if trainer is not None:
            trainer.shutdown()
        if owns_ray:
            ray.shutdown()
    log.info("exported %s to %s", folder, path)
    return path
