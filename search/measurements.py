"""Measurement files: one CSV row per network whose latency was measured on a device.

Columns (header on line 1, any order):

- ``arch_id``     any non-blank string, unique in the file;
- the space's encoding column (``space.encoding``: ``ops`` for fbnet, ``arch`` for mobilenetv2),
  holding ``space.encode(candidate)``;
- ``latency_ms``  a positive, finite decimal number;
- ``iqr_ms``      optional column: a non-negative, finite decimal number, or empty;
- ``runs``        optional column: a positive whole number, or empty.

Any other column is an error. For ``space=fbnet`` this is exactly the format of the shipped
Samsung A50 file (``arch_id,ops,latency_ms``). ``read`` checks everything and stops at the first
problem with a one-line ``MeasurementError`` "FILE:LINE: column COLUMN: what is wrong" (lines are
1-based, the header is line 1). ``write`` checks the rows the same way and replaces the file
atomically. Nothing here evaluates file contents: numbers are matched by a plain decimal pattern.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import numbers
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import spaces
from spaces.candidate import Candidate

from .errors import UserError

ARCH_ID, LATENCY, IQR, RUNS = "arch_id", "latency_ms", "iqr_ms", "runs"
OPTIONAL = (IQR, RUNS)
DIGEST_VERSION = "measurements/v1"

# Plain decimal notation only: no nan/inf, no underscores, no hex, no non-ASCII digits.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WHOLE = re.compile(r"\+?[0-9]+")


class MeasurementError(UserError):
    """A measurement file (or a row about to be written to one) is wrong. One line:
    "FILE:LINE: column COLUMN: what is wrong"; LINE and COLUMN are left out where they do not
    apply (a file that cannot be opened, a row with a broken CSV quote)."""

    def __init__(self, path: str | Path, line: int | None, column: str | None, problem: str):
        self.path, self.line, self.column = str(path), line, column
        self.problem = " ".join(problem.split())  # one line, whatever the space's message was
        where = self.path + (f":{line}" if line is not None else "")
        super().__init__(f"{where}: " + (f"column {column}: " if column else "") + self.problem)


@dataclass(frozen=True)
class Measurement:
    arch_id: str
    candidate: Candidate
    latency_ms: float
    iqr_ms: float | None = None
    runs: int | None = None


def columns(space: spaces.Space) -> tuple[str, ...]:
    """Every column a measurement file of `space` may have, required ones first."""
    return (ARCH_ID, space.encoding, LATENCY, *OPTIONAL)


# --- reading ---------------------------------------------------------------------------------------


def read(path: str | Path, space: spaces.Space) -> list[Measurement]:
    """Every row of the file as a Measurement, in file order. Raises MeasurementError at the first
    problem: unreadable file, header, field count, or any cell."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MeasurementError(path, None, None, f"cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MeasurementError(path, data[: e.start].count(b"\n") + 1, None,
                               f"not UTF-8 text (byte {data[e.start]:#04x})") from None

    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    required, allowed = columns(space)[:3], columns(space)
    header: list[str] | None = None
    rows: list[Measurement] = []
    first_line: dict[str, int] = {}
    end = 0  # physical line the previous record ended on
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise MeasurementError(path, reader.line_num or 1, None, f"malformed CSV: {e}") from None
        line, end = end + 1, reader.line_num
        if not record:
            continue  # a blank line
        if header is None:
            header = _header(path, line, record, space, required, allowed)
            continue
        rows.append(_row(path, line, header, record, space, first_line))
    if header is None:
        raise MeasurementError(path, 1, None, f"empty file: expected the header {','.join(required)}"
                               f" (optionally {','.join(OPTIONAL)})")
    if not rows:
        raise MeasurementError(path, 2, None, "no measurements: the file has a header only")
    return rows


def _header(path: Path, line: int, record: list[str], space: spaces.Space, required, allowed) -> list[str]:
    names = [name.strip() for name in record]
    seen: set[str] = set()
    for i, name in enumerate(names, 1):
        if not name:
            raise MeasurementError(path, line, f"#{i}", "empty column name")
        if name in seen:
            raise MeasurementError(path, line, name, "appears twice in the header")
        seen.add(name)
        if name not in allowed:
            hint = f" (space {space.name} keeps its encoding in column {space.encoding!r})" \
                if name in ("ops", "arch") else ""
            raise MeasurementError(path, line, name, f"unknown column{hint}; allowed: {', '.join(allowed)}")
    for name in required:
        if name not in seen:
            raise MeasurementError(path, line, name, f"missing from the header (it has: {', '.join(names)})")
    return names


def _row(path: Path, line: int, header: list[str], record: list[str], space: spaces.Space,
         first_line: dict[str, int]) -> Measurement:
    if len(record) < len(header):
        raise MeasurementError(path, line, header[len(record)],
                               f"missing: the row has {len(record)} fields, the header {len(header)}")
    if len(record) > len(header):
        raise MeasurementError(path, line, f"#{len(header) + 1}",
                               f"extra field {_show(record[len(header)])}: the header has {len(header)} columns")
    values: dict[str, Any] = {}
    for name, cell in zip(header, record):
        if name == ARCH_ID:
            if not cell.strip():
                raise MeasurementError(path, line, name, "empty")
            if cell in first_line:
                raise MeasurementError(path, line, name, f"duplicate {_show(cell)} (first on line {first_line[cell]})")
            first_line[cell] = line
            values["arch_id"] = cell
        elif name == space.encoding:
            values["candidate"] = _decode(space, cell, lambda p: MeasurementError(path, line, name, p))
        elif name == LATENCY:
            values["latency_ms"] = _number(cell, lambda p: MeasurementError(path, line, name, p), positive=True)
        elif name == IQR:
            values["iqr_ms"] = None if not cell.strip() else \
                _number(cell, lambda p: MeasurementError(path, line, name, p), positive=False)
        elif name == RUNS:
            values["runs"] = None if not cell.strip() else \
                _whole(cell, lambda p: MeasurementError(path, line, name, p))
    return Measurement(**values)


def _decode(space: spaces.Space, cell: str, error) -> Candidate:
    if not cell.strip():
        raise error("empty")
    try:
        return space.decode(cell)
    except ValueError as e:
        raise error(f"not a {space.name} network: {e}") from None


def _number(cell: str, error, *, positive: bool) -> float:
    text = cell.strip()
    if not _NUMBER.fullmatch(text):
        raise error(f"not a number: {_show(cell)}")
    value = float(text)
    if not math.isfinite(value):
        raise error(f"out of range: {_show(cell)}")
    if positive and value <= 0:
        raise error(f"must be positive, got {_show(cell)}")
    if value < 0:
        raise error(f"must not be negative, got {_show(cell)}")
    return value


def _whole(cell: str, error) -> int:
    text = cell.strip()
    if not _WHOLE.fullmatch(text):
        raise error(f"not a whole number: {_show(cell)}")
    value = int(text)
    if value <= 0:
        raise error(f"must be positive, got {_show(cell)}")
    return value


def _show(value: str, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


# --- writing -------------------------------------------------------------------------------------


def write(path: str | Path, space: spaces.Space, rows: Sequence[Measurement]) -> None:
    """Write `rows` as a measurement file of `space`, replacing `path` atomically (a temporary file
    in the same folder, then os.replace): a killed process leaves the old file or the new one,
    never half of one. Every row is checked first (as `read` would); a bad row raises
    MeasurementError naming the line it would have had, and nothing is written."""
    path = Path(path)
    rows = list(rows)
    if not rows:
        raise MeasurementError(path, None, None, "no measurements to write")
    header = [ARCH_ID, space.encoding, LATENCY]
    header += [name for name in OPTIONAL if any(getattr(r, name) is not None for r in rows)]
    lines = [header]
    first_line: dict[str, int] = {}
    for line, row in enumerate(rows, 2):
        lines.append(_cells(path, line, header, row, space, first_line))

    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(lines)  # "\r\n" line ends, like the A50 file
    _replace(path, buffer.getvalue().encode("utf-8"))


def _cells(path: Path, line: int, header: list[str], row: Measurement, space: spaces.Space,
           first_line: dict[str, int]) -> list[str]:
    def error(column: str):
        return lambda problem: MeasurementError(path, line, column, problem)

    if not isinstance(row, Measurement):
        raise MeasurementError(path, line, None, f"not a Measurement: {type(row).__name__}")
    if not isinstance(row.arch_id, str) or not row.arch_id.strip():
        raise error(ARCH_ID)(f"must be a non-blank string, got {row.arch_id!r}")
    if row.arch_id in first_line:
        raise error(ARCH_ID)(f"duplicate {_show(row.arch_id)} (first on line {first_line[row.arch_id]})")
    first_line[row.arch_id] = line
    encoding = _encode(space, row.candidate, error(space.encoding))
    cells = [row.arch_id, encoding, _format(row.latency_ms, error(LATENCY), positive=True)]
    if IQR in header:
        cells.append("" if row.iqr_ms is None else _format(row.iqr_ms, error(IQR), positive=False))
    if RUNS in header:
        if row.runs is not None and (isinstance(row.runs, bool) or not isinstance(row.runs, numbers.Integral)
                                     or row.runs <= 0):
            raise error(RUNS)(f"must be a positive whole number or None, got {row.runs!r}")
        cells.append("" if row.runs is None else str(int(row.runs)))
    return cells


def _encode(space: spaces.Space, candidate: Any, error) -> str:
    if not isinstance(candidate, Candidate) or candidate.space != space.name:
        raise error(f"not a {space.name} candidate: {_show(repr(candidate))}")
    try:
        text = space.encode(candidate)
        same = space.decode(text) == candidate
    except (ValueError, KeyError) as e:
        raise error(f"cannot encode the candidate: {e}") from None
    if not same or text != text.strip() or not text or any(c in text for c in "\r\n"):
        raise error(f"the candidate does not survive encode/decode: {_show(text)}")
    return text


def _format(value: Any, error, *, positive: bool) -> str:
    """Shortest text that reads back as the same float ('56' for 56.0, else repr)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars too
        raise error(f"not a number: {value!r}")
    x = float(value)
    if not math.isfinite(x) or (positive and x <= 0) or x < 0:
        raise error(f"must be {'positive' if positive else 'non-negative'} and finite, got {value!r}")
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def _replace(path: Path, data: bytes) -> None:
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = 0o644
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise MeasurementError(path, None, None, f"cannot write: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


# --- identity ------------------------------------------------------------------------------------


def digest(rows: Sequence[Measurement]) -> str:
    """sha256 (hex) of the rows' (arch_id, candidate, latency) in file order, so a predictor can
    record which measurements it was fitted on. The candidate enters as its space name and sorted
    parameters (what `encode` writes, without needing the space); the latency as repr(float), so
    '56', '56.0' and '5.6e1' in a file give the same digest. iqr_ms and runs do not enter."""
    h = hashlib.sha256(DIGEST_VERSION.encode() + b"\n")
    for r in rows:
        item = [r.arch_id, r.candidate.space, [[k, v] for k, v in r.candidate.params], repr(float(r.latency_ms))]
        h.update(json.dumps(item, separators=(",", ":"), ensure_ascii=True).encode() + b"\n")
    return h.hexdigest()
