"""The table of row digests that duplicate detection remembers."""

from __future__ import annotations

from array import array

# The most distinct rows duplicate detection remembers (about 24 MB).
DUPLICATE_TRACK_LIMIT = 1_000_000


class DigestTable:
    """64-bit row digest -> first row number, in two flat arrays (open
    addressing, linear probing): 12-24 bytes per row where a dict of bytes
    needs over 100, so a million tracked rows cost about 24 MB. Row numbers
    are kept in 32 bits until one needs more."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        # array * n: zeroed without a temporary buffer of the same size.
        self._keys = array("Q", [0]) * capacity
        self._rows = array("I", [0]) * capacity
        self._mask = capacity - 1
        self._count = 0
        # first_or_add() takes its slow path (full, to grow, or a row number that
        # needs 64 bits) only past these two; one comparison each per row.
        self._room = min(capacity // 2, DUPLICATE_TRACK_LIMIT)
        self._max_row = 0xFFFF_FFFF

    def __len__(self) -> int:
        return self._count

    def get(self, key: int) -> int:
        """The row stored for key, or 0."""
        keys, i = self._keys, key & self._mask
        while True:
            found = keys[i]
            if found == key:
                return self._rows[i]
            if found == 0:
                return 0
            i = (i + 1) & self._mask

    def first_or_add(self, key: int, row: int) -> int:
        """get() and add() in one probe: the row stored for key; else 0 once
        row is stored, or -1 when the table already holds `limit` keys."""
        keys, mask = self._keys, self._mask
        i = key & mask
        while True:
            found = keys[i]
            if found == key:
                return self._rows[i]
            if not found:
                break
            i = (i + 1) & mask
        if self._count >= self._room or row > self._max_row:
            if self._count >= DUPLICATE_TRACK_LIMIT:
                return -1
            self.add(key, row)
            return 0
        keys[i] = key
        self._rows[i] = row
        self._count += 1
        return 0

    def add(self, key: int, row: int) -> None:
        """Stores a key that get() did not find."""
        if 2 * (self._count + 1) > len(self._keys):
            self._grow()
        if row > 0xFFFF_FFFF and self._rows.typecode != "Q":
            self._rows = array("Q", self._rows)
            self._max_row = 0xFFFF_FFFF_FFFF_FFFF
        keys, i = self._keys, key & self._mask
        while keys[i]:
            i = (i + 1) & self._mask
        keys[i] = key
        self._rows[i] = row
        self._count += 1

    def _grow(self) -> None:
        old_keys, old_rows = self._keys, self._rows
        capacity = 2 * len(old_keys)
        self._keys, self._rows, self._mask = (
            array("Q", [0]) * capacity,
            array(old_rows.typecode, [0]) * capacity,
            capacity - 1,
        )
        self._room = min(capacity // 2, DUPLICATE_TRACK_LIMIT)
        keys, rows, mask = self._keys, self._rows, self._mask
        for k, r in zip(old_keys, old_rows, strict=True):
            if k:
                i = k & mask
                while keys[i]:
                    i = (i + 1) & mask
                keys[i], rows[i] = k, r
