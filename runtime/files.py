"""Reading files archc did not write in this process: hostile until validated.

Every reader of the runtime (weights, checkpoints and run folders, data sets) goes through
these few functions, so that a file of any content ends in the project's one-line error
naming it, in bounded time and memory:

- :func:`regular_file`: the path is a regular file of bounded size (not a directory, a
  device such as ``/dev/zero``, a FIFO that would block forever, or a socket);
- :func:`read_json`: bounded, UTF-8, any nesting depth refused cleanly, and the type of
  the top level checked;
- :func:`array_headers` / :func:`read_arrays`: ``.npz`` (and ``.npy``) files read in two
  steps: first the headers of every array (names, dtypes, shapes, checked against the
  sizes the zip directory declares: a header that claims 100 billion elements or a zip
  bomb is refused before a byte of data is read), so that a caller can compare them with
  what it expects; then the data, refusing pickles, text, complex numbers and (unless
  allowed) NaN and infinite values;
- :func:`writable` checks an output path before the work that produces it starts.

Examples
--------
>>> import tempfile, numpy as np
>>> folder = tempfile.mkdtemp()
>>> np.savez(f"{folder}/w.npz", a=np.ones((2, 3), np.float32))
>>> {k: (h.shape, str(h.dtype)) for k, h in array_headers(f"{folder}/w.npz").items()}
{'a': ((2, 3), 'float32')}
>>> float(read_arrays(f"{folder}/w.npz")["a"].sum())
6.0
>>> np.savez(f"{folder}/c.npz", a=np.ones(2, np.complex64))
>>> read_arrays(f"{folder}/c.npz")  # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
runtime.errors.WeightsError: weights file .../c.npz: array 'a' holds complex numbers (complex64); archc reads real numbers only
"""

from __future__ import annotations

import json
import math
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.errors import ArchcError, UsageError, WeightsError
from runtime.limits import check_bytes, fmt_bytes

MiB = 1 << 20
MAX_JSON_BYTES = 64 * MiB  # a run folder's pointer, state, task and log files
MAX_HEADER_BYTES = 10_000  # an .npy header (NumPy's own default limit)
MAX_ARRAYS = 100_000  # arrays in one .npz


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters for an error line (a 100 kB value is not
    echoed whole).

    >>> shorten("x" * 1000, 10)
    'xxxxxxx...'
    """
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def regular_file(path: str | Path, what: str, error: type[ArchcError] = ArchcError,
                 limit: int | None = None) -> int:
    """Check that ``path`` is a regular file of at most ``limit`` bytes, without opening it
    (a FIFO would block); return its size. ``what`` names the file in errors ("weights
    file")."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"no such {what}: {path}") from None
    except NotADirectoryError:
        raise error(f"no such {what}: {path} (a part of the path is not a folder)") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{path} is a folder; expected a {what}")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path} is not a regular file (a device, pipe or socket); expected a "
                    f"{what}")
    if limit is not None and info.st_size > limit:
        raise error(f"{path} is {info.st_size:,} bytes; a {what} may be at most "
                    f"{limit:,} bytes")
    return info.st_size


def read_bytes(path: str | Path, what: str, error: type[ArchcError] = ArchcError,
               limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (read no further, even if
    it grows meanwhile)."""
    regular_file(path, what, error, limit)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise error(f"{path} is over {limit:,} bytes; a {what} may be at most {limit:,}")
    return data


def read_json(path: str | Path, what: str, error: type[ArchcError] = ArchcError,
              kind: type = dict, limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file whose top level is a ``kind`` (dict or list), or ``error`` saying what
    is wrong with it."""
    data = read_bytes(path, what, error, limit)
    if not data.strip():
        raise error(f"{what} {path} is empty")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8 text") from None
    except RecursionError:
        raise error(f"{what} {path} is nested too deeply to be read") from None
    except ValueError as exc:
        raise error(f"{what} {path} is not valid JSON ({shorten(exc)})") from None
    if not isinstance(value, kind):
        raise error(f"{what} {path} holds a JSON {json_type(value)}; expected a JSON "
                    f"{'object' if kind is dict else 'array'}")
    return value


def json_type(value: Any) -> str:
    """JSON's name of a parsed value's type (object, array, string, number...)."""
    return {dict: "object", list: "array", str: "string", bool: "true/false",
            type(None): "null"}.get(type(value), "number")


def json_lines(path: str | Path, what: str, error: type[ArchcError] = ArchcError,
               limit: int = MAX_JSON_BYTES) -> list[dict]:
    """A JSON-lines file: one mapping per non-empty line."""
    rows = []
    for number, line in enumerate(read_bytes(path, what, error, limit).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):
            raise error(f"{what} {path}, line {number}, is not valid JSON") from None
        if not isinstance(row, dict):
            raise error(f"{what} {path}, line {number}, is not a JSON mapping")
        rows.append(row)
    return rows


def writable(path: str | Path, what: str = "output file") -> Path:
    """Check, before any work, that ``path`` can be written: its folder exists and is a
    folder, and the path itself is not a folder."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise UsageError(f"cannot write {what} {path}: the folder {parent} does not exist",
                         hint=f"create it first (mkdir -p {parent})")
    if not parent.is_dir():
        raise UsageError(f"cannot write {what} {path}: {parent} is not a folder")
    if path.is_dir():
        raise UsageError(f"cannot write {what} {path}: it is a folder; give a file name")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {what} {path}: no permission to write in {parent}")
    return path


# --- arrays: .npz and .npy ---------------------------------------------------------------

_KINDS = {"c": "complex numbers", "O": "Python objects (a pickle)", "U": "text",
          "S": "bytes", "V": "records", "M": "dates", "m": "time spans"}


@dataclass(frozen=True)
class Header:
    """What an array's header declares: shape and dtype, and its place in the file."""

    shape: tuple[int, ...]
    dtype: np.dtype
    member: str | None  # the zip member (None: a plain .npy file)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _header(f, where: str, error) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of the .npy stream ``f``."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
        if version not in reader:
            raise ValueError(f"format version {version}")
        shape, _, dtype = reader[version](f, max_header_size=MAX_HEADER_BYTES)
    except Exception as exc:  # numpy raises ValueError, EOFError, SyntaxError...: all mean damage
        raise error(f"{where} is not a NumPy array ({shorten(exc, 60)})") from None
    return tuple(int(s) for s in shape), np.dtype(dtype), f.tell()


def _check_dtype(where: str, name: str, dtype: np.dtype, error) -> None:
    if dtype.hasobject or dtype.kind not in "biuf":
        what = _KINDS.get(dtype.kind, str(dtype)) + ("" if dtype.kind == "O" else f" ({dtype})")
        label = f"array '{shorten(name, 60)}'" if name else "its array"
        raise error(f"{where}: {label} holds {what}; archc reads real numbers only")


def array_headers(path: str | Path, what: str = "weights file",
                  error: type[ArchcError] = WeightsError,
                  limit: int | None = None) -> dict[str, Header]:
    """Name -> :class:`Header` of every array in an ``.npz`` (or the one array of an
    ``.npy``, named ``""``), read from the headers only. Refuses a file that is not one,
    dtypes that are not real numbers, and sizes that disagree with the file or exceed
    ``limit`` bytes in all."""
    size = regular_file(path, what, error)
    if size == 0:
        raise error(f"{what} {path} is empty")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            if magic == b"\x93NUMPY":
                f.seek(0)
                shape, dtype, offset = _header(f, f"{what} {path}", error)
                headers = {"": Header(shape, dtype, None)}
                _check_dtype(f"{what} {path}", "", dtype, error)
                if headers[""].nbytes != size - offset:
                    raise error(f"{what} {path} declares {fmt_shape(shape)} {dtype} values "
                                f"({headers[''].nbytes:,} bytes) but holds {size - offset:,}: "
                                f"it is cut short or padded")
                return _within(headers, path, what, error, limit)
            if not magic.startswith(b"PK"):
                raise error(f"{what} {path} is not a NumPy array (.npy) nor an .npz file "
                            f"(a zip of arrays, as numpy.savez writes)")
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            if len(members) > MAX_ARRAYS:
                raise error(f"{what} {path} holds {len(members):,} entries; at most "
                            f"{MAX_ARRAYS:,} arrays are read")
            headers = {}
            for info in members:
                name = info.filename[:-4] if info.filename.endswith(".npy") else None
                if name is None:
                    raise error(f"{what} {path} holds '{shorten(info.filename, 60)}', which "
                                f"is not an array (.npy) as numpy.savez writes")
                with zf.open(info) as member:
                    shape, dtype, offset = _header(member, f"array '{shorten(name, 60)}' of "
                                                   f"{path}", error)
                _check_dtype(f"{what} {path}", name, dtype, error)
                headers[name] = Header(shape, dtype, info.filename)
                if headers[name].nbytes != info.file_size - offset:
                    raise error(f"{what} {path}: array '{shorten(name, 60)}' declares "
                                f"{fmt_shape(shape)} {dtype} values "
                                f"({headers[name].nbytes:,} bytes) but its entry holds "
                                f"{max(info.file_size - offset, 0):,}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            NotImplementedError, RuntimeError) as exc:
        if isinstance(exc, ArchcError):
            raise
        raise error(f"{what} {path} is not a readable .npz file (a zip of NumPy arrays: "
                    f"{shorten(exc, 60)})") from None
    except Exception as exc:  # zlib.error, struct.error: damaged compressed data
        if isinstance(exc, ArchcError):
            raise
        raise error(f"{what} {path} is damaged ({type(exc).__name__}: "
                    f"{shorten(exc, 60)})") from None
    return _within(headers, path, what, error, limit)


def fmt_shape(shape) -> str:
    """``(3, 32, 32)`` as ``3x32x32``."""
    return "x".join(map(str, shape)) or "scalar"


def finite_number(value: Any) -> bool:
    """A real number a file may hold where one is expected: an int or float, finite, and
    not a bool (JSON's true is no count)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _within(headers: dict, path, what: str, error, limit: int | None) -> dict[str, Header]:
    total = sum(h.nbytes for h in headers.values())
    if limit is not None and total > limit:
        raise error(f"{what} {path} declares {fmt_bytes(total)} of arrays; more than the "
                    f"{fmt_bytes(limit)} this reader allows")
    return headers


def read_arrays(path: str | Path, what: str = "weights file",
                error: type[ArchcError] = WeightsError, *,
                names: Callable[[dict[str, Header]], list[str]] | None = None,
                limit: int | None = None, finite: bool = True) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (a ``.npy``'s one array under the name ``""``),
    after :func:`array_headers` checked them: ``names`` picks which to read from the
    headers (the others are never decompressed); ``limit`` bounds the bytes in all; with
    ``finite``, NaN and infinite values are refused."""
    headers = array_headers(path, what, error, limit)
    wanted = list(headers) if names is None else names(headers)
    check_bytes(sum(headers[n].nbytes for n in wanted), f"reading {what} {path}")
    out = {}
    try:
        if "" in headers:
            out[""] = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as data:
                for name in wanted:
                    out[name] = data[name]
    except Exception as exc:  # a CRC error, cut-short data, a bad compressed stream
        raise error(f"{what} {path} is damaged: {shorten(exc, 80)}") from None
    if finite:
        for name, value in out.items():
            check_finite(value, f"{what} {path}", name, error,
                         NONFINITE_HINT if error is WeightsError else None)
    return out


NONFINITE_HINT = ("archc refuses such weights; pass --allow-nonfinite to load them anyway "
                  "(for debugging)")


def check_finite(value: np.ndarray, source: str, name: str,
                 error: type[ArchcError] = WeightsError, hint: str | None = NONFINITE_HINT
                 ) -> None:
    """Refuse an array with NaN or infinite values, counting them."""
    if value.dtype.kind != "f" or np.isfinite(value).all():
        return
    nan = int(np.isnan(value).sum())
    inf = int(np.isinf(value).sum())
    parts = [f"{nan:,} NaN" if nan else "", f"{inf:,} infinite" if inf else ""]
    label = f"array '{name}'" if name else "its array"
    raise error(f"{source}: {label} holds {' and '.join(p for p in parts if p)} value(s)",
                hint=hint)
