"""The CUDA backend's op kernels: for each layer type, its forward and backward on the
device, built from the kernels of ``kernels.py``, ``conv.py``, ``layers.py``, ``tensor.py``,
``resample.py`` and ``training.py`` (``DEVICE_KERNELS``, ``DEVICE_BACKWARD``)."""

from __future__ import annotations

import numpy as np

from runtime.backends import rows
from runtime.backends.activations import ACTIVATIONS
from runtime.backends.cuda import conv as C
from runtime.backends.cuda import kernels as K
from runtime.backends.cuda import layers as L
from runtime.backends.cuda import resample as R
from runtime.backends.cuda import roi as R_roi
from runtime.backends.cuda import strategy
from runtime.backends.cuda import tensor as T
from runtime.backends.cuda import training
from runtime.backends.cuda.kernels import to_device
from runtime.backends.reference import batch_statistics, join_weights
from runtime.backends.epilogue import (
    activation_of,
    fused_backward,
    keep_pre_activation,
    needs_pre_activation,
)

DEVICE_KERNELS: dict = {}
DEVICE_BACKWARD: dict = {}


def _activation_grad(name, attrs, pre, y, gy):
    return K.activation_backward(pre, y, gy, name, attrs)


def _geometry(op) -> dict:
    a = op.attrs
    return {"stride": a["stride"], "dilation": a["dilation"], "pads": a["pads"]}


def _epilogue_forward(op, xs, ctx, core):
    """Run ``core(activation, residual)``, whose kernel applies what it is given in its
    epilogue: the residual (a conv's second input) always, the activation when nothing
    needs the value before it (no tape kept); otherwise the activation comes after, and
    the value before it is kept for backward."""
    act = activation_of(op)
    residual = xs[1] if len(xs) > 1 else None
    if not needs_pre_activation(act, ctx):
        return core(act, residual)
    with K.aside():  # the value before the activation is kept; the output takes the room
        pre = core(None, residual)
    keep_pre_activation(op, pre, ctx)
    return K.activation_forward(pre, *act)


def _depthwise(op) -> bool:
    return op.attrs["groups"] > 1 and op.attrs["groups"] == op.in_shapes[0][0]


def conv2d_forward(op, xs, p, ctx):
    conv = L.depthwise if _depthwise(op) else C.conv2d_forward
    extra = {} if _depthwise(op) else {"groups": op.attrs["groups"]}
    return _epilogue_forward(op, xs, ctx, lambda activation, residual: conv(
        xs[0], p["weight"], p.get("bias"), out_hw=op.out_shape[1:], activation=activation,
        residual=residual, **extra, **_geometry(op)))


def algorithm(op, batch: int, train: bool = False):
    """(algorithm, why) a conv runs with on the device at a batch size (``Backend``'s
    ``algorithm``; None for the other kinds, which have one way)."""
    if op.kind != "conv2d":
        return None
    if _depthwise(op):
        return ("depthwise", "archc's depthwise kernel, the epilogue inside (no GEMM)")
    c, groups = op.in_shapes[0][0], op.attrs["groups"]
    kh, kw = op.attrs["kernel_size"]
    w_shape = (op.out_shape[0], c // groups, kh, kw)
    return strategy.describe((batch,) + tuple(op.in_shapes[0]), w_shape, op.out_shape[1:],
                             groups=groups, train=train, **_geometry(op))


def _conv_grads(gy, p, ctx, backward, *args, **kwargs) -> tuple:
    """A conv's backward kernel's gradients, asked for what the pass needs: its input's
    unless none is (``ctx.input_grads``: a training step's first conv); its bias's, the
    channel sums of gy, only where it has a bias."""
    gx, gw = backward(*args, **kwargs, input_grad=ctx.input_grads)
    if "bias" not in p:
        return [gx], {"weight": gw}
    return [gx], {"weight": gw, "bias": K.channel_sums(K.axis_view(gy))}


def _conv2d_core_backward(op, xs, y, gy, p, ctx):
    if _depthwise(op):
        return _conv_grads(gy, p, ctx, L.depthwise_backward, xs[0], p["weight"], gy,
                           **_geometry(op))
    return _conv_grads(gy, p, ctx, C.conv2d_backward, xs[0], p["weight"], gy,
                       groups=op.attrs["groups"], **_geometry(op))


def linear_forward(op, xs, p, ctx):
    bias = p.get("bias")
    return _epilogue_forward(op, xs[:1], ctx, lambda activation, residual: K.gemm(
        xs[0], p["weight"], trans_b=True, bias=bias, bias_mode=2 if bias is not None else 0,
        activation=activation))


def _linear_core_backward(op, xs, y, gy, p, ctx):
    grads = {"weight": K.gemm(gy, xs[0], trans_a=True)}
    if "bias" in p:  # in float64 partial sums (a GEMM with a row of ones: float32)
        grads["bias"] = K.channel_sums(gy.reshape(gy.shape[0], gy.shape[1], 1))
    return [K.gemm(gy, p["weight"]) if ctx.input_grads else None], grads


def activation_forward(op, xs, p, ctx):
    return K.activation_forward(xs[0], op.kind, op.attrs)


def activation_backward(op, xs, y, gy, p, ctx):
    return [K.activation_backward(xs[0], y, gy, op.kind, op.attrs)], {}


def add_forward(op, xs, p, ctx):
    y = K.add(xs[0], xs[1])
    for x in xs[2:]:
        y = K.add(y, x, out=y)
    return y


def add_backward(op, xs, y, gy, p, ctx):
    return [gy for _ in xs], {}


def _join_columns(weights, ndim: int) -> list:
    """Each input's weights (n, 1, ...) on the device, views of one upload (a copy from
    the host waits for the work queued before it: one wait per join, not per input)."""
    table = to_device(np.ascontiguousarray(weights.T))
    return [table[i].reshape((-1,) + (1,) * (ndim - 1)) for i in range(weights.shape[1])]


def join_forward(op, xs, p, ctx):
    """FractalNet's join: the per-sample weights (the mean of the inputs drop-path keeps)
    drawn on the host by the reference's rule, the weighted sum on the device."""
    weights = join_weights(op, xs[0].shape[0], ctx).astype(np.float32)
    columns = _join_columns(weights, len(xs[0].shape))
    ctx.saved[op.output] = columns
    y = T.multiply(xs[0], columns[0])
    for x, w in zip(xs[1:], columns[1:]):
        y = K.add(y, T.multiply(x, w), out=y)
    return y


def join_backward(op, xs, y, gy, p, ctx):
    return [T.multiply(gy, w) for w in ctx.saved[op.output]], {}


def view_forward(op, xs, p, ctx):
    return xs[0].reshape((xs[0].shape[0],) + tuple(op.out_shape))


def view_backward(op, xs, y, gy, p, ctx):
    return [gy.reshape(xs[0].shape)], {}


def identity_forward(op, xs, p, ctx):
    return xs[0]


def identity_backward(op, xs, y, gy, p, ctx):
    return [gy], {}


def _window(op, x_shape):
    from runtime.backends.reference import _window_pads

    a = op.attrs
    top, _, left, _ = _window_pads(a, x_shape[2:], op.out_shape[1:])
    return a["kernel_size"], a["stride"], top, left


def max_pool_forward(op, xs, p, ctx):
    kernel, stride, top, left = _window(op, xs[0].shape)
    y, idx = L.max_pool(xs[0], kernel, stride, op.attrs["dilation"], top, left,
                        op.out_shape[1:])
    ctx.indices[op.output] = idx  # positions, as max_unpool2d reads them
    return y


def max_pool_backward(op, xs, y, gy, p, ctx):
    return [L.max_pool_backward(gy, ctx.indices[op.output], xs[0].shape)], {}


def avg_pool_forward(op, xs, p, ctx):
    kernel, stride, top, left = _window(op, xs[0].shape)
    return L.avg_pool(xs[0], kernel, stride, top, left, op.attrs["padding"],
                      op.attrs["count_include_pad"], op.out_shape[1:])


def avg_pool_backward(op, xs, y, gy, p, ctx):
    kernel, stride, top, left = _window(op, xs[0].shape)
    return [L.avg_pool_backward(gy, xs[0].shape, kernel, stride, top, left,
                                op.attrs["padding"], op.attrs["count_include_pad"])], {}


def _global(op) -> bool:
    return tuple(op.out_shape[1:]) == (1, 1)


def adaptive_pool_forward(op, xs, p, ctx):
    """Adaptive and global pooling; a global average is a row-sum reduction per plane."""
    if "avg" in op.kind and _global(op):
        return L.global_avg_pool(xs[0])
    y, idx = R.adaptive_pool(xs[0], op.out_shape[1:], "max" in op.kind)
    if idx is not None:
        ctx.saved[op.output] = idx
    return y


def adaptive_pool_backward(op, xs, y, gy, p, ctx):
    if "avg" in op.kind and _global(op):
        return [L.global_avg_pool_backward(gy, xs[0].shape)], {}
    idx = ctx.saved.get(op.output) if "max" in op.kind else None
    return [R.adaptive_pool_backward(gy, xs[0].shape, idx)], {}


def upsample_forward(op, xs, p, ctx):
    return R.upsample(op, xs[0])


def upsample_backward(op, xs, y, gy, p, ctx):
    return [R.upsample_backward(op, xs[0].shape, gy)], {}


def unpool_forward(op, xs, p, ctx):
    return R.unpool(xs[0], op.attrs["kernel_size"], op.attrs["mode"] == "nearest")


def unpool_backward(op, xs, y, gy, p, ctx):
    return [R.unpool_backward(gy, xs[0].shape, op.attrs["kernel_size"],
                              op.attrs["mode"] == "nearest")], {}


def center_crop_forward(op, xs, p, ctx):
    return R.center_crop(xs[0], op.attrs["out_size"])


def center_crop_backward(op, xs, y, gy, p, ctx):
    return [R.center_crop_backward(gy, xs[0].shape)] + [None] * (len(xs) - 1), {}


def layernorm_forward(op, xs, p, ctx):
    return L.layernorm(xs[0], p.get("weight"), p.get("bias"), op.attrs["eps"])


def layernorm_backward(op, xs, y, gy, p, ctx):
    gx, g_weight, g_bias = L.layernorm_backward(xs[0], gy, p.get("weight"), op.attrs["eps"])
    return [gx], ({"weight": g_weight, "bias": g_bias} if "weight" in p else {})


def _positions(op, ctx, x):
    """The max-pool positions a max_unpool2d reads (its second input's pool), on the
    device, in x's shape."""
    idx = ctx.indices[op.inputs[1]]
    return to_device(idx).reshape(x.shape)


def max_unpool_forward(op, xs, p, ctx):
    return R.max_unpool(xs[0], _positions(op, ctx, xs[0]), op.attrs["out_size"])


def max_unpool_backward(op, xs, y, gy, p, ctx):
    gx = R.max_unpool_backward(gy, _positions(op, ctx, xs[0]))
    return [gx] + [None] * (len(xs) - 1), {}


def _lrn(op) -> tuple:
    a = op.attrs
    return a["size"], a["alpha"], a["beta"], a["k"]


def lrn_forward(op, xs, p, ctx):
    return L.lrn(xs[0], *_lrn(op))


def lrn_backward(op, xs, y, gy, p, ctx):
    return [L.lrn_backward(xs[0], gy, *_lrn(op))], {}


def _transposed(op) -> dict:
    a = op.attrs
    return {"stride": a["stride"], "dilation": a["dilation"], "padding": a["padding"],
            "groups": a["groups"]}


def conv_transpose2d_forward(op, xs, p, ctx):
    return C.conv_transpose2d_forward(xs[0], p["weight"], p.get("bias"),
                                      out_hw=op.out_shape[1:], **_transposed(op))


def conv_transpose2d_backward(op, xs, y, gy, p, ctx):
    return _conv_grads(gy, p, ctx, C.conv_transpose2d_backward, xs[0], p["weight"], gy,
                       **_transposed(op))


POOLS = ("adaptive_avg_pool2d", "adaptive_max_pool2d", "global_avg_pool2d",
         "global_max_pool2d")


for _kind in POOLS:
    DEVICE_KERNELS[_kind], DEVICE_BACKWARD[_kind] = adaptive_pool_forward, adaptive_pool_backward


DEVICE_KERNELS["layernorm2d"], DEVICE_BACKWARD["layernorm2d"] = layernorm_forward, layernorm_backward
# over the last axis of any rank: runtime/backends/rows.py
DEVICE_KERNELS["layernorm"] = rows.forward(layernorm_forward)
DEVICE_BACKWARD["layernorm"] = rows.backward(layernorm_backward)


DEVICE_KERNELS["local_response_norm"], DEVICE_BACKWARD["local_response_norm"] = lrn_forward, lrn_backward


DEVICE_KERNELS["max_unpool2d"], DEVICE_BACKWARD["max_unpool2d"] = max_unpool_forward, max_unpool_backward


DEVICE_KERNELS.update(upsample=upsample_forward, unpool2d=unpool_forward,
               center_crop=center_crop_forward, conv_transpose2d=conv_transpose2d_forward)


DEVICE_BACKWARD.update(upsample=upsample_backward, unpool2d=unpool_backward,
                center_crop=center_crop_backward, conv_transpose2d=conv_transpose2d_backward)


def batchnorm_forward(op, xs, p, ctx):
    a = op.attrs
    if batch_statistics(a, ctx.train):  # the batch's statistics
        running = ((p["running_mean"], p["running_var"], p["num_batches_tracked"],
                    a["momentum"]) if ctx.train and a["track_running_stats"] else ())
        mean, var = training.batch_stats(xs[0], *running)
        ctx.saved[op.output] = "batch"
        ctx.batch_stats[op.output] = (mean, var)
    else:
        mean, var = p["running_mean"], p["running_var"]
    return _epilogue_forward(op, xs, ctx, lambda activation, residual: L.batchnorm(
        xs[0], mean, var, p.get("weight"), p.get("bias"), a["eps"], activation, residual))


def _batchnorm_core_backward(op, xs, y, gy, p, ctx):
    if ctx.saved.get(op.output) == "batch":
        mean, var = ctx.batch_stats[op.output]
        gx, g_weight, g_bias = training.batchnorm_train_backward(
            xs[0], gy, mean, var, p.get("weight"), op.attrs["eps"])
    else:  # running statistics: constants
        gx, g_weight, g_bias = L.batchnorm_backward(xs[0], gy, p["running_mean"],
                                                    p["running_var"], p.get("weight"),
                                                    op.attrs["eps"])
    return [gx], ({"weight": g_weight, "bias": g_bias} if "weight" in p else {})


def dropout_forward(op, xs, p, ctx):
    """Dropout and stochastic depth: the identity at inference; in training the input
    times a mask drawn on the device (per element, or per sample or batch for stochastic
    depth), kept for backward."""
    x, rate = xs[0], op.attrs["p"]
    if not ctx.train or rate == 0:
        return x
    if op.kind == "dropout":
        shape = x.shape
    else:
        shape = ((x.shape[0],) if op.attrs["mode"] == "row" else (1,)) + (1,) * (len(x.shape) - 1)
    scale = training.dropout_scale(shape, rate, ctx.rng)
    ctx.saved[op.output] = scale
    return T.multiply(x, scale)


def dropout_backward(op, xs, y, gy, p, ctx):
    scale = ctx.saved.get(op.output)
    return [gy if scale is None else T.multiply(gy, scale)], {}


def multiply_forward(op, xs, p, ctx):
    y = T.multiply(xs[0], xs[1])
    for x in xs[2:]:  # in place where the product keeps its shape
        same = T.broadcast_shape(y.shape, x.shape) == tuple(y.shape)
        y = T.multiply(y, x, out=y if same else None)
    return y


def multiply_backward(op, xs, y, gy, p, ctx):
    """Each input's gradient: gy times the product of the others, summed over the axes
    along which the input was broadcast."""
    grads = []
    for i, x in enumerate(xs):
        others = [z for j, z in enumerate(xs) if j != i]
        product = others[0]
        for z in others[1:]:
            product = T.multiply(product, z)
        grads.append(T.reduce_to(T.multiply(gy, product), x.shape))
    return grads, {}


def _axis(op) -> int:
    """The op's ``dim`` as a non-negative axis of the batched tensor."""
    dim, rank = op.attrs["dim"], len(op.out_shape) + 1
    return dim + rank if dim < 0 else dim


def concat_forward(op, xs, p, ctx):
    return T.concat(xs, _axis(op))


def concat_backward(op, xs, y, gy, p, ctx):
    axis = _axis(op)
    return T.split(gy, [x.shape[axis] for x in xs], axis), {}


def _range(op, size: int) -> tuple[int, int]:
    start, stop, _ = slice(op.attrs["start"], op.attrs["end"]).indices(size)
    return start, stop


def slice_forward(op, xs, p, ctx):
    axis = _axis(op)
    return T.slice_axis(xs[0], *_range(op, xs[0].shape[axis]), axis)


def slice_backward(op, xs, y, gy, p, ctx):
    axis = _axis(op)
    start, _ = _range(op, xs[0].shape[axis])
    return [T.slice_backward(gy, xs[0].shape, start, axis)], {}


def permute_forward(op, xs, p, ctx):
    return T.permute(xs[0], op.attrs["dims"])


def permute_backward(op, xs, y, gy, p, ctx):
    return [T.permute(gy, tuple(np.argsort(op.attrs["dims"])))], {}


def channel_shuffle_forward(op, xs, p, ctx):
    return T.channel_shuffle(xs[0], op.attrs["groups"])


def channel_shuffle_backward(op, xs, y, gy, p, ctx):
    return [T.channel_shuffle(gy, op.attrs["groups"], inverse=True)], {}


def softmax_forward(op, xs, p, ctx):
    return T.softmax(xs[0], _axis(op))


def softmax_backward(op, xs, y, gy, p, ctx):
    return [T.softmax_backward(y, gy, _axis(op))], {}


def layer_scale_forward(op, xs, p, ctx):
    return T.multiply(xs[0], p["weight"])


def layer_scale_backward(op, xs, y, gy, p, ctx):
    w = p["weight"]
    gw = T.reduce_to(T.multiply(gy, xs[0]), (1,) + tuple(w.shape)).reshape(w.shape)
    return [T.multiply(gy, w)], {"weight": gw}


DEVICE_KERNELS.update(multiply=multiply_forward, concat=concat_forward, softmax=softmax_forward,
               slice=slice_forward, permute=permute_forward,
               channel_shuffle=channel_shuffle_forward, layer_scale=layer_scale_forward)


DEVICE_BACKWARD.update(multiply=multiply_backward, concat=concat_backward, softmax=softmax_backward,
                slice=slice_backward, permute=permute_backward,
                channel_shuffle=channel_shuffle_backward, layer_scale=layer_scale_backward)


DEVICE_KERNELS.update(max_pool2d=max_pool_forward, avg_pool2d=avg_pool_forward,
               batchnorm2d=batchnorm_forward, batchnorm1d=batchnorm_forward)


DEVICE_BACKWARD.update(max_pool2d=max_pool_backward, avg_pool2d=avg_pool_backward,
                batchnorm2d=fused_backward(_batchnorm_core_backward, _activation_grad),
                batchnorm1d=fused_backward(_batchnorm_core_backward, _activation_grad))


DEVICE_KERNELS.update(conv2d=conv2d_forward, linear=rows.forward(linear_forward), add=add_forward,
               join=join_forward,
               flatten=view_forward, reshape=view_forward, identity=identity_forward)


DEVICE_BACKWARD.update(conv2d=fused_backward(_conv2d_core_backward, _activation_grad),
                linear=rows.backward(fused_backward(_linear_core_backward, _activation_grad)),
                add=add_backward, join=join_backward, flatten=view_backward, reshape=view_backward,
                identity=identity_backward)


for _kind in ACTIVATIONS:
    DEVICE_KERNELS[_kind], DEVICE_BACKWARD[_kind] = activation_forward, activation_backward


for _kind in ("dropout", "stochastic_depth"):
    DEVICE_KERNELS[_kind], DEVICE_BACKWARD[_kind] = dropout_forward, dropout_backward


for _kind, (_forward, _backward) in R_roi.LAYERS.items():
    DEVICE_KERNELS[_kind], DEVICE_BACKWARD[_kind] = _forward, _backward
