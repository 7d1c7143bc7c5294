"""The running batch's KV cache as fixed row slots with room to grow, so a
decoding step neither copies the cache nor reshapes the batch.

transformers' DynamicLayer appends every step's keys and values with
torch.cat, which copies the whole cache once per layer per step, and TGI's
filter (index-select the rows left) copies it again whenever a row finishes:
measured on the bench's batch of 32, a quarter of a decoding step. Here each
layer keeps its keys and values in a buffer with spare columns on the right
and exposes the window in use as a view:

- a step writes its column in place (the buffer grows, by half its width,
  only when the spare columns run out);
- a finished row's slot stays in the batch, masked, until a new row is
  written into it (only that row's columns are copied) or until enough slots
  are free that the batch is compacted in one index-select;
- left columns no row uses any more are dropped by moving the window's start.

Rows are right-aligned as before: every row's tokens end at the window's last
column, and the attention mask hides the columns a row does not use.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

MIN_SPARE = 16  # columns allocated beyond the window when a buffer grows


class SlotLayer(DynamicLayer):
    """One layer's keys and values: buffers [slots, heads, capacity, dim], the window [lo, hi)."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.kbuf: torch.Tensor | None = None
        self.vbuf: torch.Tensor | None = None
        self.lo = self.hi = 0
        self.keys = key_states[:, :, :0]
        self.values = value_states[:, :, :0]
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self.kbuf is None or self.hi + n > self.kbuf.shape[2]:
            self._reallocate(self.hi - self.lo + n, key_states)
        assert self.kbuf is not None and self.vbuf is not None
        self.kbuf[:, :, self.hi : self.hi + n] = key_states
        self.vbuf[:, :, self.hi : self.hi + n] = value_states
        self.hi += n
        self._view()
        return self.keys, self.values

    def _reallocate(self, needed: int, like: torch.Tensor, left: int = 0) -> None:
        """New buffers holding the window at `left`, with room for `needed` columns and spare ones."""
        capacity = left + needed + max(MIN_SPARE, needed // 2)
        rows, heads, _, dim = like.shape
        # Zeros, not empty: a masked column still meets a zero attention weight, and 0 * NaN is NaN.
        kbuf = like.new_zeros((rows, heads, capacity, dim))
        vbuf = like.new_zeros((rows, heads, capacity, dim))
        width = self.hi - self.lo
        if self.kbuf is not None and width:
            kbuf[:, :, left : left + width] = self.kbuf[:, :, self.lo : self.hi]
            vbuf[:, :, left : left + width] = self.vbuf[:, :, self.lo : self.hi]  # type: ignore[index]
        self.kbuf, self.vbuf, self.lo, self.hi = kbuf, vbuf, left, left + width

    def _view(self) -> None:
        assert self.kbuf is not None and self.vbuf is not None
        self.keys = self.kbuf[:, :, self.lo : self.hi]
        self.values = self.vbuf[:, :, self.lo : self.hi]

    # DynamicLayer's edits of `keys`/`values` (assisted decoding, beam search) would
    # leave the buffers behind the view: refused rather than silently wrong.
    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("SlotLayer: crop is not supported (continuous batching only)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("SlotLayer: batch_repeat_interleave is not supported")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("SlotLayer: use select()")

    # ---- what the running batch does between steps ----
    def trim(self, columns: int) -> None:
        """Drops the window's `columns` leftmost columns (no copy)."""
        self.lo += columns
        self._view()

    def widen(self, columns: int) -> None:
        """Adds `columns` columns on the window's left; their contents are
        stale or unset, so the caller masks them out."""
        assert self.kbuf is not None
        if self.lo >= columns:
            self.lo -= columns
        else:
            self._reallocate(self.hi - self.lo, self.kbuf, left=columns)
            self.lo -= columns
        self._view()

    def select(self, index: torch.Tensor) -> None:
        """Keeps the slots `index`, in that order (one copy)."""
        assert self.kbuf is not None and self.vbuf is not None
        self.kbuf, self.vbuf = self.kbuf[index], self.vbuf[index]
        self._view()

    def put(self, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Writes rows (keys/values [n, heads, width, dim], right-aligned, width
        at most the window's) into `slots`, ending at the window's last column."""
        assert self.kbuf is not None and self.vbuf is not None
        width = keys.shape[2]
        self.kbuf[slots, :, self.hi - width : self.hi] = keys
        self.vbuf[slots, :, self.hi - width : self.hi] = values

    def add_slots(self, count: int) -> None:
        """`count` new slots at the end (one copy of the buffers)."""
        assert self.kbuf is not None and self.vbuf is not None
        shape = (count, *self.kbuf.shape[1:])
        self.kbuf = torch.cat([self.kbuf, self.kbuf.new_zeros(shape)])
        self.vbuf = torch.cat([self.vbuf, self.vbuf.new_zeros(shape)])
        self._view()


class SlotCache(DynamicCache):
    """A DynamicCache (what the models expect) made of SlotLayers."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=SlotLayer)

    @property
    def slot_layers(self) -> list[SlotLayer]:
        return self.layers  # type: ignore[return-value]
