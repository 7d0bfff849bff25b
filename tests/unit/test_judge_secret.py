"""`judge.api_key` is a secret: usable by the one place that sends it, shown nowhere else (the run's config.yaml,
the W&B config, reprs and logs, what a resume compares)."""

from __future__ import annotations

import logging
import sys
import types

from audio_thinker.app.train.loggers import WandbLogger
from audio_thinker.app.train.resume import flatten
from audio_thinker.core.presets import dump_config, load_config

KEY = "sk-judge-0123456789"


def test_the_key_is_usable_but_never_dumped_shown_or_logged(tmp_path, monkeypatch, caplog):
    config = load_config(None, [f"judge.api_key={KEY}", "judge.url=http://judge:8000"])
    assert config.judge.api_key_value() == KEY
    assert load_config().judge.api_key_value() is None
    logging.getLogger("test").warning("config: %s / %r", config, config.judge)
    assert KEY not in caplog.text and "**********" in caplog.text
    dump_config(config, tmp_path / "config.yaml")
    saved = (tmp_path / "config.yaml").read_text()
    assert KEY not in saved and "api_key" not in saved and "http://judge:8000" in saved
    assert load_config(tmp_path / "config.yaml", saved_run=True).judge.api_key is None  # the saved run reloads
    assert "judge.api_key" not in flatten(config)
    sent = {}
    fake = types.SimpleNamespace(init=lambda **kwargs: sent.update(kwargs) or types.SimpleNamespace())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    WandbLogger(config, tmp_path, resume=False)
    assert sent["config"]["judge"]["url"] == "http://judge:8000" and "api_key" not in sent["config"]["judge"]
