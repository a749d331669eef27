"""Batch-norm folding: an inference-mode batch norm right after a conv or linear layer is
an affine map per channel, so it folds into that layer's weights and bias.

With ``s = gamma / sqrt(running_var + eps)``, ``BN(W x + b) = (s W) x + s (b - mean) +
beta``: the layer's weight rows (output channels) scale by ``s`` and its bias becomes
``s (b - mean) + beta`` (Jacob et al., "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", 2018, section 3.2). A transposed conv's
output channels sit on its weight's second axis (PyTorch's layout ``(in, out / groups,
kh, kw)``).
"""

from __future__ import annotations

import numpy as np

from archc.ir import Graph
from archc.layers import get_layer
from archc.passes.manager import Params, Pass, PassResult, register
from archc.passes.rewrite import absorb, set_inputs, shares_weights, sole_user

FOLDS_INTO = {"batchnorm2d": ("conv2d", "conv_transpose2d"), "batchnorm1d": ("linear",)}
BN_ROLES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def fold_weights(op: str, groups: int, weight: np.ndarray, bias: np.ndarray | None,
                 bn: dict, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The folded (weight, bias) of a conv/linear layer followed by a batch norm.

    Examples
    --------
    >>> w, b = fold_weights("linear", 1, np.eye(2), None, {"running_mean": np.array([1., 0.]),
    ...     "running_var": np.array([4., 1.]), "weight": np.array([2., 1.]),
    ...     "bias": np.array([0., 3.])}, 0.0)
    >>> w.tolist(), b.tolist()
    ([[1.0, 0.0], [0.0, 1.0]], [-1.0, 3.0])
    """
    mean = bn["running_mean"].astype(np.float64)
    gamma = bn.get("weight", np.ones_like(mean)).astype(np.float64)
    beta = bn.get("bias", np.zeros_like(mean)).astype(np.float64)
    scale = gamma / np.sqrt(bn["running_var"].astype(np.float64) + eps)
    w = weight.astype(np.float64)
    if op == "conv_transpose2d":
        cin, og = w.shape[:2]
        w = (w.reshape(groups, cin // groups, og, *w.shape[2:])
             * scale.reshape(groups, 1, og, *(1,) * (w.ndim - 2))).reshape(weight.shape)
    else:
        w = w * scale.reshape(-1, *(1,) * (w.ndim - 1))
    b = np.zeros_like(mean) if bias is None else bias.astype(np.float64)
    return w.astype(weight.dtype), ((b - mean) * scale + beta).astype(weight.dtype)


def _takes_epilogue(op: str, bn) -> bool:
    """Whether a layer of type ``op`` can carry the batch norm's fused residual and
    activation, if it has any (a transposed conv has no epilogue, a linear layer no
    residual)."""
    has = {attr.name for attr in get_layer(op).attrs}
    return (bn.attrs.get("activation") is None or "activation" in has) \
        and (len(bn.inputs) == 1 or get_layer(op).arity[1] != 1)


def fold_bn(graph: Graph, params: Params | None, options: dict) -> PassResult:
    """Fold each inference-mode batch norm into the conv, transposed conv or linear layer
    before it (when that layer feeds nothing else and has no fused epilogue yet); a fused
    residual and activation of the batch norm move to that layer."""
    out = graph.copy()
    params = dict(params) if params is not None else None
    result = PassResult(out, params)
    for bn in list(out):
        if bn.op not in FOLDS_INTO or not bn.attrs["track_running_stats"]:
            continue
        layer = out[bn.inputs[0]]
        if (layer.op not in FOLDS_INTO[bn.op] or len(layer.inputs) != 1
                or shares_weights(out, layer) or shares_weights(out, bn)
                or layer.attrs.get("activation") is not None
                or sole_user(out, layer.name) != bn.name
                or not _takes_epilogue(layer.op, bn)):
            continue
        if params is not None:
            stats = {role: params.pop(f"{bn.name}.{role}") for role in BN_ROLES
                     if f"{bn.name}.{role}" in params}
            params[f"{layer.name}.weight"], params[f"{layer.name}.bias"] = fold_weights(
                layer.op, layer.attrs["groups"] if "groups" in layer.attrs else 1,
                params[f"{layer.name}.weight"], params.get(f"{layer.name}.bias"), stats,
                bn.attrs["eps"])
        layer.attrs = {**layer.attrs, "bias": True}
        if bn.attrs.get("activation") is not None:
            layer.attrs["activation"] = bn.attrs["activation"]
        if len(bn.inputs) > 1:
            set_inputs(out, layer.name, [layer.inputs[0], bn.inputs[1]])
        absorb(out, layer.name, [bn.name])
        result.changes.append(f"folded {bn.name} into {layer.name}")
        result.groups.append((layer.name, bn.name))
    return result


register(Pass("fold_bn", fold_bn, fold_bn.__doc__, 1, True))
