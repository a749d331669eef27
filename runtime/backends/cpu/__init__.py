"""The CPU backend: Numba kernels (``@njit(cache=True)``, parallel with ``prange``) where
they pay, NumPy's vectorised code where it is faster (measured), and the reference
implementation for the ops not ported yet. ``NUMBA_OPS`` names the ops with a Numba
kernel in either direction; tests hold every one of them to the reference backend."""

from __future__ import annotations

from runtime.backends import rows
from runtime.backends.activations import ACTIVATIONS
from runtime.backends.cpu.allocator import keep_freed_memory
from runtime.backends.cpu import (conv, conv_chain, elementwise, layout, linear, norm, pool,
                                  resample, roi, tensor)
from runtime.backends.cpu.blas import single_threaded_blas as scope  # noqa: F401 (Model runs kernels in it)
from runtime.backends.epilogue import fused_backward
from runtime.backends.reference import KERNELS as REFERENCE_FORWARD
from runtime.backends.reference_backward import BACKWARD as REFERENCE_BACKWARD

keep_freed_memory()  # no page faults per pass: allocator.py

KERNELS = dict(REFERENCE_FORWARD)
BACKWARD = dict(REFERENCE_BACKWARD)

KERNELS["conv2d"] = conv.conv2d_forward
BACKWARD["conv2d"] = fused_backward(conv.conv2d_backward, elementwise.activation_grad)
KERNELS["conv_transpose2d"] = conv.conv_transpose2d_forward
BACKWARD["conv_transpose2d"] = conv.conv_transpose2d_backward
KERNELS["linear"] = rows.forward(linear.linear_forward)  # over the last axis of any rank
BACKWARD["linear"] = rows.backward(fused_backward(linear.linear_backward,
                                                  elementwise.activation_grad))
KERNELS["max_pool2d"], BACKWARD["max_pool2d"] = pool.max_pool_forward, pool.max_pool_backward
KERNELS["avg_pool2d"], BACKWARD["avg_pool2d"] = pool.avg_pool_forward, pool.avg_pool_backward
for _kind in ("adaptive_avg_pool2d", "adaptive_max_pool2d", "global_avg_pool2d",
              "global_max_pool2d"):
    KERNELS[_kind], BACKWARD[_kind] = pool.adaptive_pool_forward, pool.adaptive_pool_backward
KERNELS["unpool2d"], BACKWARD["unpool2d"] = pool.unpool_forward, pool.unpool_backward
KERNELS["max_unpool2d"] = pool.max_unpool_forward
BACKWARD["max_unpool2d"] = pool.max_unpool_backward
for _kind, (_forward, _backward) in roi.LAYERS.items():
    KERNELS[_kind], BACKWARD[_kind] = _forward, _backward
KERNELS["upsample"], BACKWARD["upsample"] = resample.upsample_forward, resample.upsample_backward
KERNELS["add"] = tensor.add_forward
KERNELS["multiply"], BACKWARD["multiply"] = tensor.multiply_forward, tensor.multiply_backward
KERNELS["concat"] = tensor.concat_forward
KERNELS["join"], BACKWARD["join"] = tensor.join_forward, tensor.join_backward
KERNELS["channel_shuffle"] = tensor.channel_shuffle_forward
BACKWARD["channel_shuffle"] = tensor.channel_shuffle_backward
KERNELS["softmax"], BACKWARD["softmax"] = tensor.softmax_forward, tensor.softmax_backward
for _kind in ("dropout", "stochastic_depth"):
    KERNELS[_kind], BACKWARD[_kind] = tensor.dropout_forward, tensor.dropout_backward
for _kind in ("batchnorm2d", "batchnorm1d"):
    KERNELS[_kind] = norm.batchnorm_forward
    BACKWARD[_kind] = fused_backward(norm.batchnorm_backward, elementwise.activation_grad)
KERNELS["layernorm2d"], BACKWARD["layernorm2d"] = norm.layernorm_forward, norm.layernorm_backward
KERNELS["layernorm"] = rows.forward(norm.layernorm_forward)
BACKWARD["layernorm"] = rows.backward(norm.layernorm_backward)
KERNELS["local_response_norm"] = norm.lrn_forward
BACKWARD["local_response_norm"] = norm.lrn_backward
KERNELS["layer_scale"], BACKWARD["layer_scale"] = norm.layer_scale_forward, norm.layer_scale_backward
# Activations: the Numba kernels, except where the NumPy formula is faster (NumPy's SIMD
# exp, tanh and log1p against Numba's scalar libm calls: elementwise.NUMPY_FORWARD and
# NUMPY_BACKWARD, measured by bench/bench_activations.py, docs/performance.md).
for _kind in ACTIVATIONS:
    if _kind not in elementwise.NUMPY_FORWARD or _kind in elementwise.FAST32:
        KERNELS[_kind] = elementwise.activation_forward
    if _kind not in elementwise.NUMPY_BACKWARD:
        BACKWARD[_kind] = elementwise.activation_backward

NUMPY_OPS = {
    "flatten": "a view of its input", "reshape": "a view of its input",
    "identity": "its input itself", "permute": "NumPy's transposed copy",
    "slice": "NumPy's copy of a slice", "center_crop": "NumPy's copy of a slice",
    **{kind: "NumPy's SIMD formula beats the Numba loop both ways (bench/bench_activations.py)"
       for kind in elementwise.NUMPY_FORWARD if kind in elementwise.NUMPY_BACKWARD},
}
"""Ops whose CPU kernel is the reference's NumPy (data movement NumPy does as well as a
loop would), and why."""

NUMBA_OPS = tuple(kind for kind in KERNELS
                  if KERNELS[kind] is not REFERENCE_FORWARD.get(kind)
                  or BACKWARD[kind] is not REFERENCE_BACKWARD.get(kind))
"""The ops with a Numba (or NumPy-vectorised) kernel of their own in either direction;
tests hold every one of them to the reference backend."""

CHOICES = {"conv2d": conv.choose}
"""Op kind -> ``choose(op, batch, train) -> (algorithm, why)``, for the kinds computed more
than one way (``archc bench`` prints the choice per layer)."""


def algorithm(op, batch: int, train: bool = False):
    """(algorithm, why) of an op at a batch size, in training mode or not, or None where
    its kind has one way (``Model.algorithm`` says where a chain or the layout plan runs
    it instead)."""
    choose = CHOICES.get(op.kind)
    return choose(op, batch, train) if choose else None


CHAINS = True  # inference runs inverted-residual chains as one kernel (conv_chain.py)


def chains(program, batch: int, dtype) -> list:
    """The inverted-residual chains an inference pass at this batch size runs as one
    kernel each (conv_chain.find_chains), none where CHAINS is off."""
    return conv_chain.find_chains(program, batch, dtype, conv.choose) if CHAINS else []


chain_forward = conv_chain.chain_forward
add_arrays = tensor.add_arrays  # gradients meeting where a value fans out


def channels_last(program, batch: int, skip: frozenset) -> frozenset:
    """The values an inference pass at this batch size keeps channels-last (layout.py)."""
    return layout.channels_last_values(program, batch, conv.choose, skip)
