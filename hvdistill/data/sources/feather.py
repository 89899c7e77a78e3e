"""Reading Apache Feather (Arrow IPC) tables, Argoverse 2's file format, checked before use.

`read_columns` opens a Feather v2 file with pyarrow (never pickle), checks its schema (every
wanted column present, of the wanted kind: floating, integer or string) before reading any
data, then reads the columns and refuses missing (null) values. Each kind of damage (missing,
empty, truncated or corrupt file, a missing or mistyped column, nulls) raises `SampleReadError`
naming the sample key and the file, so a damaged table quarantines samples instead of crashing.

`read_sweep` reads an Argoverse 2 LiDAR sweep into the (N, 4) float32 x, y, z, intensity
contract of `files.read_points`: coordinates of any floating type (AV2 stores float16), the
intensity of any numeric type on AV2's 0-255 scale (stored uint8), kept on that scale (the
nuScenes one); a sweep with no points, non-finite values or intensities outside 0-255 is damage.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from hvdistill.data.errors import SampleReadError

FLOAT, INT, STRING, NUMBER = "float", "int", "string", "number"  # column kinds
SWEEP_COLUMNS = {"x": FLOAT, "y": FLOAT, "z": FLOAT, "intensity": NUMBER}
INTENSITY_MAX = 255.0  # AV2 intensity is a uint8


def _kind_ok(kind: str, dtype: pa.DataType) -> bool:
    if kind == FLOAT:
        return pa.types.is_floating(dtype)
    if kind == INT:
        return pa.types.is_integer(dtype)
    if kind == NUMBER:
        return pa.types.is_floating(dtype) or pa.types.is_integer(dtype)
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _check_schema(key: str, path: Path, schema: pa.Schema, columns: dict[str, str], what: str) -> None:
    problems = []
    for name, kind in columns.items():
        index = schema.get_field_index(name)
        if index < 0:
            problems.append(f"no column '{name}'")
        elif not _kind_ok(kind, schema.field(index).type):
            problems.append(f"column '{name}' is {schema.field(index).type}, not {kind}")
    if problems:
        raise SampleReadError(key, path, f"{what}: {'; '.join(problems)} (columns: {schema.names})")


def _read_table(key: str, path: Path, columns: dict[str, str], what: str) -> pa.Table:
    """The table of a Feather v2 file whose schema (read first, from the footer) has `columns`."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise SampleReadError(key, path, f"{what} file is missing") from None
    except OSError as exc:
        raise SampleReadError(key, path, f"cannot stat {what} file: {exc}") from None
    if size == 0:
        raise SampleReadError(key, path, f"{what} file is empty")
    try:
        with pa.OSFile(str(path), "rb") as source:
            reader = ipc.open_file(source)
            _check_schema(key, path, reader.schema, columns, what)
            return reader.read_all()
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SampleReadError(
            key, path, f"cannot read {what} as Feather v2 (truncated or corrupt?): {reason}"
        ) from None


def read_columns(key: str, path: Path, columns: dict[str, str], what: str) -> dict[str, np.ndarray]:
    """{column: (N,) array} of the wanted `columns` ({name: kind}) of a Feather file.

    Strings come back as an object array of str; numbers in their stored dtype."""
    table = _read_table(key, path, columns, what)
    out = {}
    for name, kind in columns.items():
        column = table.column(name)
        if column.null_count:
            raise SampleReadError(
                key, path, f"{what}: column '{name}' has {column.null_count} missing values"
            )
        out[name] = np.asarray(column.to_pylist(), dtype=object) if kind == STRING else column.to_numpy()
    return out


def read_sweep(key: str, path: Path) -> np.ndarray:
    """(N, 4) float32 x, y, z (ego frame), intensity (0-255) of an Argoverse 2 LiDAR sweep."""
    cols = read_columns(key, path, SWEEP_COLUMNS, "LiDAR sweep")
    if len(cols["x"]) == 0:
        raise SampleReadError(key, path, "LiDAR sweep has no points")
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range float64 becomes inf: refused below
        points = np.stack([cols[name].astype(np.float32) for name in SWEEP_COLUMNS], axis=1)  # (N, 4)
    finite = np.isfinite(points).all(axis=1)
    if not finite.all():
        raise SampleReadError(
            key, path, f"{int((~finite).sum())} of {len(points)} points are NaN or infinite"
        )
    intensity = points[:, 3]
    if intensity.min() < 0 or intensity.max() > INTENSITY_MAX:
        raise SampleReadError(
            key,
            path,
            f"intensity spans {intensity.min():g} .. {intensity.max():g}, outside 0 .. {INTENSITY_MAX:g}",
        )
    return points
