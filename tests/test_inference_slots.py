"""The slot KV cache (services/inference/slots.py) against plain tensors: what
a step appends, a trim drops, a widen adds on the left, a select keeps and a
put writes is exactly what concatenation and indexing would give."""

from __future__ import annotations

import pytest
import torch

from textft_services.inference.slots import SlotCache

pytestmark = pytest.mark.unit


def test_slot_layer_follows_concatenation_trim_widen_select_and_put() -> None:
    torch.manual_seed(0)
    cache = SlotCache()
    keys = torch.randn(3, 2, 5, 4)
    cache.update(keys, keys + 1, 0)
    layer = cache.slot_layers[0]
    for _ in range(70):  # past the first buffer's spare columns: it grows, contents kept
        column = torch.randn(3, 2, 1, 4)
        got_k, got_v = cache.update(column, column + 1, 0)
        keys = torch.cat([keys, column], dim=2)
        assert torch.equal(got_k, keys) and torch.equal(got_v, keys + 1)
    assert cache.get_seq_length() == keys.shape[2]
    layer.trim(9)
    keys = keys[:, :, 9:]
    assert torch.equal(layer.keys, keys)
    layer.widen(4)  # room on the left: the window's start moves back over old columns
    layer.widen(40)  # none left: new buffers
    assert layer.keys.shape[2] == keys.shape[2] + 44 and torch.equal(layer.keys[:, :, 44:], keys)
    keys = layer.keys.clone()
    layer.select(torch.tensor([2, 0]))
    assert torch.equal(layer.keys, keys[[2, 0]]) and torch.equal(layer.values[:, :, 44:], keys[[2, 0], :, 44:] + 1)
    new = torch.randn(1, 2, 6, 4)
    layer.put(torch.tensor([1]), new, new)
    assert torch.equal(layer.keys[1, :, -6:], new[0]) and torch.equal(layer.keys[0], keys[2])
    layer.add_slots(2)
    assert layer.keys.shape[0] == 4 and not layer.keys[2:].any()
    with pytest.raises(NotImplementedError):
        layer.crop(-1)
