"""An actor's CPU threads follow its Ray CPU share."""

from __future__ import annotations

import os

import pytest
import torch

from audio_thinker.core.threads import cpu_threads, use_cpu_share


def test_cpu_threads_are_the_whole_cpus_of_the_share():
    assert [cpu_threads(c) for c in (0.25, 0.5, 1, 1.5, 2, 7.9)] == [1, 1, 1, 1, 2, 7]
    with pytest.raises(ValueError, match="CPU share must be > 0"):
        cpu_threads(0)


def test_use_cpu_share_sets_torch_and_openmp(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    try:
        assert use_cpu_share(2.0) == 2
        assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    finally:
        torch.set_num_threads(before)
