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
from runtime.program import Program


def init_params(program: Program, seed: int = 0) -> dict[str, np.ndarray]:
    """Fresh parameters and buffers for ``program``, reproducible from ``seed``: each as its
    ``ParamSpec.init`` says, drawn in program order."""
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


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    """A PyTorch state_dict saved with torch.save, read with ``weights_only=True`` (tensors
    and plain containers only: never an arbitrary pickle)."""
    try:
        import torch
    except ImportError:
        raise WeightsError(f"{path} is a PyTorch file: reading it needs torch (pip install "
                           "torch), or save the state_dict as .npz") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"no such weights file: {path}") from None
    except Exception as exc:  # torch raises many kinds for a bad or unsafe file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path} is not a readable PyTorch state_dict ({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise WeightsError(f"{path} holds no state_dict (a mapping of names to tensors, as "
                           "model.state_dict() gives)")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _read(path: str | Path) -> dict[str, np.ndarray]:
    if Path(path).suffix in (".pt", ".pth"):
        return _read_torch(Path(path))
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise WeightsError(f"no such weights file: {path}") from None
    except (ValueError, OSError) as exc:
        raise WeightsError(f"{path} is not a readable .npz weights file ({exc})") from None


def _archc_names(arrays: dict, program: Program) -> dict:
    """``arrays`` keyed by archc's names: a file that uses names the program does not have
    is read with PyTorch's names (the spec's ``torch_names:``) put back to archc's."""
    if not program.torch_names or set(arrays) <= set(program.params):
        return arrays
    archc_name = {torch: name for name, torch in program.torch_names.items()}
    out = {}
    for key, value in arrays.items():
        name = archc_name.get(key, key)
        want = program.params[name].shape if name in program.params else None
        if name != key and want is not None and _strip_ones(value.shape) == _strip_ones(want):
            value = value.reshape(want)  # a Linear's (out, in) for a 1x1 conv's (out, in, 1, 1)
        out[name] = value
    return out


def _strip_ones(shape: tuple) -> tuple:
    shape = tuple(shape)
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def load_matching(path: str | Path, program: Program) -> tuple[dict[str, np.ndarray], list[str]]:
    """For transfer learning: the arrays of an ``.npz`` whose name and shape fit
    ``program`` (a replaced head keeps its fresh initialisation), and the names of the
    program's parameters left out."""
    arrays = _archc_names(_read(path), program)
    fits = {k: v for k, v in arrays.items()
            if k in program.params and tuple(v.shape) == program.params[k].shape}
    if not fits:
        raise WeightsError(f"no array of {path} fits {program.name} by name and shape")
    return ({k: (v.astype(np.int64) if program.params[k].dtype == "int64"
                 else v.astype(np.float32)) for k, v in fits.items()},
            sorted(set(program.params) - set(fits)))


def load_params(path: str | Path, program: Program) -> dict[str, np.ndarray]:
    """Read an ``.npz`` of parameters for ``program``, refusing pickles and any array that is
    missing, unexpected or of the wrong shape (all of them listed)."""
    return fitted_params(_read(path), program, str(path))


def fitted_params(arrays: dict, program: Program, source: str = "the dict of parameters"
                  ) -> dict[str, np.ndarray]:
    """``arrays`` as ``program``'s parameters (float32, int64 counters), refusing any that is
    missing, unexpected or of the wrong shape (all of them listed, ``source`` named)."""
    arrays = _archc_names({k: np.asarray(v) for k, v in arrays.items()}, program)
    missing = sorted(set(program.params) - set(arrays))
    extra = sorted(set(arrays) - set(program.params))
    wrong = sorted(f"{k} {tuple(arrays[k].shape)} (expected {program.params[k].shape})"
                   for k in set(arrays) & set(program.params)
                   if tuple(arrays[k].shape) != program.params[k].shape)
    problems = []
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if extra:
        problems.append("unexpected: " + ", ".join(extra))
    if wrong:
        problems.append("wrong shape: " + "; ".join(wrong))
    if problems:
        raise WeightsError(f"{source} does not fit {program.name}: " + " | ".join(problems))
    return {k: (v.astype(np.int64) if program.params[k].dtype == "int64" else v.astype(np.float32))
            for k, v in arrays.items()}
