"""Factorisation passes: approximate a conv (or linear layer) by two cheaper ones.

``separable`` (structural, MobileNet's depthwise separable convolution; Howard et al. 2017):
a standard k x k conv C -> O becomes a depthwise k x k conv (one filter per input channel)
and a pointwise 1 x 1 conv C -> O. Per output pixel the MACs drop from ``C O k^2`` to
``C k^2 + C O``, a factor of ``1/O + 1/k^2``. Given trained weights, the pair starts from
the closest separable filter bank: for each input channel c the O x k^2 matrix
``W[:, c]`` is replaced by its best rank-1 approximation (SVD), the left factor giving the
pointwise weights and the right one the depthwise filter.

``low_rank`` (weight-level, for trained networks), two forms:

- ``spatial`` (Jaderberg, Vedaldi and Zisserman, "Speeding up Convolutional Neural
  Networks with Low Rank Expansions", 2014, scheme 2): ``W[o, c, i, j] ~ sum_r V[r, c, i]
  H[o, r, j]``, a k x 1 conv C -> r then a 1 x k conv r -> O, from the SVD of W arranged
  as a (C k) x (O k) matrix; exact at full rank.
- ``channel``: ``W (O, C k^2) ~ A (O, r) B (r, C k^2)``, a k x k conv C -> r then a 1 x 1
  conv r -> O (and for linear layers two linear layers), from the SVD of W.

The rank is the smallest whose relative error on the layer's output, measured on a batch
of real inputs, stays within ``budget``; a layer is left alone when no rank within budget
saves MACs. Neither pass runs unless named: they change the function.
"""

from __future__ import annotations

import numpy as np

from archc.ir import Graph, Node
from archc.layers import get_layer
from archc.layers.conv import resolve_padding
from archc.passes.manager import Option, Params, Pass, PassResult, matches, register
from archc.passes.rewrite import fresh_name, set_inputs, shares_weights
from archc.shapes import infer_shapes


def _macs(graph: Graph, node: Node) -> int:
    return get_layer(node.op).cost.macs(node.attrs, [graph[i].shape for i in node.inputs],
                                        node.shape)


def _params_of(graph: Graph, node: Node) -> int:
    shapes = get_layer(node.op).parameters(node.attrs, [graph[i].shape for i in node.inputs])
    return sum(int(np.prod(s)) for s in shapes.values())


def _split(graph: Graph, node: Node, first: tuple[str, dict], second: dict) -> str:
    """Replace ``node`` by two layers: a new one (``first``: name suffix and attributes,
    reading the node's input) and the node itself with ``second``'s attributes reading
    the new one (keeping its residual, if it has one). Returns the new layer's name."""
    suffix, attrs = first
    name = fresh_name(graph, f"{node.name}_{suffix}")
    graph.add(Node(name, node.op, get_layer(node.op).normalize(attrs), [node.inputs[0]],
                   node.loc, node.scope, node.trainable, trace=node.trace))
    graph.nx.nodes[name]["order"] = graph.nx.nodes[node.name]["order"] - 0.5
    node.attrs = get_layer(node.op).normalize(second)
    set_inputs(graph, node.name, [name] + node.inputs[1:])
    return name


def _user_attrs(node: Node, **changes) -> dict:
    """The node's attributes as a spec would give them, with changes."""
    attrs = {k: v for k, v in node.attrs.items() if k != "in_channels"}
    if attrs.get("activation") is not None:
        op, items = attrs["activation"]
        attrs["activation"] = {op: dict(items)}
    attrs.update(changes)
    return attrs


def _figures(graph: Graph, node: Node, added: str, macs: int, params: int, **extra) -> dict:
    macs_after = _macs(graph, graph[added]) + _macs(graph, node)
    params_after = _params_of(graph, graph[added]) + _params_of(graph, node)
    return {"layer": node.name, "macs_before": macs, "macs_after": macs_after,
            "params_before": params, "params_after": params_after,
            "macs_ratio": round(macs_after / macs, 6), **extra}


# ------------------------------------------------------------------------ separable
def depthwise_separable_weights(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The depthwise (C, 1, kh, kw) and pointwise (O, C, 1, 1) weights closest to a conv's
    (O, C, kh, kw), channel by channel (rank-1 SVD), and the relative error of their
    product in the weights.

    Examples
    --------
    >>> w = np.einsum("oc,cij->ocij", np.ones((4, 2)), np.ones((2, 3, 3)))  # separable
    >>> d, p, err = depthwise_separable_weights(w)
    >>> d.shape, p.shape, err < 1e-12
    ((2, 1, 3, 3), (4, 2, 1, 1), True)
    """
    o, c, kh, kw = weight.shape
    depthwise = np.empty((c, 1, kh, kw))
    pointwise = np.empty((o, c, 1, 1))
    residual = 0.0
    for ch in range(c):
        u, s, vt = np.linalg.svd(weight[:, ch].reshape(o, kh * kw).astype(np.float64),
                                 full_matrices=False)
        depthwise[ch, 0] = (vt[0] * np.sqrt(s[0])).reshape(kh, kw)
        pointwise[:, ch, 0, 0] = u[:, 0] * np.sqrt(s[0])
        residual += float((s[1:] ** 2).sum())
    total = float((weight.astype(np.float64) ** 2).sum())
    return (depthwise.astype(weight.dtype), pointwise.astype(weight.dtype),
            float(np.sqrt(residual / total)) if total else 0.0)


def separable(graph: Graph, params: Params | None, options: dict) -> PassResult:
    """Rewrite standard convs (groups 1, kernel larger than 1x1) whose names match into a
    depthwise conv and a pointwise conv (MobileNet style); with weights, the pair starts
    from the closest separable approximation of the trained filters."""
    out = graph.copy()
    params = dict(params) if params is not None else None
    result = PassResult(out, params)
    for node in list(out):
        if node.op != "conv2d" or node.attrs["groups"] != 1 or \
                tuple(node.attrs["kernel_size"]) == (1, 1) or not matches(node.name, options["match"]) \
                or shares_weights(out, node):
            continue
        c, o = out[node.inputs[0]].shape[0], node.attrs["out_channels"]
        kh, kw = node.attrs["kernel_size"]
        factor = 1 / o + 1 / (kh * kw)
        if factor >= 1:
            result.notes.append(f"{node.name}: left alone, separable would not save MACs "
                                f"(1/{o} + 1/{kh * kw} = {factor:.3f})")
            continue
        macs, count = _macs(out, node), _params_of(out, node)
        added = _split(out, node, ("depthwise", _user_attrs(node, out_channels=c, groups=c,
                                                             bias=False, activation=None)),
                       _user_attrs(node, kernel_size=1, stride=1, padding=0, dilation=1))
        infer_shapes(out)
        figures = _figures(out, node, added, macs, count, factor=round(factor, 6))
        if params is not None:
            d, p, err = depthwise_separable_weights(params[f"{node.name}.weight"])
            params[f"{added}.weight"], params[f"{node.name}.weight"] = d, p
            figures["weight_error"] = round(err, 6)
        _record(result, figures, added, node,
                f"{kh}x{kw} conv {c}->{o} as depthwise {added} + pointwise 1x1: MACs "
                f"x{figures['macs_ratio']:.4f} (1/C_out + 1/k^2 = {factor:.4f})")
    return result


# ------------------------------------------------------------------------ low rank
def spatial_factors(weight: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(vertical (r, C, kh, 1), horizontal (O, r, 1, kw)) weights of rank ``rank`` whose
    composition best approximates ``weight`` (O, C, kh, kw) in the Frobenius norm."""
    o, c, kh, kw = weight.shape
    m = weight.astype(np.float64).transpose(1, 2, 0, 3).reshape(c * kh, o * kw)
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    root = np.sqrt(s[:rank])
    vertical = (u[:, :rank] * root).T.reshape(rank, c, kh, 1)
    horizontal = (root[:, None] * vt[:rank]).reshape(rank, o, kw).transpose(1, 0, 2)
    return (np.ascontiguousarray(vertical, dtype=weight.dtype),
            np.ascontiguousarray(horizontal.reshape(o, rank, 1, kw), dtype=weight.dtype))


def channel_factors(weight: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(reduce (r, C, kh, kw), expand (O, r, 1, 1)) weights, or for a linear layer's
    (O, I) the pair ((r, I), (O, r)), whose product best approximates ``weight``."""
    o = weight.shape[0]
    u, s, vt = np.linalg.svd(weight.astype(np.float64).reshape(o, -1), full_matrices=False)
    root = np.sqrt(s[:rank])
    reduce = (root[:, None] * vt[:rank]).reshape((rank,) + weight.shape[1:])
    expand = u[:, :rank] * root
    if weight.ndim == 4:
        expand = expand.reshape(o, rank, 1, 1)
    return (np.ascontiguousarray(reduce, dtype=weight.dtype),
            np.ascontiguousarray(expand, dtype=weight.dtype))


def _max_rank(node: Node, c: int, mode: str) -> int:
    if node.op == "linear":
        return min(node.attrs["out_features"], c)
    o, (kh, kw) = node.attrs["out_channels"], node.attrs["kernel_size"]
    return min(c * kh, o * kw) if mode == "spatial" else min(o, c * kh * kw)


def _plan(graph: Graph, node: Node, mode: str, rank: int) -> tuple[tuple[str, dict], dict] | None:
    """The (first layer, second layer) attributes of a rank-``rank`` factorisation."""
    if node.op == "linear":
        return ("reduce", {"out_features": rank, "bias": False}), _user_attrs(node)
    if mode == "channel":
        return (("reduce", _user_attrs(node, out_channels=rank, bias=False, activation=None)),
                _user_attrs(node, kernel_size=1, stride=1, padding=0, dilation=1))
    a = node.attrs
    (top, bottom), (left, right) = resolve_padding(a["padding"], a["kernel_size"], a["stride"],
                                                   a["dilation"], graph[node.inputs[0]].shape[1:])
    if top != bottom or left != right:
        return None  # asymmetric 'same' padding: no per-axis pair expresses it
    (kh, kw), (sh, sw), (dh, dw) = a["kernel_size"], a["stride"], a["dilation"]
    first = _user_attrs(node, out_channels=rank, kernel_size=[kh, 1], stride=[sh, 1],
                        padding=[top, 0], dilation=[dh, 1], bias=False, activation=None)
    second = _user_attrs(node, kernel_size=[1, kw], stride=[1, sw], padding=[0, left],
                         dilation=[1, dw])
    return ("v", first), second


def _core_output(node: Node, in_shape: tuple, x: np.ndarray, weights: list[np.ndarray],
                 bias: np.ndarray | None, plans: list[dict], evaluate) -> np.ndarray:
    """Run one layer (or a factorised pair) without its epilogue on a batch (by
    ``evaluate``, ``archc.lower.evaluator``): the value the error budget is measured on."""
    g = Graph(name="probe")
    g.add(Node("input", "input", {"shape": tuple(in_shape)}, []))
    g.inputs = ["input"]
    previous = "input"
    for i, attrs in enumerate(plans):
        attrs = {k: v for k, v in attrs.items() if k != "activation"}
        g.add(Node(f"l{i}", node.op, get_layer(node.op).normalize(attrs), [previous]))
        previous = f"l{i}"
    g.outputs = {previous: previous}
    params = {f"l{i}.weight": w.astype(np.float32) for i, w in enumerate(weights)}
    if bias is not None:
        params[f"l{len(weights) - 1}.bias"] = bias.astype(np.float32)
    return evaluate(infer_shapes(g), params, x)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a))
    return float(np.linalg.norm(a - b)) / norm if norm else float(np.linalg.norm(b))


def _eligible(node: Node, mode: str) -> bool:
    if node.op == "linear":
        return mode == "channel"
    return node.op == "conv2d" and node.attrs["groups"] == 1 and (
        mode == "channel" or min(node.attrs["kernel_size"]) > 1)


class _Layer:
    """One candidate layer of ``low_rank``: its weights, the factoriser, and how to
    measure a rank's error (on the layer's output for a batch of its inputs, else on the
    weights)."""

    def __init__(self, graph: Graph, node: Node, params: Params, mode: str, x, evaluate):
        self.node, self.mode, self.evaluate = node, mode, evaluate
        self.in_shape = graph[node.inputs[0]].shape
        self.weight = params[f"{node.name}.weight"]
        self.bias = params.get(f"{node.name}.bias")
        self.factor = spatial_factors if mode == "spatial" and node.op == "conv2d" \
            else channel_factors
        self.full_rank = _max_rank(node, self.in_shape[0], mode)
        self.x = x
        self.reference = None if x is None else _core_output(
            node, self.in_shape, x, [self.weight], self.bias, [_user_attrs(node)], evaluate)

    def error(self, rank: int, plan) -> float:
        first, second = self.factor(self.weight, rank)
        if self.reference is None:  # no data: the error of the weights themselves
            approx = (_spatial_product(first, second) if self.factor is spatial_factors
                      else second.reshape(-1, rank) @ first.reshape(rank, -1))
            return _relative(self.weight.reshape(-1), approx.reshape(-1))
        return _relative(self.reference, _core_output(self.node, self.in_shape, self.x,
                                                      [first, second], self.bias,
                                                      [plan[0][1], plan[1]], self.evaluate))

    def choose_rank(self, graph: Graph, budget: float, macs: int, count: int):
        """(rank, error, plan) of the smallest rank within budget that saves MACs (binary
        search: the error falls and the cost grows with the rank), None if there is
        none, or the string 'asymmetric' when no per-axis pair can express the padding."""
        best, low, high = None, 1, self.full_rank
        while low <= high:
            rank = (low + high) // 2
            plan = _plan(graph, graph[self.node.name], self.mode, rank)
            if plan is None:
                return "asymmetric"
            probe = graph.copy()
            added = _split(probe, probe[self.node.name], *plan)
            infer_shapes(probe)
            if _figures(probe, probe[self.node.name], added, macs, count)["macs_after"] >= macs:
                high = rank - 1
                continue
            err = self.error(rank, plan)
            if err <= budget:
                best, high = (rank, err, plan), rank - 1
            else:
                low = rank + 1
        return best


def _record(result: PassResult, figures: dict, added: str, node: Node, change: str) -> None:
    result.layers.append(figures)
    result.groups.append((added, node.name))
    result.changes.append(f"{node.name}: {change}")


def low_rank(graph: Graph, params: Params | None, options: dict) -> PassResult:
    """Approximate trained convs (mode ``spatial``: k x 1 then 1 x k; ``channel``: k x k to
    r channels then 1 x 1, also for linear layers) by the smallest SVD rank whose relative
    error on the layer's output, measured on real inputs, is within ``budget``; layers where
    no such rank saves MACs are left alone."""
    out = graph.copy()
    params = dict(params)
    result = PassResult(out, params)
    mode, budget = options["mode"], options["budget"]
    values = {}
    evaluate = options.get("evaluate")
    if options.get("data") is not None and evaluate is not None:
        values = evaluate(graph, params, options["data"], every=True)
    elif options.get("data") is None:
        result.notes.append("no data given: errors are measured on the weights, not outputs")
    else:
        result.notes.append("no evaluator given to run the network: errors are measured on "
                            "the weights, not outputs")
    for node in list(out):
        if not _eligible(node, mode) or not matches(node.name, options["match"]) \
                or shares_weights(out, node):
            continue
        macs, count = _macs(out, node), _params_of(out, node)
        layer = _Layer(out, node, params, mode, values.get(node.inputs[0]), evaluate)
        chosen = layer.choose_rank(out.copy(), budget, macs, count)
        if not isinstance(chosen, tuple):
            result.notes.append(f"{node.name}: left alone, " + (
                "its 'same' padding is asymmetric" if chosen == "asymmetric" else
                f"no rank within the error budget {budget:g} saves MACs"))
            continue
        rank, err, plan = chosen
        added = _split(out, node, *plan)
        infer_shapes(out)
        params[f"{added}.weight"], params[f"{node.name}.weight"] = layer.factor(layer.weight, rank)
        measured = "outputs" if layer.reference is not None else "weights"
        figures = _figures(out, node, added, macs, count, mode=mode, rank=rank,
                           full_rank=layer.full_rank, error=round(err, 6), measured_on=measured)
        _record(result, figures, added, node,
                f"rank {rank} of {layer.full_rank} ({mode}), relative error {err:.4f} on its "
                f"{measured}, MACs x{figures['macs_ratio']:.4f}")
    return result


def _spatial_product(vertical: np.ndarray, horizontal: np.ndarray) -> np.ndarray:
    """The (O, C, kh, kw) filter bank a vertical-then-horizontal pair computes."""
    return np.einsum("rci,orj->ocij", vertical[..., 0], horizontal[:, :, 0, :])


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a relative error between 0 and 1, got '{text}'") from None
    if not 0 < value < 1:
        raise ValueError(f"expected a relative error between 0 and 1, got {text}")
    return value


def _mode(text: str) -> str:
    if text not in ("spatial", "channel"):
        raise ValueError(f"expected spatial or channel, got '{text}'")
    return text


_MATCH = Option(str, None, "layer names to rewrite: glob patterns separated by | "
                "(default: every eligible layer)")

register(Pass("separable", separable, separable.__doc__, None, False, {"match": _MATCH}))
register(Pass("low_rank", low_rank, low_rank.__doc__, None, False, {
    "mode": Option(_mode, "spatial", "spatial (k x 1 then 1 x k) or channel (k x k to r "
                   "channels, then 1 x 1)"),
    "budget": Option(_budget, 0.05, "the largest relative error allowed on a layer's output"),
    "match": _MATCH,
}, needs_params=True))
