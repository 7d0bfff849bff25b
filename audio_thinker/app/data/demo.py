"""The CPU demo's inputs: the tiny models and the synthetic set, built when the config asks for them and they
are missing (`model.make_tiny_if_missing`, `data.make_synthetic_if_missing`: the built-in default run).

An explicit step: `audio-thinker train` and `sft` call `prepare_demo` before the run starts; the training code
itself (`app/train/`) reads models and data from disk and never builds them.
"""

from __future__ import annotations

from pathlib import Path

from audio_thinker.app.data.options import TINY_MODELS
from audio_thinker.app.data.synthetic import write_synthetic_cot, write_synthetic_dataset
from audio_thinker.app.data.tiny import ensure_tiny_models, read_provenance, stale_layout
from audio_thinker.app.errors import TrainingError
from audio_thinker.core.config import Config
from audio_thinker.core.data import COT_SPLIT_SUFFIX
from audio_thinker.core.log import get_logger

log = get_logger(__name__)


def synthetic_splits(config: Config, with_eval: bool = True) -> list[tuple[str, int, bool]]:
    """The synthetic splits (name, size, with a rationale per row) to write, after checking every manifest path.

    Synthetic data is written only where it belongs (`data.audio_root/<split>.jsonl`; for sft.target=cot the
    training split with a rationale per row, `<split>_cot.jsonl`) and only when that file is missing; any other
    missing manifest is an error naming the key and the path, raised before anything is written or loaded (a typo
    in a path must never overwrite a data set).
    """
    d = config.data
    root = Path(d.audio_root)
    todo = []
    manifests = [("data.train_manifest", d.train_manifest, d.synthetic_train_size, "train")]
    if with_eval:
        manifests.append(("data.eval_manifest", d.eval_manifest, d.synthetic_eval_size, "eval"))
    for key, manifest, size, split in manifests:
        if not manifest or Path(manifest).is_file():
            continue
        cot = key == "data.train_manifest" and config.sft.target == "cot"
        target = root / f"{split}{COT_SPLIT_SUFFIX if cot else ''}.jsonl"
        if not d.make_synthetic_if_missing:
            raise TrainingError(f"{key}={manifest}: no such file (data.make_synthetic_if_missing=false)")
        if Path(manifest).resolve() != target.resolve():
            raise TrainingError(
                f"{key}={manifest}: no such file; synthetic data is only written to {target} "
                "(data.audio_root/<split>.jsonl, <split>_cot.jsonl for sft.target=cot), so check the path"
            )
        todo.append((split, size, cot))
    return todo


def prepare_models(config: Config) -> None:
    """Build the tiny models where the config allows it and the folders are missing or an older checkout wrote them
    (the CPU default), with `model.tiny_warmup_steps` of format warm-up; warn when an existing tiny policy was built
    with another."""
    m = config.model
    missing = [
        Path(p) for p in (m.policy_path, m.judge_path) if not (Path(p) / "config.json").is_file() or stale_layout(p)
    ]
    if missing and m.make_tiny_if_missing:
        for folder in sorted({p.parent for p in missing}):
            # the models the config names (a tiny model's folder is its name), else every tiny model
            names = tuple(p.name for p in missing if p.parent == folder and p.name in TINY_MODELS) or TINY_MODELS
            ensure_tiny_models(folder, seed=config.run.seed, warmup_steps=m.tiny_warmup_steps, names=names)
    built = read_provenance(m.policy_path)
    if built is not None and built["warmup_steps"] != m.tiny_warmup_steps:
        log.warning(
            "tiny policy %s was built with %d format warm-up steps, model.tiny_warmup_steps=%d: using it as is "
            "(rebuild: audio-thinker make-tiny --out %s --warmup-steps %d --overwrite)",
            m.policy_path,
            built["warmup_steps"],
            m.tiny_warmup_steps,
            Path(m.policy_path).parent,
            m.tiny_warmup_steps,
        )


def prepare_demo(config: Config, with_eval: bool = True) -> None:
    """Every manifest path checked, then the missing tiny models and synthetic splits written (SFT: no held-out
    split, `with_eval=False`)."""
    splits = synthetic_splits(config, with_eval)
    prepare_models(config)
    root = Path(config.data.audio_root)
    for split, size, cot in splits:
        if not (root / f"{split}.jsonl").is_file():
            log.info("writing the synthetic %s split (%d questions) to %s", split, size, root)
            write_synthetic_dataset(root, n=size, seed=config.run.seed, split=split)
        if cot:
            log.info("writing the synthetic %s split with rationales to %s", split, root)
            write_synthetic_cot(root, split, config.sft.rationale_field)
