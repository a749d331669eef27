"""A program with its parameters, runnable: ``model(x)``, ``model.train()``, ``model.eval()``."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from runtime.backends.base import Backend
from runtime.backends.reference import KERNELS
from runtime.backends.reference_backward import BACKWARD
from runtime.memory import MemoryPlan, plan_memory
from runtime.packing import Packs
from runtime.limits import check_program
from runtime.params import fitted_params, init_params, load_matching, load_params, save_params
from runtime.errors import InputError
from runtime.program import Program
from runtime.context import KernelContext
from runtime import warmup

def _backend(name: str) -> Backend:
    if name == "reference":
        return Backend("reference", KERNELS, BACKWARD)
    if name == "cpu":
        from runtime.backends import cpu  # compiles (or loads cached) Numba kernels

        return Backend("cpu", cpu.KERNELS, cpu.BACKWARD, cpu.scope, algorithm=cpu.algorithm,
                       chains=cpu.chains, chain_kernel=cpu.chain_forward,
                       channels_last=cpu.channels_last, add=cpu.add_arrays)
    if name == "cuda":
        from runtime.backends.cuda import CudaUnavailable, unavailable_reason

        reason = unavailable_reason()
        if reason is not None:
            raise CudaUnavailable(reason)
        from runtime.backends.cuda.backend import BACKEND

        return BACKEND
    raise ValueError(f"unknown backend '{name}' (available: {', '.join(BACKENDS)})")


BACKENDS = ("cpu", "reference", "cuda")
WARMUP_PASSES = 2  # untimed passes before Model.profile's timed ones


def _root(array: np.ndarray) -> np.ndarray:
    """The array that owns the memory behind ``array`` (itself unless it is a view)."""
    while isinstance(getattr(array, "base", None), np.ndarray):
        array = array.base
    return array


class _Alive:
    """The bytes of the distinct memory blocks behind the arrays of a pass that are alive
    (views count once), kept up to date as arrays come and go, and the most there were."""

    def __init__(self, arrays):
        self.blocks: dict[int, list] = {}  # id -> [root, arrays alive on it]
        self.roots: dict[int, np.ndarray] = {}  # id of an array alive -> its root
        self.bytes = self.peak = 0
        for array in arrays:
            self.add(array)

    def add(self, array) -> None:
        root = self.roots[id(array)] = _root(array)
        block = self.blocks.get(id(root))
        if block is None:
            self.blocks[id(root)] = [root, 1]
            self.bytes += root.nbytes
            self.peak = max(self.peak, self.bytes)
        else:
            block[1] += 1

    def drop(self, array) -> None:
        root = self.roots.pop(id(array), None)
        if root is None:
            root = _root(array)
        block = self.blocks[id(root)]
        block[1] -= 1
        if not block[1]:
            del self.blocks[id(root)]
            self.bytes -= root.nbytes


def _on_a_device(value) -> bool:
    """Whether ``value`` is a device array (numba's; the CUDA simulator's stand-in too):
    a device loss's gradient, inputs already on the GPU."""
    return not isinstance(value, np.ndarray) and (
        hasattr(value, "__cuda_array_interface__") or hasattr(value, "copy_to_host"))


class Gradients:
    """``params``: name -> gradient of every trainable parameter; ``inputs``: name ->
    gradient of every network input."""

    def __init__(self, params: dict[str, np.ndarray], inputs: dict[str, np.ndarray]):
        self.params, self.inputs = params, inputs

    @property
    def input(self) -> np.ndarray:
        """The input gradient of a single-input network."""
        (value,) = self.inputs.values()
        return value


class Model:
    """Run a :class:`Program` on a backend (forward pass; ``reference`` is plain NumPy)."""

    def __init__(self, program: Program, backend: str = "reference", seed: int = 0,
                 dtype=np.float32, params: dict | None = None):
        self.program = program
        self.backend = _backend(backend)
        self.kernels, self.backward_kernels = self.backend.kernels, self.backend.backward
        self.chain_kernel = self.backend.chain_kernel
        self._chains: dict[int, tuple[dict, set]] = {}  # batch -> (first step: chain, the rest)
        self._layouts: dict[int, frozenset] = {}  # batch -> values kept channels-last
        self._schedules: dict[tuple[int, bool], list] = {}  # (batch, training) -> _steps
        # max pools whose positions an op reads in every pass (max unpooling)
        self._positions = frozenset(op.inputs[1] for op in program.ops
                                    if op.kind == "max_unpool2d" and len(op.inputs) > 1)
        self._scope = self.backend.scope
        self.dtype = np.dtype(dtype)
        self._host_stale = False
        self._packs = Packs()  # weights repacked for the kernels (runtime.packing)
        self._kernel_plans: dict = {}  # what kernels decided once per op (KernelContext.plans)
        given = init_params(program, seed) if params is None else fitted_params(
            params, program, "the dict of parameters")
        self.params = self._typed(given)
        self.training = False
        self.rng = np.random.default_rng(seed)
        self._tape: tuple[dict, dict] | None = None
        self._plans: dict[tuple[int, bool], MemoryPlan] = {}
        self._arenas: dict = {}  # a device backend's buffers for the memory plans
        self._checked: set = set()  # (batch, training) found to fit in memory
        # (training, backward) passes run once (runtime.warmup: their kernels compiled)
        self._first_passes: set = set()
        self._helpers: warmup.Helpers | None = None  # compiling beside a training pass
        # batch norm's statistics across processes (runtime.train.distributed.SyncBatchNorm): in
        # training, every batch-norm layer combines its batch's moments with the other
        # processes' through this, forward and backward
        self.sync_bn = None
        # op index -> the trainable parameters whose gradient is final once that op's
        # backward has run (the first op, in forward order, that reads them)
        first: dict[str, int] = {}
        for step, op in enumerate(program.ops):
            for full in op.params.values():
                if program.params[full].trainable:
                    first.setdefault(full, step)
        self._final_grads: dict[int, list[str]] = {}
        for full, step in first.items():
            self._final_grads.setdefault(step, []).append(full)

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Name -> host array, PyTorch names and layouts. On a device backend the arrays
        are uploaded at the next pass after they are replaced (assigning ``params``,
        ``load``, ``load_matching``; after changing one in place, call ``sync()``), and
        fetched back here after the device copies changed (training)."""
        if self._host_stale:
            self._params = {k: self.backend.to_host(v) for k, v in self._device_params.items()}
            self._host_stale = False
        return self._params

    @params.setter
    def params(self, value: dict[str, np.ndarray]) -> None:
        self._params = value
        self._device_params = None
        self._host_stale = False
        self._packs.clear()

    def sync(self) -> None:
        """Upload the parameters to the device again at the next pass, and repack them for
        the kernels (call it after changing a parameter in place)."""
        self._params = self.params  # fetch what the device changed first
        self._device_params = None
        self._packs.clear()

    def _on_host(self) -> bool:
        return self.backend.to_device is self.backend.to_host  # the host is the device

    def _params_on_device(self) -> dict:
        if self._on_host():
            return self._params
        if self._device_params is None:
            self._device_params = {k: self.backend.to_device(v) for k, v in self._params.items()}
        return self._device_params

    def device_params(self) -> dict:
        """The arrays the passes read: on the device for a GPU backend (the host arrays on
        the CPU). An optimiser updates these in place (its ``kernels`` are
        ``backend.optim``); ``params`` fetches them back when it is next read."""
        device = self._params_on_device()
        self._host_stale = not self._on_host()
        self._packs.clear()  # the caller may write them
        return device

    def train(self) -> "Model":
        self.training = True
        return self

    def eval(self) -> "Model":
        self.training = False
        return self

    def _skipped(self) -> frozenset[int]:
        """The steps this mode's passes leave out: in inference, those only training
        outputs need."""
        return frozenset() if self.training else self.program.training_only

    def _repr_html_(self) -> str:
        """In a notebook: what is compiled, for which backend, in which mode."""
        from runtime.notebook import model_html

        return model_html(self)

    def parameters(self) -> dict[str, np.ndarray]:
        """Name -> array, PyTorch names and layouts (buffers included, as in a state_dict)."""
        return self.params

    def memory_plan(self, batch: int = 1, keep_all: bool = False) -> MemoryPlan:
        """The inference buffer plan (arena size, peak and naive bytes) for a batch;
        ``keep_all``: the plan of a forward pass that keeps every value for backward."""
        if (batch, keep_all) not in self._plans:
            self._plans[batch, keep_all] = plan_memory(self.program, batch, keep_all)
        return self._plans[batch, keep_all]

    def check_batch(self, batch: int, keep: bool = False) -> None:
        """Refuse a batch whose pass would need more memory than the limit
        (:func:`runtime.limits.check_program`); ``keep``: a pass that keeps every value
        for backward, counted as training."""
        key = (batch, keep)
        if key not in self._checked:
            check_program(self.program, batch, keep)
            self._checked.add(key)

    def _planned(self, ctx: KernelContext, values: dict, keep: bool) -> None:
        """Tell a device backend's kernels where the memory plan puts each result (in one
        buffer per model and kind of pass; on the CPU, NumPy's allocator serves). A
        forward pass for backward keeps every value, and leaves its outputs out: they are
        handed to the caller."""
        if self._on_host():
            return
        batch = next(iter(values.values())).shape[0]
        ctx.plan, ctx.batch = self.memory_plan(batch, keep_all=keep), batch
        ctx.arena = (self._arenas, "tape" if keep else "predict")
        ctx.unplanned = set(self.program.outputs_of(self.training).values()) if keep else set()

    def load(self, path: str | Path, allow_nonfinite: bool = False) -> None:
        """Take the parameters of a weights file (``.npz``; ``.pt``), which must fit
        exactly; NaN and infinite values are refused unless ``allow_nonfinite``."""
        self.params = self._typed(load_params(path, self.program, allow_nonfinite))

    def _typed(self, params: dict) -> dict[str, np.ndarray]:
        """Floating arrays in the model's dtype (a copy only where it differs); counters
        stay int64."""
        return {k: v if v.dtype == np.int64 else v.astype(self.dtype, copy=False)
                for k, v in params.items()}

    def load_matching(self, path: str | Path, allow_nonfinite: bool = False) -> list[str]:
        """Take the parameters of an ``.npz`` that fit by name and shape (transfer
        learning: a head with a new number of classes keeps its initialisation); returns
        the names left as they were."""
        loaded, skipped = load_matching(path, self.program, allow_nonfinite)
        self.params.update(self._typed(loaded))
        self.sync()
        return skipped

    def state_dict(self) -> dict[str, np.ndarray]:
        """The parameters under the names PyTorch's ``state_dict`` gives them (the spec's
        ``torch_names:``; the same as :attr:`params` for most specs)."""
        names = self.program.torch_names
        return {names.get(k, k): v for k, v in self.params.items()}

    def save(self, path: str | Path) -> Path:
        return save_params(path, self.params)

    def _inputs(self, x) -> tuple[dict[str, np.ndarray], dict]:
        """The arrays given, checked and on the device, and the late inputs: those given as
        a function, called in the pass when the first op that reads them is reached
        (:meth:`_late`)."""
        names = list(self.program.inputs)
        given = x if isinstance(x, dict) else {names[0]: x} if len(names) == 1 else None
        if given is None:
            raise InputError(f"this network has inputs {names}: pass a dict of arrays")
        out, late = {}, {}
        for name in names:
            if name not in given:
                raise InputError(f"input '{name}' is missing")
            if callable(given[name]):
                late[name] = given[name]
            else:
                out[name] = self._checked_input(name, given[name])
        if not out:
            raise InputError(f"input '{names[0]}' must be an array (only inputs that a "
                             f"layer reads after others may be given as a function)")
        return out, late

    def _checked_input(self, name: str, value) -> np.ndarray:
        want = self.program.inputs[name]
        if _on_a_device(value):
            # a device array (the data already on the GPU): taken as it is on the device
            # backend, brought over on a host one; its shape checked as a host array's
            if np.dtype(value.dtype) != self.dtype:
                raise InputError(f"input '{name}' is a device array of {value.dtype}; the "
                                 f"model computes in {self.dtype}: convert it first")
            arr = value.copy_to_host() if self._on_host() else value
        else:
            arr = np.asarray(value, dtype=self.dtype)
        if len(arr.shape) != len(want) + 1 or tuple(arr.shape[1:]) != want:
            raise InputError(f"input '{name}' must have shape (N, {', '.join(map(str, want))}),"
                             f" got {tuple(arr.shape)}")
        return self.backend.to_device(arr)

    def _late(self, late: dict, values: dict, needed) -> None:
        """Compute the late inputs among ``needed`` that are not yet in ``values``: each
        function is called with the outputs computed so far (on the host, per image, keyed
        as the model's outputs are), and must give the input's array for the whole batch.
        A detector's proposals come from its region proposal network's outputs this way,
        in the middle of the pass that uses them."""
        for name in needed:
            if name in late and name not in values:
                ready = {key: self._per_image(self.backend.to_host(values[value]), value)
                         for key, value in self.program.outputs.items() if value in values}
                array = self._checked_input(name, late[name](ready))
                batch = len(next(iter(values.values())))
                if len(array) != batch:
                    raise InputError(f"input '{name}' was computed for {len(array)} images; "
                                     f"the batch has {batch}")
                values[name] = array

    def _context(self, keep: bool) -> KernelContext:
        return KernelContext(train=self.training, rng=self.rng, keep=keep,
                             sync_bn=self.sync_bn if self.training else None,
                             packs=self._packs, plans=self._kernel_plans,
                             positions=self._positions)

    def _outputs(self, values: dict, host: bool = True):
        move = self.backend.to_host if host else (lambda v: v)
        outs = {key: self._per_image(move(values[name]), name)
                for key, name in self.program.outputs_of(self.training).items()}
        return next(iter(outs.values())) if len(outs) == 1 else outs

    def _per_image(self, value, name: str):
        """A value with several rows per image (one per box, after a region layer) as
        (N, items, ...); others as they are."""
        items = self.program.items(name)
        return value if items == 1 else value.reshape((-1, items) + tuple(value.shape[1:]))

    def __call__(self, x, *, host: bool = True):
        """Forward pass: one array in (or a dict for several inputs), one array out (or a
        dict keyed by output name for several outputs). In a dict, an input may be a
        function of the outputs computed before the first layer that reads it (a dict keyed
        by output name, on the host, per image): it is called then (a detector's proposals
        from its RPN's outputs, :mod:`runtime.train.rcnn`). ``host=False`` leaves the outputs
        where they were computed (a device array on a GPU backend: the training loop's
        loss runs there too). ``last_unplaced``: as for :meth:`predict`."""
        values, late = self._inputs(x)
        self.check_batch(len(next(iter(values.values()))), keep=True)
        ctx = self._context(keep=True)  # keep: what backward() needs
        self._planned(ctx, values, keep=True)
        # training updates batch-norm running statistics in place, on the device
        device = self.device_params() if self.training else self._params_on_device()
        with self._scope(), self._first_pass(len(next(iter(values.values()))),
                                             backward=False) as watch:
            skip = self._skipped()
            for step, op in enumerate(self.program.ops):
                if step in skip:  # only training outputs need it
                    continue
                if watch is not None:
                    watch.before(step)
                if late:
                    self._late(late, values, op.inputs)
                params = {role: device[full] for role, full in op.params.items()}
                values[op.output] = self.kernels[op.kind](op, [values[i] for i in op.inputs],
                                                          params, ctx)
        self._tape = (values, ctx)
        self.last_unplaced = list(ctx.unplaced)
        return self._outputs(values, host)

    def intermediates(self, x) -> dict[str, np.ndarray]:
        """Every value a forward pass computes, by name (inputs included): what a layer
        receives and what it gives, for looking inside a network or calibrating a pass."""
        self(x)
        return {k: self.backend.to_host(v) for k, v in self._tape[0].items()}

    def predict(self, x):
        """A forward pass that keeps nothing for backward(): each value is dropped after
        the last op that reads it (the liveness of the memory plan), so its memory goes
        back for the next ones. ``last_peak_bytes`` is then the most activation memory
        that was alive at once, measured on the arrays themselves (inputs included);
        ``last_unplaced`` the outputs a device backend left outside its memory plan's
        buffer (none, unless a kernel does not ask for its result where the plan puts it)."""
        values, late = self._inputs(x)
        batch = len(next(iter(values.values())))
        self.check_batch(batch)
        ctx = self._context(keep=False)
        self._planned(ctx, values, keep=False)
        device = self._params_on_device()
        if not self.training:
            ctx.channels_last = self.channels_last(batch)
        alive = _Alive(values.values())
        kernels, chain_kernel = self.kernels, self.chain_kernel  # Model.profile swaps them
        with self._scope(), self._first_pass(batch, backward=False) as watch:
            for step, op, chain, output, drops in self._steps(batch):
                if watch is not None:
                    watch.before(step)
                if late:
                    known = set(values)
                    self._late(late, values, chain.inputs if chain is not None else op.inputs)
                    for name in set(values) - known:
                        alive.add(values[name])
                if chain is not None:  # its ops as one kernel (Backend.chains)
                    params = [{role: device[full] for role, full in member.params.items()}
                              for member in chain.ops]
                    out = chain_kernel(chain, [values[i] for i in chain.inputs], params, ctx)
                else:
                    params = {role: device[full] for role, full in op.params.items()}
                    out = kernels[op.kind](op, [values[i] for i in op.inputs], params, ctx)
                values[output] = out
                alive.add(out)
                for name in drops:
                    alive.drop(values.pop(name))
        self._tape = None
        self.last_peak_bytes = alive.peak
        self.last_unplaced = list(ctx.unplaced)
        return self._outputs(values)

    def _steps(self, batch: int) -> list[tuple]:
        """The schedule of a pass that keeps nothing at this batch size, made once: per
        kernel call, (its step, its op, its chain or None, the value it writes, the values
        dropped after it: those no later call reads), so that the pass does no bookkeeping
        of its own between kernels. A chain's ops are one call, at its first op's step."""
        key = (batch, self.training)
        if key not in self._schedules:
            heads, inside = self.chains(batch) if not self.training else ({}, set())
            drops: dict[int, list[str]] = {}
            for name, step in self._last_uses().items():
                drops.setdefault(step, []).append(name)
            made = set(self.program.inputs)  # what the calls compute (not chains' insides)
            steps: list[list] = []
            skip = self._skipped()
            for step, op in enumerate(self.program.ops):
                if step in skip:  # only training outputs need it
                    continue
                if step not in inside:
                    chain = heads.get(step)
                    output = op.output if chain is None else chain.output
                    made.add(output)
                    steps.append([step, op, chain, output, []])
                # what this op read last: dropped after the call that ran it (its chain's)
                steps[-1][4] += [name for name in drops.get(step, []) if name in made]
            self._schedules[key] = [tuple(step) for step in steps]
        return self._schedules[key]

    def chains(self, batch: int) -> tuple[dict, set]:
        """The groups of ops an inference pass at this batch size runs as one kernel
        (``Backend.chains``): {the step of a group's first op: the group}, and the steps
        of the other ops of every group (skipped: the group computed them)."""
        if batch not in self._chains:
            step_of = {op.name: step for step, op in enumerate(self.program.ops)}
            heads, inside = {}, set()
            for chain in self.backend.chains(self.program, batch, self.dtype):
                steps = [step_of[op.name] for op in chain.ops]
                if any(step in heads or step in inside for step in steps):
                    raise RuntimeError(f"the {self.backend.name} backend put an op in two "
                                       f"chains ({chain.describe()})")
                heads[steps[0]] = chain
                inside.update(steps[1:])
            self._chains[batch] = heads, inside
        return self._chains[batch]

    def algorithm(self, op, batch: int, train: bool | None = None) -> tuple[str, str] | None:
        """(algorithm, why) this model runs an op with at a batch size (in its own mode
        unless ``train`` says): in inference, a chain (:meth:`chains`) or the backend's
        choice with the layout the plan gives it (:meth:`channels_last`); else the
        backend's choice (``Backend.algorithm``), None where the op's kind has one way."""
        train = self.training if train is None else train
        how = self.backend.algorithm(op, batch, train)
        if train:
            return how
        for chain in self.chains(batch)[0].values():
            if any(member is op for member in chain.ops):
                head = chain.ops[0]
                return ("chain", f"{chain.describe()} as one kernel") if head is op else \
                    ("chain", f"computed in {head.name}'s chain")
        last = self.channels_last(batch)
        sides = [side for side, name in (("in", op.inputs[0] if op.inputs else None),
                                         ("out", op.output)) if name in last]
        if how is not None and sides:
            return (f"{how[0]}, channels-last",
                    f"{how[1]}; channels-last {' and '.join(sides)} (the layout plan)")
        return how

    def channels_last(self, batch: int) -> frozenset[str]:
        """The values an inference pass at this batch size keeps channels-last, (N, H, W,
        C), rather than as planes (``Backend.channels_last``; the CPU's layout plan), the
        ops of :meth:`chains` aside."""
        if batch not in self._layouts:
            heads, inside = self.chains(batch)
            chained = frozenset(op.name for chain in heads.values() for op in chain.ops)
            self._layouts[batch] = self.backend.channels_last(self.program, batch, chained)
        return self._layouts[batch]

    def profile(self, x, *, repeat: int = 3, backward: bool = False) -> dict[str, dict]:
        """Seconds per op, by op name: ``{"forward": s}`` (and ``"backward"``: the
        backward pass of the same forward), the mean over ``repeat`` passes after
        WARMUP_PASSES untimed ones (kernel compilation, cache loading, and the memory a
        pass takes: a training pass's tape lives on while the next pass runs, so the
        freed memory the next passes reuse is settled only after the second; the first
        two passes of ResNet-20's training step at batch 128 took 438 and 294 MB of fresh
        pages, the third none). Without ``backward`` the passes are :meth:`predict`'s
        (inference, nothing kept; a group of ops run as one kernel, :meth:`chains`, is
        timed under its first op's name, the others absent). Timed with the backend's
        clock: CUDA events on a GPU, so a kernel's time is its own and not its launch's."""
        clock = self.backend.clock()
        marks: list = []

        def timed(table: dict, direction: str) -> dict:
            def wrap(kernel):
                def run(op, *args):
                    start = clock.mark()
                    out = kernel(op, *args)
                    marks.append((op.name, direction, start, clock.mark()))
                    return out
                return run
            return {kind: wrap(kernel) for kind, kernel in table.items()}

        tables = self.kernels, self.backward_kernels, self.chain_kernel
        self.kernels, self.backward_kernels = timed(tables[0], "forward"), timed(tables[1],
                                                                                   "backward")
        if self.chain_kernel is not None:  # a chain's time is its first op's
            self.chain_kernel = timed({"chain": self.chain_kernel}, "forward")["chain"]
        times: dict[str, dict] = {}
        try:
            for rep in range(repeat + WARMUP_PASSES):
                marks.clear()
                self._profiled_pass(x, backward)
                clock.sync()
                if rep < WARMUP_PASSES:
                    continue
                for name, direction, start, end in marks:
                    entry = times.setdefault(name, {})
                    spent = clock.seconds(start, end) / repeat
                    entry[direction] = entry.get(direction, 0.0) + spent
        finally:
            self.kernels, self.backward_kernels, self.chain_kernel = tables
        return times

    def _profiled_pass(self, x, backward: bool) -> None:
        """The pass a profile times: predict()'s (inference, fused epilogues), or a
        training step's forward and backward passes (gradients left on the device)."""
        if not backward:
            self.predict(x)
            return
        y = self(x, host=False)
        outs = y if isinstance(y, dict) else {next(iter(self.program.outputs)): y}
        self.backward({k: np.ones(v.shape, self.dtype) for k, v in outs.items()},
                      host=False, inputs=False)

    def profile_kernels(self, x, *, repeat: int = 3,
                        backward: bool = False) -> list[tuple[str, float, float]]:
        """(kernel, calls per pass, seconds per pass), the most time first: each kernel
        and library GEMM of :meth:`profile`'s passes on its own (the mean over ``repeat``
        passes after WARMUP_PASSES), for a backend that tells its kernels apart (CUDA:
        ``Backend.kernel_times``; ValueError elsewhere)."""
        if self.backend.kernel_times is None:
            raise ValueError(f"the {self.backend.name} backend does not time its kernels "
                             f"one by one (the CUDA backend does)")
        clock = self.backend.clock()
        for _ in range(WARMUP_PASSES):
            self._profiled_pass(x, backward)
        clock.sync()
        with self.backend.kernel_times(clock) as times:
            for _ in range(repeat):
                self._profiled_pass(x, backward)
        return times.rows(passes=repeat)

    @contextmanager
    def _first_pass(self, batch: int, backward: bool):
        """Around a pass, yielding a ``runtime.warmup.Watch`` to tell before each op (or
        None): the first pass of its kind (training or not, backward or not) on the CPU
        backend starts helper processes if it compiles a kernel (runtime.warmup), and
        stops them when it ends; those a training forward pass started compile its
        backward kernels too and are stopped after the first backward pass."""
        key = (self.training, backward)
        if self.backend.name != "cpu" or (key in self._first_passes and self._helpers is None):
            yield None
            return
        self._first_passes.add(key)
        jobs = warmup.compile_jobs()
        watch = warmup.Watch(self._helpers, backward)

        def start():
            if self._helpers is None and jobs > 1:
                steps = warmup.firsts(self.program, self.algorithm, batch, self.training)
                self._helpers = watch.helpers = warmup.start_helpers(
                    self.program, self.dtype, batch, self.training, jobs, steps,
                    at=watch.step, backward=backward)
        try:
            with warmup.on_first_compile(start):
                yield watch
        finally:
            if self._helpers is not None and (backward or not self.training):
                self._helpers.stop()
                self._helpers = None

    def _last_uses(self) -> dict[str, int]:
        """Value name -> the step of the last op that reads it (outputs: never freed)."""
        last: dict[str, int] = {}
        skip = self._skipped()
        for step, op in enumerate(self.program.ops):
            if step in skip:
                continue
            last.setdefault(op.output, step)  # read by nothing: dropped at once
            for name in op.inputs:
                last[name] = step
        for name in self.program.outputs_of(self.training).values():
            last.pop(name, None)
        return last

    def backward(self, grad_output, *, host: bool = True, on_grad=None,
                 inputs: bool = True) -> "Gradients":
        """Gradients of the last forward pass, given the gradient of its output (an array,
        or a dict keyed by output name; a dict may also give the gradient of any node by
        its name, to look inside the network): every trainable parameter's and every
        input's.
        Where a value feeds several layers, their gradients add up. ``host=False`` leaves
        them on the device (for an optimiser with the backend's ``optim`` kernels).
        ``on_grad(name, gradient)`` is called for each parameter as soon as its gradient
        is final, while the pass goes on (data-parallel training starts sending it).
        ``inputs=False`` leaves the inputs' gradients out (``Gradients.inputs`` is then
        empty): a training step needs only the parameters', and the layers fed by the
        network's inputs skip computing them."""
        if self._tape is None:
            raise RuntimeError("backward() needs a forward pass first: call model(x) "
                               "(predict() keeps nothing for it)")
        values, ctx = self._tape
        outputs, add = self.program.outputs_of(self.training), self.backend.add
        given = grad_output if isinstance(grad_output, dict) else {next(iter(outputs)): grad_output}
        grads: dict = {}
        for key, g in given.items():
            name = outputs.get(key, key)  # an output's key, or any node's name
            if name not in values:
                raise InputError(f"no output or node '{key}' to start backward() from "
                                 f"(outputs: {', '.join(outputs)})")
            g = g if _on_a_device(g) else np.asarray(g, dtype=self.dtype)
            g = self.backend.to_device(g)
            if self.program.items(name) > 1:  # given as (N, items, ...), held as rows
                g = g.reshape((-1,) + tuple(values[name].shape[1:]))
            grads[name] = add(grads[name], g) if name in grads else g
        param_grads: dict = {}
        batch = len(next(iter(values[name] for name in self.program.inputs)))
        with self._scope(), self._first_pass(batch, backward=True) as watch:
            self._backward(values, ctx, grads, param_grads, on_grad, inputs, watch)
        move = self.backend.to_host if host else (lambda v: v)
        input_grads = {name: move(grads[name]) if name in grads else
                       move(self.backend.to_device(np.zeros(values[name].shape, self.dtype)))
                       for name in self.program.inputs} if inputs else {}
        return Gradients({k: move(v) for k, v in param_grads.items()}, input_grads)

    def _backward(self, values, ctx, grads, param_grads, on_grad=None,
                  inputs: bool = True, watch=None) -> None:
        device, add = self._params_on_device(), self.backend.add
        for step in reversed(range(len(self.program.ops))):
            op = self.program.ops[step]
            if watch is not None:
                watch.before(step)
            gy = grads.pop(op.output, None)
            if gy is None:
                continue
            params = {role: device[full] for role, full in op.params.items()}
            ctx.input_grads = inputs or not all(i in self.program.inputs for i in op.inputs)
            gxs, gps = self.backward_kernels[op.kind](
                op, [values[i] for i in op.inputs], values[op.output], gy, params, ctx)
            for name, g in zip(op.inputs, gxs):
                if g is not None:
                    grads[name] = add(grads[name], g) if name in grads else g
            for role, g in gps.items():
                full = op.params[role]
                if self.program.params[full].trainable:
                    param_grads[full] = add(param_grads[full], g) if full in param_grads else g
            if on_grad is not None:
                for full in self._final_grads.get(step, ()):
                    if full in param_grads:
                        on_grad(full, param_grads[full])
