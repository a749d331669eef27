"""A helper process of :mod:`runtime.warmup`: ``python -m runtime.compile_helper FOLDER``
runs the ops of the job in FOLDER that it claims, so that their kernels land in Numba's
cache before the model's own pass reaches them. (Its own module, apart from
``runtime.warmup``, because it builds a :class:`runtime.model.Model`, which imports
``runtime.warmup``.)"""

from __future__ import annotations

import os
import pickle
import stat
import sys

import numpy as np

from runtime.context import KernelContext
from runtime.model import Model
from runtime.warmup import claim


def run_ops(folder: str) -> None:
    """A helper's work: each item of the job in ``folder`` that it claims (see
    :class:`Helpers`), its op run on random inputs of the op's shapes (the forward pass
    before a backward item). An op that cannot run alone (one reading what another op
    left in the pass, such as max unpooling's indices) is skipped: this only fills the
    cache, and the model's pass compiles whatever a helper missed."""
    job = read_job(folder)
    program, batch, training = job["program"], job["batch"], job["training"]
    dtype = np.dtype(job["dtype"])
    zeros = {name: np.zeros(spec.shape, spec.dtype) for name, spec in program.params.items()}
    model = Model(program, backend="cpu", dtype=dtype, params=zeros)
    rng = np.random.default_rng(0)
    heads = {} if training else model.chains(batch)[0]  # ops an inference pass runs as one
    last = frozenset() if training else model.channels_last(batch)  # (N, H, W, C) values
    with model._scope():
        for item in job["order"]:
            if not claim(folder, item):
                continue
            op = program.ops[int(item[1:])]
            ctx = KernelContext(train=training, rng=rng, keep=training, packs=model._packs)
            ctx.input_grads = not all(i in program.inputs for i in op.inputs)
            ctx.channels_last = last
            chain = heads.get(int(item[1:])) if item[0] == "f" else None
            try:
                if chain is not None:  # its kernel, not its ops' own
                    _run_chain(model, chain, batch, dtype, rng, ctx)
                else:
                    params = {role: model.params[full] for role, full in op.params.items()}
                    xs = [rng.standard_normal((batch,) + _laid_out(shape, name in last))
                          .astype(dtype) for name, shape in zip(op.inputs, op.in_shapes)]
                    y = model.kernels[op.kind](op, xs, params, ctx)
                    if item[0] == "b" and op.kind in model.backward_kernels:
                        model.backward_kernels[op.kind](op, xs, y, np.ones_like(y), params, ctx)
            except Exception:  # noqa: BLE001 (the model's pass compiles what this missed)
                pass
            os.close(os.open(os.path.join(folder, f"done-{item}"), os.O_CREAT | os.O_WRONLY))


def read_job(folder: str) -> dict:
    """The job runtime.warmup.Helpers wrote for this run in the private folder (mkdtemp,
    0700) it made: unpickled only if that folder and the file are this user's, and nobody
    else may write them (the file a regular one, not a link): a pickle runs code as it
    loads, so a job that another user could have written or swapped is refused
    (PermissionError) before a byte of it is read."""
    path = os.path.join(folder, "job.pkl")
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
        for what, info in (("folder", os.stat(folder)), ("file", os.fstat(f.fileno()))):
            if info.st_uid != os.getuid() or info.st_mode & 0o022:
                raise PermissionError(f"compile job {path}: the {what} is not this user's "
                                      "alone (another user owns it or may write it)")
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise PermissionError(f"compile job {path}: not a regular file")
        return pickle.load(f)


def _laid_out(shape, channels_last: bool) -> tuple:
    """A value's shape (without the batch) as its array holds it: (H, W, C) for a
    channels-last map (Model.channels_last)."""
    shape = tuple(shape)
    return shape[1:] + shape[:1] if channels_last else shape


def _run_chain(model, chain, batch, dtype, rng, ctx) -> None:
    """A chain of ops run as one kernel (Backend.chains) on random inputs."""
    shapes = [chain.ops[0].in_shapes[0]] + list(chain.project.in_shapes[1:] if chain.project
                                                else ())
    xs = [rng.standard_normal((batch,) + tuple(shape)).astype(dtype) for shape in shapes]
    params = [{role: model.params[full] for role, full in member.params.items()}
              for member in chain.ops]
    model.chain_kernel(chain, xs, params, ctx)


if __name__ == "__main__":
    try:
        run_ops(sys.argv[1])
    except PermissionError as exc:  # the model's pass compiles alone
        sys.exit(f"archc compile helper: {exc}")
