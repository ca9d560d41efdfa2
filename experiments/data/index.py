"""A lazy record index over a JSON list or a JSONL file: byte offsets in memory, one record parsed on access.

For a 1,000,000-entry JSONL file the index is two ``int64`` arrays and an ``int32`` array of line numbers
(20 bytes per entry), against the several hundred bytes per entry that ``json.load`` keeps as Python objects
(``python -m benchmarks.data`` measures both). JSONL lines are found with numpy over fixed-size chunks of the file;
a JSON list is scanned once element by element with ``json.JSONDecoder.raw_decode`` (each element is parsed, its
byte span kept, the object dropped). Records are read with ``os.pread`` on a descriptor opened lazily in each process,
so the index pickles to DataLoader workers as its arrays alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 1 << 26  # 64 MiB per scan step


class RecordError(ValueError):
    """A record that is not valid JSON (the message names the file and the line or index)."""


class RecordIndex:
    """Byte spans of the records of one ``.json`` (a list) or ``.jsonl`` file.

    Args:
        path: the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"Data file not found: {self.path}")
        self.jsonl = self.path.endswith(".jsonl")
        if self.jsonl:
            self.starts, self.ends, self.lines = _scan_jsonl(self.path)
        else:
            self.starts, self.ends = _scan_json_list(self.path)
            self.lines = None
        self._fd: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": None}

    def where(self, i: int) -> str:
        """Human-readable position of record ``i``: ``FILE line N`` (JSONL) or ``FILE index N`` (JSON)."""
        if self.lines is not None:
            return f"{self.path} line {int(self.lines[i])}"
        return f"{self.path} index {i}"

    def raw(self, i: int) -> bytes:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        start, end = int(self.starts[i]), int(self.ends[i])
        return os.pread(self._fd, end - start, start)

    def __getitem__(self, i: int) -> dict[str, Any]:
        raw = self.raw(i)
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise RecordError(f"Malformed JSON at {self.where(i)}: {err.msg} (column {err.colno})") from None
        if not isinstance(record, dict):
            raise RecordError(f"Record at {self.where(i)} is a {type(record).__name__}, not a JSON object")
        return record

    def nbytes(self) -> int:
        """Memory held by the index arrays."""
        return sum(a.nbytes for a in (self.starts, self.ends, self.lines) if a is not None)


def _scan_jsonl(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start/end offsets and 1-based line numbers of the non-blank lines."""
    newlines = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            chunk = np.frombuffer(f.read(CHUNK), dtype=np.uint8)
            newlines.append(np.flatnonzero(chunk == 10).astype(np.int64) + pos)
            pos += len(chunk)
    nl = np.concatenate(newlines) if newlines else np.zeros(0, np.int64)
    starts = np.concatenate([[0], nl + 1]).astype(np.int64)
    ends = np.concatenate([nl, [size]]).astype(np.int64)
    keep = ends - starts > 0
    lines = np.arange(1, len(starts) + 1, dtype=np.int32)
    starts, ends, lines = starts[keep], ends[keep], lines[keep]
    if len(starts):  # a blank line of just "\r" (CRLF files) is blank too
        with open(path, "rb") as f:
            short = np.flatnonzero(ends - starts <= 2)
            blank = [i for i in short if not _read(f, starts[i], ends[i]).strip()]
        if blank:
            mask = np.ones(len(starts), bool)
            mask[blank] = False
            starts, ends, lines = starts[mask], ends[mask], lines[mask]
    return starts, ends, lines


def _read(f: Any, start: int, end: int) -> bytes:
    f.seek(int(start))
    return f.read(int(end - start))


def _scan_json_list(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Byte spans of the elements of a top-level JSON list, scanned in chunks."""
    decoder = json.JSONDecoder()
    starts: list[int] = []
    ends: list[int] = []
    with open(path, "rb") as f:
        window = _Window(f)
        pos = window.skip_ws(0)
        if not window.text[pos : pos + 1] == "[":
            raise RecordError(f"{path} is not a JSON list (LLaVA JSON is a list of objects; use .jsonl for JSON lines)")
        pos += 1
        expect_value = True
        while True:
            pos = window.skip_ws(pos)
            if pos >= len(window.text):
                if not window.more(pos):
                    raise RecordError(f"{path}: the JSON list is not closed with ']'")
                pos = 0
                continue
            char = window.text[pos]
            if char == "]":
                return np.asarray(starts, np.int64), np.asarray(ends, np.int64)
            if not expect_value:
                if char != ",":
                    raise RecordError(f"Malformed JSON in {path} after element index {len(starts) - 1}: "
                                      f"expected ',' or ']', found {char!r}")
                pos, expect_value = pos + 1, True
                continue
            try:
                _, end = decoder.raw_decode(window.text, pos)
            except json.JSONDecodeError as err:
                if window.more(pos):  # the element may run past the window: read on and retry
                    pos = 0
                    continue
                raise RecordError(f"Malformed JSON in {path} at element index {len(starts)}: {err.msg}") from None
            starts.append(window.offset(pos))
            ends.append(window.offset(end))
            pos, expect_value = end, False


class _Window:
    """A decoded window of a file with byte offsets of character positions, computed incrementally."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.buf = f.read(CHUNK)
        self.base = 0
        self._set(self.buf)

    def _set(self, buf: bytes) -> None:
        self.buf = buf
        if buf.isascii():
            self.text, self.ascii = buf.decode("ascii"), True
        else:  # an incomplete UTF-8 sequence at the end waits for the next read
            self.text, self.ascii = buf.decode("utf-8", errors="ignore"), False
        self._char, self._byte = 0, 0

    def offset(self, pos: int) -> int:
        """File offset of character ``pos`` (positions are asked in increasing order)."""
        if self.ascii:
            return self.base + pos
        self._byte += len(self.text[self._char : pos].encode("utf-8"))
        self._char = pos
        return self.base + self._byte

    def more(self, keep_from: int) -> bool:
        """Drop the text before ``keep_from`` and append the next chunk; False at the end of the file."""
        extra = self.f.read(CHUNK)
        if not extra:
            return False
        consumed = self.offset(keep_from) - self.base
        self.base += consumed
        self._set(self.buf[consumed:] + extra)
        return True

    def skip_ws(self, pos: int) -> int:
        text = self.text
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos
