"""The weight checksum both sides of a sync compute."""

import torch

from audio_thinker.core.weights import state_checksum


def test_order_and_layout_do_not_matter():
    a = {"x": torch.randn(3, 4), "y": torch.arange(5)}
    assert state_checksum(a) == state_checksum(list(reversed(list(a.items()))))
    assert state_checksum({"x": a["x"].t().contiguous().t()}) == state_checksum({"x": a["x"]})


def test_names_values_dtypes_and_shapes_matter():
    x = torch.randn(2, 3)
    base = state_checksum({"x": x})
    assert state_checksum({"z": x}) != base
    assert state_checksum({"x": x + 1e-6}) != base
    assert state_checksum({"x": x.double()}) != base
    assert state_checksum({"x": x.reshape(3, 2)}) != base


def test_scalars_and_empty_tensors():
    assert state_checksum({"s": torch.tensor(1.5)}) != state_checksum({"s": torch.tensor(2.5)})
    assert state_checksum({"e": torch.zeros(0)}) != state_checksum({"e": torch.zeros(0, 2)})
