"""Training and evaluation read their clips from roots of their own: `data.audio_root` for the training set,
`data.eval_audio_root` (default: data.audio_root) for the held-out split, so a benchmark kept apart from the
training data (the 7B presets' MMAU under /data/mmau) is found after `data.audio_root` moves to AVQA's folder."""

from __future__ import annotations

import pytest

from audio_thinker.app.data.synthetic import write_synthetic_dataset
from audio_thinker.app.train.launch import prepare_data
from audio_thinker.core.manifests import DataError
from audio_thinker.core.presets import load_config


def test_the_held_out_split_reads_its_clips_under_its_own_root(tmp_path):
    train_root, eval_root = tmp_path / "avqa", tmp_path / "mmau"
    write_synthetic_dataset(train_root, n=3, split="train")
    write_synthetic_dataset(eval_root, n=2, split="eval")
    base = [
        f"data.train_manifest={train_root / 'train.jsonl'}",
        f"data.eval_manifest={eval_root / 'eval.jsonl'}",
        f"data.audio_root={train_root}",
    ]
    with pytest.raises(DataError, match="audio file not found"):  # one root for both: the clips are elsewhere
        prepare_data(load_config(None, base))
    train, held_out = prepare_data(load_config(None, [*base, f"data.eval_audio_root={eval_root}"]))
    assert len(train) == 3 and len(held_out) == 2
    assert all(q.audio_path.is_relative_to(train_root) for q in train)
    assert all(q.audio_path.is_relative_to(eval_root) for q in held_out)


def test_the_presets_keep_the_benchmark_root_when_the_training_root_moves():
    """README's AVQA example: the training data moves to /data/avqa, MMAU stays where its json says."""
    config = load_config("qwen2-audio-7b", ["data.train_manifest=/data/avqa/train.jsonl", "data.audio_root=/data/avqa"])
    assert (config.data.audio_root, config.data.held_out_audio_root) == ("/data/avqa", "/data/mmau")
    assert load_config().data.held_out_audio_root == load_config().data.audio_root == "artifacts/synthetic"
