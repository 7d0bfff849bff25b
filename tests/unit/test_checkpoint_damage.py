"""A checkpoint damaged after it was written (a truncated or missing file) is skipped, never loaded."""

from __future__ import annotations

import json
import logging

from trainer.checkpoint import STATE_FILE, checkpoint_dir, file_sizes, latest_checkpoint, list_checkpoints


def fake_checkpoint(root, step: int):
    """The layout save_checkpoint writes: shards, RNG states, then the state file listing their sizes."""
    folder = checkpoint_dir(root, step)
    (folder / "deepspeed").mkdir(parents=True)
    (folder / "rng").mkdir()
    (folder / "deepspeed" / "model_states.pt").write_bytes(b"w" * (100 + step))
    (folder / "rng" / "rank-0.json").write_text("{}")
    (folder / STATE_FILE).write_text(json.dumps({"step": step, "files": file_sizes(folder)}))
    return folder


def test_a_truncated_or_missing_file_makes_the_previous_checkpoint_the_resume_point(tmp_path, caplog):
    one, two, three = (fake_checkpoint(tmp_path, s) for s in (1, 2, 3))
    assert json.loads((three / STATE_FILE).read_text())["files"] == {
        "deepspeed/model_states.pt": 103, "rng/rank-0.json": 2,
    }
    assert latest_checkpoint(tmp_path) == three
    (three / "deepspeed" / "model_states.pt").write_bytes(b"w" * 10)  # cut short after the rename
    (two / "rng" / "rank-0.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert list_checkpoints(tmp_path) == [one]
    assert "model_states.pt has 10 bytes, 103 were written" in caplog.text
    assert "rng/rank-0.json is missing" in caplog.text
    (one / STATE_FILE).write_text("{not json")
    assert latest_checkpoint(tmp_path) is None


def test_a_checkpoint_without_sizes_still_loads(tmp_path):
    folder = fake_checkpoint(tmp_path, 4)
    (folder / STATE_FILE).write_text(json.dumps({"step": 4}))  # written before sizes were recorded
    assert latest_checkpoint(tmp_path) == folder
