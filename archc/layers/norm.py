"""Normalisation: batch norm, layer norm over channels, local response norm; layer scale."""

from __future__ import annotations

from archc.layers.activation import same_shape
from archc.layers.costs import (
    FLOAT_BYTES,
    IDENTITY_STEP,
    Cost,
    numel,
    per_output,
    pointwise_rf,
    saves_inputs,
)
from archc.layers.base import (
    Init,
    Attr,
    AttrError,
    Bool,
    Float,
    Int,
    LayerType,
    Optional,
    check_declared,
    need_rank,
)
from archc.layers.epilogue import (
    ACTIVATION_ATTR,
    check_residual,
    epilogue_flops,
    epilogue_label,
    epilogue_saved,
)


def _same_shape_rank(op: str, rank: int, count_key: str | None = None):
    def rule(attrs: dict, inputs: list) -> tuple[int, ...]:
        (x,) = inputs
        need_rank(x, rank, op)
        if count_key:
            check_declared(attrs, count_key, x[0], "channels" if rank == 3 else "features")
        return tuple(x)

    return rule


def _affine_params(key: str, axis: int = 0):
    """A learned scale and shift per entry of the normalised axis (the channels; the last
    axis for layernorm)."""
    def rule(attrs: dict, inputs: list) -> dict:
        if not attrs[key]:
            return {}
        c = inputs[0][axis]
        return {"weight": (c,), "bias": (c,)}

    return rule


def _bn_params(attrs: dict, inputs: list) -> dict:
    """A frozen batch norm's scale and shift are buffers (torchvision's FrozenBatchNorm2d)."""
    return {} if attrs.get("frozen") else _affine_params("affine")(attrs, inputs)


def _bn_buffers(attrs: dict, inputs: list) -> dict:
    if not attrs["track_running_stats"]:
        return {}
    c = inputs[0][0]
    if attrs.get("frozen"):  # FrozenBatchNorm2d's state: no counter
        scale = _affine_params("affine")(attrs, inputs)
        return {**scale, "running_mean": (c,), "running_var": (c,)}
    return {"running_mean": (c,), "running_var": (c,), "num_batches_tracked": ()}


def _validate_bn(attrs: dict) -> None:
    if attrs.get("frozen") and not attrs["track_running_stats"]:
        raise AttrError("a frozen batch norm normalises with its running statistics: it "
                        "needs track_running_stats: true", attr="frozen")


def _bn_shape(op: str, rank: int):
    """The input's shape; a residual (the fused epilogue's second input) must match it."""
    same = _same_shape_rank(op, rank, "num_features")

    def rule(attrs: dict, inputs: list) -> tuple[int, ...]:
        out = same(attrs, inputs[:1])
        check_residual(inputs, out, op)
        return out

    return rule


def _bn_saved(attrs: dict, inputs: list, out: tuple) -> int:
    # input, mean and 1/std; and the value before a fused activation
    return FLOAT_BYTES * (numel(inputs[0]) + 2 * inputs[0][0]) + epilogue_saved(attrs, inputs, out)


def _bn_rf(attrs: dict, inputs: list):
    return [IDENTITY_STEP, IDENTITY_STEP] if len(inputs) > 1 else IDENTITY_STEP


def _ln_saved(axis: int):
    def rule(attrs: dict, inputs: list, out: tuple) -> int:
        positions = numel(inputs[0]) // inputs[0][axis]  # one mean and 1/std for each
        return FLOAT_BYTES * (numel(inputs[0]) + 2 * positions)

    return rule


def _ln_flops(attrs: dict, inputs: list, out: tuple) -> int:
    return (8 if attrs["elementwise_affine"] else 6) * numel(out)


_BN_COST = Cost(
    flops=lambda a, i, o: (2 if a["affine"] or a["track_running_stats"] else 5) * numel(o)
    + epilogue_flops(a, i, o),
    saved=_bn_saved,
    doc="Inference: a multiply and an add per element (scale and shift precomputed per "
    "channel from the running statistics); without running statistics, 5 per element "
    "(mean, variance and normalisation from the batch); plus a fused residual's add and "
    "activation. Saves its input and the per-channel mean and 1/std (and the value before a "
    "fused activation).",
)
_LN_DOC = ("Per element: 1 add for the mean, 3 for the variance, 2 to normalise, 2 for the "
           "affine scale and shift (6 without). Saves its input and the mean and 1/std of "
           "each normalised vector.")

_BN_ATTRS = (
    Attr("eps", Float(minimum=0.0), 1e-5, "added to the variance for stability"),
    Attr("momentum", Float(minimum=0.0, maximum=1.0), 0.1, "running statistics update rate"),
    Attr("affine", Bool(), True, "learn a per-channel scale (weight) and shift (bias)"),
    Attr("track_running_stats", Bool(), True, "keep running mean/variance for inference"),
    Attr("num_features", Optional(Int(minimum=1)), None, "optional check of the channel count"),
    ACTIVATION_ATTR,
    Attr("frozen", Bool(), False, "normalise with the running statistics in training too, "
         "scale and shift fixed (torchvision's FrozenBatchNorm2d: all four are buffers)"),
)

def _batchnorm(op: str, rank: int, doc: str) -> LayerType:
    return LayerType(
        op=op,
        label=lambda a: "batchnorm" + epilogue_label(a),
        family="norm",
        doc=doc + " Fused epilogue, as conv2d's: an optional second input added to the "
        "result (a residual) and `activation` applied to it in the same pass: "
        "`activation(bn(x) + residual)`; `archc train` and -O2 fuse these where the graph "
        "allows, a spec may write them too.",
        attrs=_BN_ATTRS,
        infer_shape=_bn_shape(op, rank),
        example=f"- {op}",
        arity=(1, 2),
        validate=_validate_bn,
        parameters=_bn_params,
        buffers=_bn_buffers,
        cost=_BN_COST,
        receptive_field=_bn_rf,
    )


def _layernorm(op: str, rank: int | None, doc: str, example: str) -> LayerType:
    """Layer norm over the channels of a map (rank 3: axis 0), or over the last axis of
    any input (rank None)."""
    axis = 0 if rank else -1
    return LayerType(
        op=op,
        label=lambda a: "layernorm",
        family="norm",
        doc=doc,
        attrs=_LN_ATTRS,
        infer_shape=_same_shape_rank(op, rank) if rank else same_shape,
        example=example,
        parameters=_affine_params("elementwise_affine", axis),
        cost=Cost(flops=_ln_flops, saved=_ln_saved(axis), doc=_LN_DOC),
        receptive_field=pointwise_rf,
        last_axis=not rank,
    )


_LN_ATTRS = (
    Attr("eps", Float(minimum=0.0), 1e-5, "added to the variance for stability"),
    Attr("elementwise_affine", Bool(), True, "learn a per-channel scale and shift"),
)

BATCHNORM2D = _batchnorm(
    "batchnorm2d", 3,
    "Batch normalisation per channel over (N, H, W): `(x - mean) / sqrt(var + eps) * "
    "weight + bias`; batch statistics in training, running statistics in inference.")
BATCHNORM1D = _batchnorm(
    "batchnorm1d", 1, "Batch normalisation of a flat feature vector, per feature over the batch.")
LAYERNORM2D = _layernorm(
    "layernorm2d", 3,
    "Layer normalisation over the channels at each pixel of a CxHxW map (ConvNeXt's "
    "LayerNorm2d, i.e. LayerNorm(C) applied channels-last).",
    "- layernorm2d: {eps: 1.0e-6}")
LAYERNORM = _layernorm(
    "layernorm", None,
    "Layer normalisation over the last axis (PyTorch's LayerNorm(C)): a flat vector's "
    "features, or the channels of each position of a channels-last map (after `permute: "
    "[0, 2, 3, 1]`, as ConvNeXt's blocks are written).",
    "- layernorm")

LOCAL_RESPONSE_NORM = LayerType(
    op="local_response_norm",
    label=lambda a: f"LRN {a['size']}",
    family="norm",
    doc="Local response normalisation across `size` neighbouring channels (AlexNet): "
    "`x / (k + alpha / size * sum(x^2)) ^ beta`.",
    attrs=(
        Attr("size", Int(minimum=1), doc="number of neighbouring channels"),
        Attr("alpha", Float(), 1e-4, "scale"),
        Attr("beta", Float(), 0.75, "exponent"),
        Attr("k", Float(), 1.0, "additive constant"),
    ),
    infer_shape=_same_shape_rank("local_response_norm", 3),
    example="- local_response_norm: {size: 5, alpha: 1.0e-4, beta: 0.75, k: 2.0}",
    positional=("size",),
    cost=Cost(
        flops=lambda a, i, o: (a["size"] + 5) * numel(o),
        saved=lambda a, i, o: 2 * saves_inputs(0)(a, i, o),
        doc="Per element: a square, size adds over neighbouring channels, then scale, add k, "
        "power and divide (size + 5). Saves its input and the normaliser.",
    ),
    receptive_field=pointwise_rf,
)


def _layer_scale_params(attrs: dict, inputs: list) -> dict:
    return {"weight": (inputs[0][0], 1, 1)}


LAYER_SCALE = LayerType(
    op="layer_scale",
    label=lambda a: "layer scale",
    family="norm",
    doc="A learned per-channel scale, initialised to `init_value` (ConvNeXt's layer scale; "
    "torchvision stores it as a (C, 1, 1) parameter).",
    attrs=(Attr("init_value", Float(), 1e-6, "initial value of every scale"),),
    infer_shape=_same_shape_rank("layer_scale", 3),
    example="- layer_scale: {init_value: 1.0e-6}",
    positional=("init_value",),
    parameters=_layer_scale_params,
    cost=Cost(per_output(1), saves_inputs(0), "One multiply per element. Saves its input."),
    receptive_field=pointwise_rf,
    init=lambda role, attrs, shapes: Init(value=attrs["init_value"]),
)

LAYERS = (BATCHNORM2D, BATCHNORM1D, LAYERNORM2D, LAYERNORM, LOCAL_RESPONSE_NORM, LAYER_SCALE)
