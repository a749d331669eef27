"""Parameters: PyTorch's initialisation, and ``.npz`` files that never hold pickles.

Initialisation follows each torch.nn layer's ``reset_parameters``, as the compiler's
registry states it per layer type and the lowered program carries it (``ParamSpec.init``):
conv and linear weights and biases uniform in ``+-1 / sqrt(fan_in)``, normalisation scales
1 and shifts 0, running variance 1, layer scale its ``init_value``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from runtime.errors import WeightsError
from runtime.files import array_headers, check_finite, read_arrays, regular_file, shorten
from runtime.limits import check_bytes, check_program
from runtime.program import Program


def init_params(program: Program, seed: int = 0) -> dict[str, np.ndarray]:
    """Fresh parameters and buffers for ``program``, reproducible from ``seed``: each as its
    ``ParamSpec.init`` says, drawn in program order (refused first if they would not fit
    in memory: :func:`runtime.limits.check_program`)."""
    check_program(program)
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray] = {}
    for op in program.ops:
        for full in op.params.values():
            spec = program.params[full]
            kind, value = spec.init
            if kind == "uniform":
                values[full] = rng.uniform(-value, value, spec.shape).astype(np.float32)
            else:
                values[full] = np.full(spec.shape, value, dtype=spec.dtype)
    return values


def save_params(path: str | Path, params: dict[str, np.ndarray]) -> Path:
    """Write ``params`` to an ``.npz`` file atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **params)
    os.replace(tmp, path)
    return path


def _read_torch(path: Path, finite: bool) -> dict[str, np.ndarray]:
    """A PyTorch state_dict saved with torch.save, read with ``weights_only=True`` (tensors
    and plain containers only: never an arbitrary pickle)."""
    import zipfile

    regular_file(path, "weights file", WeightsError)
    try:
        import torch
    except ImportError:
        raise WeightsError(f"{path} is a PyTorch file: reading it needs torch (pip install "
                           "torch), or save the state_dict as .npz") from None
    if zipfile.is_zipfile(path):  # torch.save's format: bound what it would decompress
        try:
            with zipfile.ZipFile(path) as zf:
                declared = sum(info.file_size for info in zf.infolist())
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise WeightsError(f"{path} is not a readable PyTorch state_dict ({exc})") from None
        check_bytes(declared, f"reading weights file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad or unsafe file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path} is not a readable PyTorch state_dict "
                           f"({shorten(reason)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise WeightsError(f"{path} holds no state_dict (a mapping of names to tensors, as "
                           "model.state_dict() gives)")
    arrays = {}
    for key, value in state.items():
        if value.is_complex() or not (value.is_floating_point() or value.dtype in (
                torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)):
            raise WeightsError(f"{path}: tensor '{shorten(key)}' holds {value.dtype} values; "
                               f"archc reads real numbers only")
        arrays[str(key)] = value.detach().cpu().float().numpy() if value.dtype in (
            torch.float16, torch.bfloat16) else value.detach().cpu().numpy()
        if finite:
            check_finite(arrays[str(key)], f"weights file {path}", key)
    return arrays


def _read(path: str | Path, program: Program, strict: bool, finite: bool
          ) -> dict[str, np.ndarray]:
    """The arrays of a weights file under archc's names. The shapes are compared with
    ``program`` from the headers, before any data is read: ``strict`` refuses a file
    that does not fit (every problem listed); otherwise only the arrays that fit are
    read (transfer learning)."""
    if Path(path).suffix in (".pt", ".pth"):
        return _archc_names(_read_torch(Path(path), finite), program)
    headers = array_headers(path, "weights file", WeightsError)
    if "" in headers:
        raise WeightsError(f"{path} holds one unnamed array (.npy); weights are named arrays",
                           hint="save them with numpy.savez(path, **state_dict), one array "
                           "per parameter name")
    shapes = {k: h.shape for k, h in headers.items()}
    names = _name_map(shapes, program)

    renamed = {names[k]: _as_param(shapes[k], names[k], program) for k in shapes}

    def chosen(_headers) -> list[str]:
        if strict:
            problems = _problems(renamed, program)
            if problems:
                raise WeightsError(f"{path} does not fit {program.name}: " + " | ".join(problems))
            return list(shapes)
        return [k for k in shapes if names[k] in program.params
                and renamed[names[k]] == program.params[names[k]].shape]

    arrays = read_arrays(path, "weights file", WeightsError, names=chosen, finite=finite)
    return {names[k]: v.reshape(renamed[names[k]]) for k, v in arrays.items()}


def _name_map(shapes: dict[str, tuple], program: Program) -> dict[str, str]:
    """File key -> archc's name: a file that uses names the program does not have is read
    with PyTorch's names (the spec's ``torch_names:``) put back to archc's."""
    if not program.torch_names or set(shapes) <= set(program.params):
        return {k: k for k in shapes}
    archc_name = {torch: name for name, torch in program.torch_names.items()}
    return {key: archc_name.get(key, key) for key in shapes}


def _as_param(shape: tuple, name: str, program: Program) -> tuple:
    """The shape an array takes as parameter ``name``: a Linear's (out, in) read for a 1x1
    conv's (out, in, 1, 1) takes the conv's (under the conv's own name or torch's), and
    the other way round."""
    want = program.params[name].shape if name in program.params else None
    if want is not None and _strip_ones(shape) == _strip_ones(want):
        return tuple(want)
    return tuple(shape)


def _archc_names(arrays: dict, program: Program) -> dict:
    """``arrays`` keyed by archc's names (:func:`_name_map`), reshaped where renamed."""
    names = _name_map({k: np.shape(v) for k, v in arrays.items()}, program)
    return {names[k]: v.reshape(_as_param(v.shape, names[k], program))
            for k, v in arrays.items()}


def _strip_ones(shape: tuple) -> tuple:
    shape = tuple(shape)
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _problems(shapes: dict[str, tuple], program: Program) -> list[str]:
    """What keeps arrays of these shapes (by archc name) from fitting ``program``."""
    missing = sorted(set(program.params) - set(shapes))
    extra = sorted(set(shapes) - set(program.params))
    wrong = sorted(f"{k} {tuple(shapes[k])} (expected {program.params[k].shape})"
                   for k in set(shapes) & set(program.params)
                   if tuple(shapes[k]) != program.params[k].shape)
    problems = []
    if missing:
        problems.append("missing: " + _listed(missing))
    if extra:
        problems.append("unexpected: " + _listed([shorten(k, 60) for k in extra]))
    if wrong:
        problems.append("wrong shape: " + _listed(wrong, "; "))
    return problems


def _listed(items: list[str], sep: str = ", ", most: int = 12) -> str:
    shown = sep.join(items[:most])
    return shown + (f"{sep}... ({len(items) - most:,} more)" if len(items) > most else "")


def load_matching(path: str | Path, program: Program, allow_nonfinite: bool = False
                  ) -> tuple[dict[str, np.ndarray], list[str]]:
    """For transfer learning: the arrays of a weights file whose name and shape fit
    ``program`` (a replaced head keeps its fresh initialisation), and the names of the
    program's parameters left out."""
    fits = _read(path, program, strict=False, finite=not allow_nonfinite)
    if not fits:
        raise WeightsError(f"no array of {path} fits {program.name} by name and shape")
    return ({k: (v.astype(np.int64) if program.params[k].dtype == "int64"
                 else v.astype(np.float32)) for k, v in fits.items()},
            sorted(set(program.params) - set(fits)))


def load_params(path: str | Path, program: Program, allow_nonfinite: bool = False
                ) -> dict[str, np.ndarray]:
    """Read a weights file (``.npz``, or a PyTorch ``.pt``) for ``program``, refusing
    pickles, non-numbers, NaN and infinite values (unless ``allow_nonfinite``) and any
    array that is missing, unexpected or of the wrong shape (all of them listed), from
    the headers before the data is read."""
    return fitted_params(_read(path, program, strict=True, finite=not allow_nonfinite),
                         program, str(path))


def fitted_params(arrays: dict, program: Program, source: str = "the dict of parameters"
                  ) -> dict[str, np.ndarray]:
    """``arrays`` as ``program``'s parameters (float32, int64 counters), refusing any that is
    missing, unexpected or of the wrong shape (all of them listed, ``source`` named)."""
    arrays = _archc_names({k: np.asarray(v) for k, v in arrays.items()}, program)
    problems = _problems({k: v.shape for k, v in arrays.items()}, program)
    if problems:
        raise WeightsError(f"{source} does not fit {program.name}: " + " | ".join(problems))
    return {k: (v.astype(np.int64) if program.params[k].dtype == "int64" else v.astype(np.float32))
            for k, v in arrays.items()}
