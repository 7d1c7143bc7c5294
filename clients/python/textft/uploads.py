"""Progress of a dataset upload, as the client sends it: bytes, and rows
counted on the way (what a CSV reader would count for RFC 4180 quoting; the
server's validation decides the final numbers)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UploadProgress:
    bytes_sent: int
    total_bytes: int  # 0 when the size is unknown (a stream)
    rows_sent: int  # data rows in the bytes sent so far (header excluded)

    @property
    def fraction(self) -> float | None:
        return self.bytes_sent / self.total_bytes if self.total_bytes else None


class RowCounter:
    """Counts the data rows of CSV/TSV/JSONL bytes fed chunk by chunk: line ends
    outside double-quoted fields for CSV/TSV (a quoted field may span lines,
    "" escapes a quote), line ends for JSONL; a last line without one counts."""

    def __init__(self, delimited: bool) -> None:
        self.delimited = delimited
        self._line_ends = 0
        self._quoted = False  # inside a quoted field at the end of the last chunk
        self._open_line = False  # bytes after the last counted line end

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self.delimited and (self._quoted or b'"' in chunk):
            parts = chunk.split(b'"')  # alternately outside and inside quotes
            outside = parts[1::2] if self._quoted else parts[0::2]
            self._line_ends += sum(part.count(b"\n") for part in outside)
            if len(parts) % 2 == 0:
                self._quoted = not self._quoted
        else:
            self._line_ends += chunk.count(b"\n")
        self._open_line = self._quoted or not chunk.endswith(b"\n")

    @property
    def rows(self) -> int:
        records = self._line_ends + int(self._open_line)
        return max(0, records - 1) if self.delimited else records  # CSV/TSV: minus the header
