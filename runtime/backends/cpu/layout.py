"""The layout plan of an inference pass: which values the CPU keeps channels-last.

Every value is a (N, C, H, W) array of planes unless this plan says otherwise. A depthwise
conv runs faster channels-last, (N, H, W, C), on strided and small maps
(conv_depthwise.favours_channels_last): each tap is a multiply-add along the channels of
a position, a loop as long as the channels whatever the map. Reordering a map costs a pass
over it (a strided one: slower than what the depthwise conv gains), but a 1x1 conv's GEMM
writes or reads either layout at no cost (its operands transposed). So the plan keeps a
depthwise conv's input and output channels-last where

- its input comes from an unpadded, unstrided 1x1 conv of one group (the expansion of an
  inverted residual block) that writes it for the depthwise conv alone;
- every op that reads its output reads channels-last too: a 1x1 conv's GEMM (the
  projection; it writes planes again), a global average pool (squeeze-excitation's
  squeeze), or a multiply by a per-channel gate (the excitation), whose product is then
  held to the same test;

and no such value is an output of the network. This is the boundary the engines' layout
passes draw (ONNX Runtime's NCHWc transformer, OpenVINO's), drawn where the reorders are
free. Inference only: a training pass keeps planes (its backward kernels read them). Ops
that a chain (conv_chain.py) runs are left to it; the kernels concerned
(``conv._conv2d``, ``pool.adaptive_pool_forward``, ``tensor.multiply_forward``) find the
plan in ``KernelContext.channels_last``.
"""

from __future__ import annotations

from runtime.backends.cpu.conv_depthwise import favours_channels_last

LAYOUTS = True  # False: every value on planes (tests, bench)


def _pointwise(op, algorithm) -> bool:
    """A 1x1 conv that runs as a GEMM on the map as it lies, one group, stride 1."""
    a = op.attrs
    return op.kind == "conv2d" and tuple(a["kernel_size"]) == (1, 1) \
        and a["pads"] == ((0, 0), (0, 0)) and tuple(a["stride"]) == (1, 1) \
        and a["groups"] == 1 and algorithm(op) == "pointwise"


def _depthwise(op, algorithm) -> bool:
    """A depthwise conv, one filter per channel, one input, that runs faster channels-last."""
    c = op.in_shapes[0][0]
    return op.kind == "conv2d" and op.attrs["groups"] == c > 1 and op.out_shape[0] == c \
        and len(op.inputs) == 1 and algorithm(op) == "depthwise" and favours_channels_last(op)


def _global_average(op) -> bool:
    return op.kind in ("global_avg_pool2d", "adaptive_avg_pool2d") \
        and tuple(op.out_shape[1:]) == (1, 1)


def _gate(op, slot: int) -> bool:
    """A multiply of the map in input ``slot`` by a per-channel gate (C, 1, 1)."""
    if op.kind != "multiply" or len(op.inputs) != 2:
        return False
    c, h, w = op.in_shapes[slot]
    return tuple(op.in_shapes[1 - slot]) == (c, 1, 1) and h * w > 1 \
        and op.inputs[0] != op.inputs[1]


def channels_last_values(program, batch: int, choose, skip=frozenset()) -> frozenset[str]:
    """The values an inference pass at this batch size keeps channels-last (see the module
    doc); ``choose(op, batch, train)`` is conv.choose, ``skip`` the names of ops a chain
    runs."""
    if not LAYOUTS:
        return frozenset()

    def algorithm(op):
        return choose(op, batch, False)[0]

    producer = {op.output: op for op in program.ops}
    readers: dict[str, list] = {}
    for op in program.ops:
        for name in dict.fromkeys(op.inputs):
            readers.setdefault(name, []).append(op)
    outputs = set(program.outputs.values())

    def free(name: str) -> bool:
        return name not in outputs and all(op.name not in skip for op in readers.get(name, []))

    planned: set[str] = set()
    for op in program.ops:
        if op.name in skip or not _depthwise(op, algorithm):
            continue
        source = producer.get(op.inputs[0])
        if source is None or source.name in skip or len(source.inputs) != 1 \
                or not _pointwise(source, algorithm) or not free(op.inputs[0]) \
                or len(readers[op.inputs[0]]) != 1:
            continue
        group, todo, ok = {op.inputs[0], op.output}, [op.output], True
        while todo and ok:
            name = todo.pop()
            ok = free(name)
            for reader in readers.get(name, []) if ok else []:
                slot = reader.inputs.index(name)
                if _gate(reader, slot):
                    group.add(reader.output)
                    todo.append(reader.output)
                elif not ((_pointwise(reader, algorithm) and slot == 0
                           and name not in reader.inputs[1:]) or _global_average(reader)):
                    ok = False
                    break
        if ok:
            planned |= group
    return frozenset(planned)
