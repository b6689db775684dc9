"""Measurement files (search/measurements.py): the shipped Samsung A50 file, write/read round
trips, one precise error per kind of malformed file, atomic writes, and property tests."""
from __future__ import annotations

import csv
import math
import os
import re
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import spaces
from search import measurements
from search.errors import UserError
from search.measurements import Measurement, MeasurementError, digest, read, write
from spaces import Candidate
from spaces.fbnet import OPS

ROOT = Path(__file__).resolve().parents[1]
A50 = ROOT / "conf" / "measurements" / "fbnet_samsung_a50.csv"
FIRST_OPS = ("k5_e6 skip k3_e1_g2 skip k5_e1 skip skip skip k5_e6 k5_e1 k3_e1_g2 k5_e1 k5_e6 k3_e6 "
             "k3_e3 k5_e6 k3_e6 k3_e3 k5_e1 k3_e3 k5_e1 k5_e1_g2")  # line 2 of the file, by eye
FB = spaces.create("fbnet")
MB = spaces.create(**yaml.safe_load((ROOT / "conf" / "space" / "mobilenetv2.yaml").read_text())
                   | {"input_shape": (3, 13, 11), "num_classes": 10})
GOOD_OPS = " ".join(["k3_e1"] * 22)


def fbnet(ops: str | list[str]) -> Candidate:
    ops = ops.split() if isinstance(ops, str) else ops
    return Candidate.of("fbnet", {f"op.b{i}": op for i, op in enumerate(ops)})


def mobilenet_choices(space) -> dict[str, list]:
    return ({n: space.widths for n in space.width_names} | {f"bits.{n}": space.bits for n in space.layer_names}
            | {f"sparsity.{n}": space.sparsities for n in space.prunable})


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- the shipped A50 file -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a50() -> list[Measurement]:
    return read(A50, FB)


def test_shipped_a50_file(a50):
    assert len(a50) == 5000
    assert [m.arch_id for m in a50] == [str(i) for i in range(5000)]
    lat = [m.latency_ms for m in a50]
    assert min(lat) == 23 and max(lat) == 118 and statistics.median(lat) == 41  # as the README says
    assert all(m.iqr_ms is None and m.runs is None and m.candidate.space == "fbnet" for m in a50)
    first = a50[0]
    assert FB.ops_of(first.candidate) == FIRST_OPS.split()
    assert first.candidate == fbnet(FIRST_OPS) and first.latency_ms == 56
    assert FB.encode(first.candidate) == FIRST_OPS


def test_shipped_a50_file_is_the_shared_one_and_rewrites_byte_for_byte(a50, tmp_path):
    shared = Path("/work/shared/data/device-latency/fbnet_cifar100_samsung_a50.csv")
    if shared.exists():  # the project does not need it; when it is there, the copy is exact
        assert shared.read_bytes() == A50.read_bytes()
    with A50.open(newline="") as f:
        assert next(csv.reader(f)) == ["arch_id", "ops", "latency_ms"]
    out = tmp_path / "a50.csv"
    write(out, FB, a50)
    assert out.read_bytes() == A50.read_bytes()


def test_digest(a50, tmp_path):
    again = read(A50, FB)
    assert digest(a50) == digest(again)
    assert len(digest(a50)) == 64 and int(digest(a50), 16) >= 0
    changed = list(again)
    changed[1234] = replace(changed[1234], latency_ms=changed[1234].latency_ms + 1)
    assert digest(changed) != digest(a50)
    # file order counts; float formatting and the optional columns do not
    assert digest(a50[::-1]) != digest(a50)
    text = A50.read_text().replace(",56\r\n", ",56.0\r\n", 1).replace(",86\r\n", ",8.6e1\r\n", 1)
    (tmp_path / "f.csv").write_bytes(text.encode())
    assert (tmp_path / "f.csv").read_bytes() != A50.read_bytes()
    assert digest(read(tmp_path / "f.csv", FB)) == digest(a50)
    assert digest([replace(m, iqr_ms=1.0, runs=5) for m in a50[:10]]) == digest(a50[:10])
    assert digest([replace(a50[0], arch_id="x")]) != digest(a50[:1])
    assert digest([replace(a50[0], candidate=a50[1].candidate)]) != digest(a50[:1])


# --- round trips ---------------------------------------------------------------------------------


def test_round_trip_fbnet_with_optional_columns(tmp_path):
    rows = [Measurement("a", fbnet(GOOD_OPS), 12.5),
            Measurement("b,with comma", fbnet(["skip"] * 22), 0.1 + 0.2, iqr_ms=0.0, runs=30),
            Measurement('q"uote\nnew line', fbnet(list(OPS) * 2 + ["k5_e6"] * 4), 1e-7, iqr_ms=2.25),
            Measurement("7", fbnet(["k5_e6"] * 22), 118.0, runs=1)]
    path = tmp_path / "m.csv"
    write(path, FB, rows)
    assert read(path, FB) == rows
    with path.open(newline="") as f:
        assert next(csv.reader(f)) == ["arch_id", "ops", "latency_ms", "iqr_ms", "runs"]
    # only the optional columns that some row has
    write(path, FB, [replace(r, runs=None) for r in rows])
    with path.open(newline="") as f:
        assert next(csv.reader(f)) == ["arch_id", "ops", "latency_ms", "iqr_ms"]
    assert read(path, FB) == [replace(r, runs=None) for r in rows]


def test_round_trip_mobilenetv2(tmp_path):
    choices = mobilenet_choices(MB)
    cands = [Candidate.of("mobilenetv2", MB.baselines()["float"]), Candidate.of("mobilenetv2", MB.baselines()["int8"]),
             Candidate.of("mobilenetv2", {k: v[i % len(v)] for i, (k, v) in enumerate(choices.items())})]
    rows = [Measurement(f"net{i}", c, 3.5 * (i + 1), iqr_ms=[None, 0.25, 1e-3][i], runs=[None, 7, None][i])
            for i, c in enumerate(cands)]
    path = tmp_path / "mb.csv"
    write(path, MB, rows)
    back = read(path, MB)
    assert back == rows
    assert [type(v) for _, v in back[2].candidate.params] == [type(v) for _, v in cands[2].params]
    with path.open(newline="") as f:
        assert next(csv.reader(f)) == ["arch_id", "arch", "latency_ms", "iqr_ms", "runs"]


def test_overwrite_keeps_mode_and_replaces(tmp_path):
    path = tmp_path / "m.csv"
    write(path, FB, [Measurement("a", fbnet(GOOD_OPS), 1.0)])
    os.chmod(path, 0o640)
    write(path, FB, [Measurement("b", fbnet(GOOD_OPS), 2.0)])
    assert read(path, FB) == [Measurement("b", fbnet(GOOD_OPS), 2.0)]
    assert (path.stat().st_mode & 0o777) == 0o640
    assert files_in(tmp_path) == {"m.csv"}


# --- malformed files -------------------------------------------------------------------------------

H = "arch_id,ops,latency_ms"
R = f"0,{GOOD_OPS},5"
MB_GOOD = MB.encode(Candidate.of("mobilenetv2", MB.baselines()["float"]))

# (id, file text, expected line, expected column or None, a fragment of the problem, space)
MALFORMED = [
    ("missing-latency-column", f"arch_id,ops\n0,{GOOD_OPS}\n", 1, "latency_ms", "missing", FB),
    ("missing-encoding-column", "arch_id,latency_ms\n0,5\n", 1, "ops", "missing", FB),
    ("unknown-extra-column", f"{H},device\n{R},a50\n", 1, "device", "unknown column", FB),
    ("other-space-encoding-column", f"arch_id,arch,latency_ms\n{R}\n", 1, "arch", "unknown column", FB),
    ("duplicate-header-column", f"arch_id,ops,latency_ms,ops\n{R},x\n", 1, "ops", "twice", FB),
    ("empty-file", "", 1, None, "empty file", FB),
    ("blank-lines-only", "\n\n", 1, None, "empty file", FB),
    ("header-only", f"{H}\n", 2, None, "no measurements", FB),
    ("too-few-fields", f"{H}\n{R}\n1,{GOOD_OPS}\n", 3, "latency_ms", "2 fields", FB),
    ("too-many-fields", f"{H}\n{R},9\n", 2, "#4", "extra field", FB),
    ("latency-not-a-number", f"{H}\n{R}\n1,{GOOD_OPS},fast\n", 3, "latency_ms", "not a number", FB),
    ("latency-nan", f"{H}\n1,{GOOD_OPS},nan\n", 2, "latency_ms", "not a number", FB),
    ("latency-inf", f"{H}\n1,{GOOD_OPS},inf\n", 2, "latency_ms", "not a number", FB),
    ("latency-overflow", f"{H}\n1,{GOOD_OPS},1e999\n", 2, "latency_ms", "out of range", FB),
    ("latency-zero", f"{H}\n1,{GOOD_OPS},0.0\n", 2, "latency_ms", "positive", FB),
    ("latency-underflows-to-zero", f"{H}\n1,{GOOD_OPS},1e-999\n", 2, "latency_ms", "positive", FB),
    ("latency-negative", f"{H}\n{R}\n1,{GOOD_OPS},-5\n", 3, "latency_ms", "positive", FB),
    ("latency-empty", f"{H}\n1,{GOOD_OPS},\n", 2, "latency_ms", "not a number", FB),
    ("latency-underscore", f"{H}\n1,{GOOD_OPS},1_0\n", 2, "latency_ms", "not a number", FB),
    ("iqr-negative", f"{H},iqr_ms\n{R},-0.5\n", 2, "iqr_ms", "negative", FB),
    ("iqr-text", f"{H},iqr_ms\n{R},wide\n", 2, "iqr_ms", "not a number", FB),
    ("runs-zero", f"{H},runs\n{R},0\n", 2, "runs", "positive", FB),
    ("runs-fraction", f"{H},runs\n{R},2.5\n", 2, "runs", "whole", FB),
    ("runs-negative", f"{H},iqr_ms,runs\n{R},,-3\n", 2, "runs", "whole", FB),
    ("empty-arch-id", f"{H}\n{R}\n ,{GOOD_OPS},5\n", 3, "arch_id", "empty", FB),
    ("duplicate-arch-id", f"{H}\n{R}\n1,{GOOD_OPS},6\n0,{GOOD_OPS},7\n", 4, "arch_id", "first on line 2", FB),
    ("unknown-op", f"{H}\n0,{' '.join(['k3_e1'] * 3 + ['k7_e6'] + ['skip'] * 18)},5\n", 2, "ops",
     "block 3: unknown op 'k7_e6'", FB),
    ("too-few-blocks", f"{H}\n0,{' '.join(['skip'] * 21)},5\n", 2, "ops", "expected 22 blocks, got 21", FB),
    ("too-many-blocks", f"{H}\n0,{GOOD_OPS} skip,5\n", 2, "ops", "expected 22 blocks, got 23", FB),
    ("empty-encoding", f"{H}\n0,,5\n", 2, "ops", "empty", FB),
    ("line-count-with-crlf-and-blank-lines", f"{H}\r\n{R}\r\n\r\n\r\n1,{GOOD_OPS},-1\r\n", 5, "latency_ms",
     "positive", FB),
    ("line-count-after-multiline-field", f'{H}\n"a\nb",{GOOD_OPS},5\n1,{GOOD_OPS},x\n', 4, "latency_ms",
     "not a number", FB),
    ("columns-in-another-order", f"latency_ms,ops,arch_id\n5,{GOOD_OPS},0\n5,{GOOD_OPS},0\n", 3, "arch_id",
     "duplicate", FB),
    ("mobilenetv2-bad-value", f"arch_id,arch,latency_ms\n0,{MB_GOOD.replace('width.stem=1.0', 'width.stem=0.3')},5\n",
     2, "arch", "width.stem", MB),
    ("mobilenetv2-unknown-parameter", f"arch_id,arch,latency_ms\n0,{MB_GOOD} depth=3,5\n", 2, "arch", "depth", MB),
    ("mobilenetv2-fbnet-column", f"{H}\n0,{MB_GOOD},5\n", 1, "ops", "unknown column", MB),
    ("broken-quote", f'{H}\n{R}\n"1"x,{GOOD_OPS},5\n', 3, None, "malformed CSV", FB),
]


@pytest.mark.parametrize("text,line,column,fragment,space", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_file_names_file_line_and_column(tmp_path, text, line, column, fragment, space):
    path = tmp_path / "bad-file.csv"
    path.write_bytes(text.encode())
    with pytest.raises(MeasurementError) as info:
        read(path, space)
    e = info.value
    message = str(e)
    assert isinstance(e, UserError)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: ")
    assert (e.line, e.column) == (line, column)
    if column is not None:
        assert message.startswith(f"{path}:{line}: column {column}: ")
    assert fragment in message


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(f"{H}\n{R}\n".encode() + "1,é,5\n".encode("latin-1"))
    with pytest.raises(MeasurementError, match=rf"^{re.escape(str(path))}:3: not UTF-8"):
        read(path, FB)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(MeasurementError, match=rf"^{re.escape(str(tmp_path / 'nope.csv'))}: cannot read"):
        read(tmp_path / "nope.csv", FB)
    with pytest.raises(MeasurementError, match="cannot read"):
        read(tmp_path, FB)


def test_utf8_bom_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(f"\ufeff{H}\n{R}\n".encode())
    assert read(path, FB) == [Measurement("0", fbnet(GOOD_OPS), 5.0)]


# --- failed writes leave nothing --------------------------------------------------------------------


def test_write_to_missing_folder_raises_and_leaves_nothing(tmp_path):
    target = tmp_path / "no" / "such" / "m.csv"
    with pytest.raises(MeasurementError, match=rf"^{re.escape(str(target))}: cannot write"):
        write(target, FB, [Measurement("a", fbnet(GOOD_OPS), 1.0)])
    assert files_in(tmp_path) == set()


BAD_ROWS = [
    ("negative-latency", [Measurement("a", fbnet(GOOD_OPS), -1.0)], 2, "latency_ms"),
    ("nan-latency", [Measurement("a", fbnet(GOOD_OPS), 1.0), Measurement("b", fbnet(GOOD_OPS), math.nan)], 3,
     "latency_ms"),
    ("duplicate-id", [Measurement("a", fbnet(GOOD_OPS), 1.0), Measurement("a", fbnet(GOOD_OPS), 2.0)], 3, "arch_id"),
    ("blank-id", [Measurement(" ", fbnet(GOOD_OPS), 1.0)], 2, "arch_id"),
    ("negative-iqr", [Measurement("a", fbnet(GOOD_OPS), 1.0, iqr_ms=-1.0)], 2, "iqr_ms"),
    ("zero-runs", [Measurement("a", fbnet(GOOD_OPS), 1.0, runs=0)], 2, "runs"),
    ("other-space", [Measurement("a", Candidate.of("mobilenetv2", MB.baselines()["float"]), 1.0)], 2, "ops"),
    ("unknown-op", [Measurement("a", fbnet(["k9_e9"] * 22), 1.0)], 2, "ops"),
    ("missing-block", [Measurement("a", fbnet(["skip"] * 21), 1.0)], 2, "ops"),
    ("no-rows", [], None, None),
]


@pytest.mark.parametrize("rows,line,column", [c[1:] for c in BAD_ROWS], ids=[c[0] for c in BAD_ROWS])
def test_write_rejects_bad_rows_and_keeps_the_old_file(tmp_path, rows, line, column):
    path = tmp_path / "m.csv"
    write(path, FB, [Measurement("old", fbnet(GOOD_OPS), 9.0)])
    before = path.read_bytes()
    with pytest.raises(MeasurementError) as info:
        write(path, FB, rows)
    assert (info.value.line, info.value.column) == (line, column)
    assert str(info.value).startswith(f"{path}:")
    assert path.read_bytes() == before and files_in(tmp_path) == {"m.csv"}


@pytest.mark.parametrize("fail_in", ["fsync", "replace"])
def test_write_interrupted_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch, fail_in):
    """A failure (or an interrupt) between creating the temporary file and the rename: the old
    file is untouched and the temporary file is gone."""
    path = tmp_path / "m.csv"
    write(path, FB, [Measurement("old", fbnet(GOOD_OPS), 9.0)])
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt if fail_in == "replace" else OSError(28, "No space left on device")

    monkeypatch.setattr(measurements.os, fail_in, boom)
    with pytest.raises(KeyboardInterrupt if fail_in == "replace" else MeasurementError):
        write(path, FB, [Measurement("new", fbnet(GOOD_OPS), 1.0)])
    monkeypatch.undo()
    assert path.read_bytes() == before and files_in(tmp_path) == {"m.csv"}


# --- properties ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder for all examples of a property test (function-scoped tmp_path does not mix with
    hypothesis: it would be shared by every example anyway)."""
    return tmp_path_factory.mktemp("properties")


arch_ids = st.text(min_size=1, max_size=12).filter(lambda s: s.strip())
fb_candidates = st.lists(st.sampled_from(OPS), min_size=22, max_size=22).map(fbnet)
mb_candidates = st.fixed_dictionaries({k: st.sampled_from(v) for k, v in mobilenet_choices(MB).items()}).map(
    lambda p: Candidate.of("mobilenetv2", p))
positive = st.floats(min_value=0.0, exclude_min=True, allow_nan=False, allow_infinity=False)
nonnegative = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)


def measurement_lists(candidates):
    row = st.builds(Measurement, arch_ids, candidates, positive | st.integers(1, 10**6),
                    st.none() | nonnegative, st.none() | st.integers(1, 10**12))
    return st.lists(row, min_size=1, max_size=6, unique_by=lambda m: m.arch_id)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["fbnet", "mobilenetv2"]).flatmap(
    lambda name: st.tuples(st.just(name), measurement_lists(fb_candidates if name == "fbnet" else mb_candidates))))
def test_property_valid_measurements_round_trip(scratch, case):
    name, rows = case
    space = FB if name == "fbnet" else MB
    path = scratch / "round-trip.csv"
    write(path, space, rows)
    back = read(path, space)
    assert back == rows
    assert digest(back) == digest(rows)
    assert all(type(m.latency_ms) is float for m in back)


# per column: good values (drawn most of the time) and bad ones
CELLS = {"arch_id": (["{row}", "id-{row}"], ["0", " ", ""]),
         "ops": ([GOOD_OPS, " ".join(["skip"] * 22), " ".join((OPS * 3)[:22])], ["k3_e1", "", "k3_e1 " * 23]),
         "latency_ms": (["5", "0.5", "1e2", " 42 "], ["0", "-1", "nan", "", "1e999"]),
         "iqr_ms": (["", "0", "1.5"], ["-1", "x"]),
         "runs": (["", "1", "30"], ["0", "1.0", "-2"])}
HEADERS = [["arch_id", "ops", "latency_ms"], ["arch_id", "ops", "latency_ms", "iqr_ms", "runs"],
           ["ops", "runs", "arch_id", "latency_ms"]]
BAD_HEADERS = [["arch_id", "ops"], ["arch_id", "arch", "latency_ms"], ["arch_id", "ops", "latency_ms", "ops"]]
junk = st.text(max_size=20)


@st.composite
def csv_texts(draw):
    """A header (mostly a valid one) and rows of cells, each mostly a good value, else a bad one or
    random text, joined with commas and line ends; now and then random characters anywhere."""
    kind = draw(st.integers(0, 9))
    if kind < 8:
        header = draw(st.sampled_from(HEADERS))
    elif kind < 9:
        header = draw(st.sampled_from(BAD_HEADERS))
    else:
        header = draw(st.lists(st.sampled_from(["arch_id", "ops", "latency_ms", "x", ""]) | junk, max_size=5))
    lines = [",".join(header)]
    for row in range(draw(st.sampled_from([0, 1, 1, 2, 3, 4]))):
        n = len(header) + draw(st.sampled_from([0] * 8 + [-1, 1]))
        cells = []
        for i in range(max(n, 0)):
            good, bad = CELLS.get(header[i] if i < len(header) else "", ([""], [""]))
            kind = draw(st.integers(0, 19))
            cell = draw(st.sampled_from(good) if kind < 17 else st.sampled_from(bad) if kind < 19 else junk)
            cells.append(cell.replace("{row}", str(row)))
        lines.append(",".join(cells))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))
    if not draw(st.integers(0, 4)):
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.text(alphabet=st.characters() | st.sampled_from('",\r\n\x00'), max_size=5)) + text[i:]
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(csv_texts(), csv_texts(), csv_texts(), st.text(max_size=200)), st.integers(0, 9))
def test_property_any_text_parses_to_valid_rows_or_raises_measurement_error(scratch, text, latin1):
    path = scratch / "any.csv"
    path.write_bytes(text.encode("latin-1", "replace") if latin1 == 0 else text.encode("utf-8", "surrogatepass"))
    try:
        rows = read(path, FB)
    except MeasurementError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path))
        event(f"error in {e.column if e.column in measurements.columns(FB) else 'header or structure'}")
        return
    event("parsed")
    assert rows
    assert len({m.arch_id for m in rows}) == len(rows)
    for m in rows:
        assert isinstance(m, Measurement) and m.arch_id.strip()
        assert m.candidate.space == "fbnet" and FB.decode(FB.encode(m.candidate)) == m.candidate
        assert math.isfinite(m.latency_ms) and m.latency_ms > 0
        assert m.iqr_ms is None or (math.isfinite(m.iqr_ms) and m.iqr_ms >= 0)
        assert m.runs is None or (type(m.runs) is int and m.runs > 0)


def test_write_accepts_numpy_scalars(tmp_path):
    import numpy as np

    rows = [Measurement("a", fbnet(GOOD_OPS), np.float32(2.5), np.float64(0.125), np.int64(20))]
    write(tmp_path / "np.csv", FB, rows)
    back = read(tmp_path / "np.csv", FB)
    assert back == [Measurement("a", fbnet(GOOD_OPS), 2.5, 0.125, 20)]
    assert type(back[0].runs) is int and type(back[0].latency_ms) is float
    with pytest.raises(MeasurementError, match="column runs"):
        write(tmp_path / "np.csv", FB, [Measurement("a", fbnet(GOOD_OPS), 1.0, runs=True)])


# --- one mutation of a valid file: named by line and column, or (if harmless) the same rows -------

simple_ids = st.integers(0, 10**6).map(str)
latencies = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False)
not_a_number = st.text(st.characters(blacklist_characters=',"\r\n', blacklist_categories=("Cs",)), max_size=8).filter(
    lambda t: not measurements._NUMBER.fullmatch(t.strip()))
unknown_ops = st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True).filter(lambda op: op not in OPS)

# mutation -> (column it breaks, a fragment of the problem); None: the file still reads as the same rows
MUTATIONS = {"latency-garbage": ("latency_ms", "not a number"), "latency-nan": ("latency_ms", "not a number"),
             "latency-negative": ("latency_ms", "positive"), "latency-zero": ("latency_ms", "positive"),
             "ops-short": ("ops", "expected 22 blocks"), "ops-long": ("ops", "expected 22 blocks"),
             "ops-unknown-op": ("ops", "unknown op"), "arch_id-blank": ("arch_id", "empty"),
             "arch_id-duplicate": ("arch_id", "duplicate"), "field-dropped": (None, "fields"),
             "column-dropped": (None, "missing from the header"), "emptied": (None, "empty file"),
             "whitespace-around-numbers": None, "bom": None, "crlf": None, "blank-lines": None}


@st.composite
def mutated_files(draw, mutation: str):
    """(text, rows it holds if valid, the 1-based line of the mutated row) of a valid file with one
    `mutation`."""
    ids = draw(st.lists(simple_ids, min_size=1, max_size=6, unique=True))
    rows = [Measurement(i, draw(fb_candidates), draw(latencies)) for i in ids]
    cells = [[r.arch_id, FB.encode(r.candidate), repr(r.latency_ms)] for r in rows]
    header = ["arch_id", "ops", "latency_ms"]
    k = draw(st.integers(0, len(rows) - 1))  # the row that changes
    row = cells[k]
    if mutation == "latency-garbage":
        row[2] = draw(not_a_number)
    elif mutation in ("latency-nan", "latency-negative", "latency-zero"):
        row[2] = {"latency-nan": draw(st.sampled_from(["nan", "NaN", "inf"])),
                  "latency-negative": "-" + row[2], "latency-zero": draw(st.sampled_from(["0", "0.0", "-0", "0e5"]))}[mutation]
    elif mutation in ("ops-short", "ops-long"):
        ops = row[1].split()
        row[1] = " ".join(ops[:draw(st.integers(1, 21))] if mutation == "ops-short" else ops + ops[:draw(st.integers(1, 5))])
    elif mutation == "ops-unknown-op":
        ops = row[1].split()
        ops[draw(st.integers(0, 21))] = draw(unknown_ops)
        row[1] = " ".join(ops)
    elif mutation == "arch_id-blank":
        row[0] = draw(st.sampled_from(["", " ", "\t"]))
    elif mutation == "arch_id-duplicate":
        assume(len(rows) > 1)
        k = draw(st.integers(1, len(rows) - 1))
        cells[k][0] = cells[draw(st.integers(0, k - 1))][0]
    elif mutation == "field-dropped":
        del row[draw(st.integers(0, 2))]
    elif mutation in ("column-dropped", "emptied"):
        dropped = draw(st.integers(0, 2))
        for line in [header, *cells]:
            del line[dropped]
        k = -1  # the header is what is wrong
    elif mutation == "whitespace-around-numbers":
        row[2] = draw(st.sampled_from([" ", "  ", "\t"])) + row[2] + draw(st.sampled_from(["", " ", "\t"]))
    lines = [",".join(line) for line in [header, *cells]]
    end = "\r\n" if mutation == "crlf" else "\n"
    text = end.join(lines) + end
    if mutation == "blank-lines":
        text = text.replace(end, end * draw(st.integers(2, 3)))
    if mutation == "bom":
        text = "\ufeff" + text
    return ("" if mutation == "emptied" else text), rows, k + 2


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_one_mutation_is_named_by_file_line_and_column(scratch, mutation, data):
    text, rows, line = data.draw(mutated_files(mutation))
    path = scratch / "mutated.csv"
    path.write_bytes(text.encode())
    if MUTATIONS[mutation] is None:
        assert read(path, FB) == rows
        return
    column, fragment = MUTATIONS[mutation]
    with pytest.raises(MeasurementError) as info:
        read(path, FB)
    e = info.value
    assert "\n" not in str(e) and fragment in str(e)
    if mutation == "emptied":
        assert (e.line, e.column) == (1, None) and str(e).startswith(f"{path}:1: ")
    elif mutation == "column-dropped":
        assert e.line == 1 and str(e).startswith(f"{path}:1: column ")
    elif mutation == "field-dropped":
        assert e.line == line and str(e).startswith(f"{path}:{line}: column ")
    else:
        assert (e.line, e.column) == (line, column)
        assert str(e).startswith(f"{path}:{line}: column {column}: ")
