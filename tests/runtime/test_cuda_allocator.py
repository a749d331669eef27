"""The CUDA backend's caching allocator (runtime/backends/cuda/allocator.py): the pool's
bookkeeping with a stand-in driver, the numba-cuda plugin on numba-cuda's real driver
module with the two driver calls stood in for (in a process without the simulator, which
has no memory managers), and on a GPU (ARCHC_CUDA=real) a training step that allocates
nothing from the driver once warm."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.backends.cuda import allocator

ROOT = Path(__file__).resolve().parents[2]


@given(st.integers(0, 1 << 40))
def test_block_sizes_cover_the_request_and_waste_at_most_an_eighth(size):
    block = allocator.block_size(size)
    assert block >= max(size, 1) and block % allocator.GRANULE == 0
    if size > allocator.SMALL:
        assert block <= size * 1.125
    else:
        assert block - max(size, 1) < allocator.GRANULE
    assert allocator.block_size(block) == block  # a block's own size is a block size


class Driver:
    """cuMemAlloc and cuMemFree stood in for: addresses counted up, a memory limit."""

    def __init__(self, limit=1 << 30):
        self.next, self.limit, self.live, self.freed = 4096, limit, {}, []

    def allocate(self, nbytes):
        if sum(self.live.values()) + nbytes > self.limit:
            raise MemoryError("out of memory")
        address, self.next = self.next, self.next + nbytes
        self.live[address] = nbytes
        return address

    def free(self, address):
        self.freed.append(address)
        del self.live[address]


def test_the_pool_hands_freed_blocks_out_again():
    driver = Driver()
    pool = allocator.Pool(driver.allocate, driver.free)
    a, block = pool.take(1000)
    assert block == 1024 and driver.live == {a: 1024}
    pool.give(a, block)
    assert pool.take(1020) == (a, 1024)  # the same block size: the same block, no driver
    b, _ = pool.take(1000)  # the first is in use: a new one
    assert b != a and pool.stats() == {"driver_allocations": 2, "reused": 1,
                                       "in_use_bytes": 2048, "cached_bytes": 0,
                                       "peak_bytes": 2048}
    pool.give(a, 1024)
    pool.give(b, 1024)
    big, big_block = pool.take(3 << 20)
    assert big_block == 3 << 20 and pool.stats()["cached_bytes"] == 2048
    pool.release()  # the cached blocks go back to the driver; the one in use stays
    assert sorted(driver.freed) == sorted([a, b]) and list(driver.live) == [big]
    assert pool.stats()["cached_bytes"] == 0


def test_out_of_memory_frees_what_is_cached_and_tries_again():
    driver = Driver(limit=4 << 20)
    pool = allocator.Pool(driver.allocate, driver.free)
    kept = [pool.take(1 << 20) for _ in range(3)]
    for address, block in kept:
        pool.give(address, block)
    address, block = pool.take(2 << 20)  # 3 MiB cached + 2 MiB > 4 MiB: cache released
    assert block == 2 << 20 and list(driver.live) == [address]
    with pytest.raises(MemoryError):  # nothing cached left to free: the error goes on
        pool.take(3 << 20)


PLUGIN = textwrap.dedent("""
    import gc, json, os, weakref
    import numpy as np
    np.row_stack = getattr(np, "row_stack", np.vstack)
    from numba.cuda.cudadrv import driver as drv
    from runtime.backends.cuda import allocator

    live, freed, counter = {}, [], [1 << 20]
    def allocate(n):
        counter[0] += n
        live[counter[0]] = n
        return counter[0]
    allocator._allocate = allocate
    allocator._free = lambda a: freed.append(live.pop(a) and a)

    class Context:
        pass

    line = allocator.install()
    manager = allocator._INSTALLED[0](context=Context())
    first = manager.memalloc(3000)
    address = int(first.device_pointer)
    assert first.size == 3000 and address in live
    del first
    gc.collect()
    again = manager.memalloc(2900)  # the freed block, not a new one
    other = manager.memalloc(100)
    print(json.dumps({"line": line, "manager": drv._memory_manager.__name__,
                      "same": int(again.device_pointer) == address,
                      "stats": manager.pool.stats(), "version": manager.interface_version}))
    manager.reset()
""")


def _without_simulator(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("NUMBA_ENABLE_CUDASIM", "ARCHC_CUDA_ALLOCATOR")}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**environ, **env})


def test_the_plugin_gives_numba_cuda_pooled_memory():
    """numba-cuda accepts the plugin (interface version 1), and its memory pointers come
    from the pool and go back to it when Python frees the array."""
    import json

    run = _without_simulator(PLUGIN)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["line"] == "archc's caching pool"
    assert result["manager"] == "CachingMemoryManager" and result["version"] == 1
    assert result["same"]
    assert result["stats"] == {"driver_allocations": 2, "reused": 1, "in_use_bytes": 3584,
                               "cached_bytes": 0, "peak_bytes": 3584}


@pytest.mark.parametrize("env, line", [
    ({"ARCHC_CUDA_ALLOCATOR": "numba"}, "numba-cuda's allocator (ARCHC_CUDA_ALLOCATOR=numba)"),
    ({"NUMBA_CUDA_MEMORY_MANAGER": "rmm.allocators.numba"},
     "the memory manager NUMBA_CUDA_MEMORY_MANAGER names (rmm.allocators.numba)"),
    ({"ARCHC_CUDA_ALLOCATOR": "cudaMalloc"},
     "ARCHC_CUDA_ALLOCATOR='cudamalloc' is not one of pool, numba"),
])
def test_the_users_choice_of_allocator_stands(env, line):
    code = ("import numpy as np; np.row_stack = getattr(np, 'row_stack', np.vstack)\n"
            "from runtime.backends.cuda import allocator\n"
            "try:\n    print(allocator.install())\n"
            "except Exception as exc:\n    print(exc)\n"
            "from numba.cuda.cudadrv import driver\nprint(driver._memory_manager)")
    run = _without_simulator(code, **env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [line, "None"]  # numba's own choice left alone


@pytest.mark.cuda
def test_a_warm_training_step_allocates_nothing_from_the_driver():
    kernels = pytest.importorskip("runtime.backends.cuda.kernels")
    if kernels.SIMULATED:
        pytest.skip("the simulator has no device memory (ARCHC_CUDA=real)")
    import archc
    from runtime.train import optim

    graph = archc.load(ROOT / "specs" / "resnet18.yaml")
    model = archc.compile(graph, backend="cuda", seed=0).train()
    x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
    y = np.arange(8)
    params = model.device_params()
    opt = optim.SGD({k: params[k] for k, s in model.program.params.items()
                     if s.trainable and not s.buffer}, 0.01, momentum=0.9,
                    kernels=model.backend.optim)

    def step():
        _, grad, _ = model.backend.classify(model(x, host=False), y)
        opt.step(model.backward(grad, host=False, inputs=False).params)

    step(), step()
    before = allocator.stats()
    assert before is not None, kernels.ALLOCATOR
    step()
    after = allocator.stats()
    assert after["driver_allocations"] == before["driver_allocations"]
    assert after["reused"] > before["reused"]
