"""``archc bench``: a compiled network's measured kernel times per layer, next to what the
analysis predicts for them (FLOPs, the roofline estimate of a device profile).

The times come from ``Model.profile`` (the backend's clock: CUDA events on a GPU, the
host's clock on the CPU); the FLOPs and the estimate from ``archc.analysis.analyse`` of
the same graph, matched by layer name. Plain data out (``Profile``), then a table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from archc.analysis.report import Report
from archc.analysis.table import human, seconds


@dataclass(frozen=True)
class LayerProfile:
    name: str
    kind: str
    forward_s: float
    backward_s: float | None
    flops: int  # forward FLOPs of the whole batch
    estimate_s: float | None  # the roofline estimate of the forward pass
    bound: str | None
    on_device: bool
    algorithm: str | None = None  # how the backend computes it, where it has a choice
    why: str | None = None

    @property
    def flop_rate(self) -> float | None:
        """Achieved forward FLOP/s."""
        return self.flops / self.forward_s if self.forward_s > 0 and self.flops else None


@dataclass(frozen=True)
class Profile:
    network: str
    backend: str
    device: str
    clock: str
    batch: int
    repeat: int
    profile: str | None  # the roofline's device profile
    layers: list[LayerProfile]
    # each kernel and library GEMM on its own (``Model.profile_kernels``): (kernel, calls
    # per pass, seconds per pass), the most time first; None where not asked for
    kernels: list[tuple[str, float, float]] | None = None

    @property
    def forward_s(self) -> float:
        return sum(layer.forward_s for layer in self.layers)

    @property
    def backward_s(self) -> float | None:
        parts = [layer.backward_s for layer in self.layers if layer.backward_s is not None]
        return sum(parts) if parts else None

    @property
    def step_s(self) -> float:
        return self.forward_s + (self.backward_s or 0.0)

    def by_kind(self) -> list[tuple[str, float, int]]:
        """(kind, seconds forward and backward, layers), most time first."""
        kinds: dict[str, list] = {}
        for layer in self.layers:
            entry = kinds.setdefault(layer.kind, [0.0, 0])
            entry[0] += layer.forward_s + (layer.backward_s or 0.0)
            entry[1] += 1
        return sorted(((k, t, n) for k, (t, n) in kinds.items()), key=lambda row: -row[1])

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(forward_s=self.forward_s, backward_s=self.backward_s,
                   images_per_s=self.batch / self.step_s if self.step_s else None)
        for layer, record in zip(self.layers, out["layers"]):
            record["flop_rate"] = layer.flop_rate
        return out


def build_profile(model, report: Report, times: dict, *, repeat: int,
                  profile: str | None, kernels: list | None = None) -> Profile:
    """Join ``Model.profile``'s times with the analysis ``report`` of the same graph (and
    ``Model.profile_kernels``'s rows, where given)."""
    nodes = {node.name: node for node in report.nodes}
    layers = []
    for op in model.program.ops:
        measured = times.get(op.name, {})
        node = nodes.get(op.name)
        how = model.algorithm(op, report.batch) or (None, None)
        layers.append(LayerProfile(
            op.name, node.kind if node else op.kind, measured.get("forward", 0.0),
            measured.get("backward"), node.flops if node else 0,
            node.latency_s if node else None, node.bound if node else None,
            model.backend.on_device(op), *how))
    return Profile(model.program.name, model.backend.name, model.backend.device_name(),
                   model.backend.clock.name, report.batch, repeat, profile, layers,
                   kernels)


def _rate(flops_per_s: float | None) -> str:
    return "-" if flops_per_s is None else human(flops_per_s, "FLOP/s", " ")


def _times(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio < 100 else f"{human(ratio)}x"


def format_profile(p: Profile, top: int | None = None) -> str:
    """The table ``archc bench`` prints: the slowest layers first."""
    train = p.backward_s is not None
    passes = "1 pass" if p.repeat == 1 else f"{p.repeat} passes"
    lines = [f"{p.network} on {p.backend} ({p.device}), batch {p.batch}: mean of {passes} "
             f"after two warm-up passes, timed with {p.clock}",
             f"forward {seconds(p.forward_s)} ({p.batch / p.forward_s:,.0f} images/s)"
             + (f"; training step (forward + backward kernels) {seconds(p.step_s)} "
                f"({p.batch / p.step_s:,.0f} images/s)" if train else "")]
    head = ["layer", "kind", "forward", "share", "achieved"]
    algorithms = any(layer.algorithm for layer in p.layers)
    if algorithms:
        head[2:2] = ["algorithm"]
    if train:
        head[head.index("share"):head.index("share")] = ["backward"]
    if p.profile:
        head += [f"roofline ({p.profile})", "measured/roofline"]
    rows = [head]
    total = p.step_s
    ranked = sorted(p.layers, key=lambda layer: -(layer.forward_s + (layer.backward_s or 0)))
    for layer in ranked[:top] if top else ranked:
        spent = layer.forward_s + (layer.backward_s or 0.0)
        row = [layer.name + ("" if layer.on_device else " (host)"), layer.kind,
               seconds(layer.forward_s), f"{100 * spent / total:.1f}%",
               _rate(layer.flop_rate)]
        if algorithms:
            row[2:2] = [layer.algorithm or "-"]
        if train:
            row[head.index("share") - 1:head.index("share") - 1] = [
                seconds(layer.backward_s or 0.0)]
        if p.profile:
            est = layer.estimate_s
            row += ["-" if est is None else f"{seconds(est)} {layer.bound or ''}".rstrip(),
                    "-" if not est else _times(layer.forward_s / est)]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines.append("")
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    if top and len(p.layers) > top:
        lines.append(f"... {len(p.layers) - top} more layers (--top 0 shows all)")
    reasons = {}
    for layer in ranked:  # every layer, shown or not
        if layer.algorithm:
            reasons.setdefault(layer.algorithm, []).append(f"{layer.name}: {layer.why}")
    if reasons:
        lines.append("")
        lines.append("why each algorithm (the slowest layers that run it):")
        for name, whys in reasons.items():
            lines.append(f"  {name}: " + "; ".join(whys[:2]) + (" ..." if len(whys) > 2 else ""))
    lines.append("")
    lines.append("time by kind: " + ", ".join(
        f"{kind} {100 * spent / total:.0f}% ({count})" for kind, spent, count in p.by_kind()))
    if p.profile:
        estimate = sum(layer.estimate_s or 0.0 for layer in p.layers)
        lines.append(f"roofline estimate of the forward pass on {p.profile}: "
                     f"{seconds(estimate)}; measured {seconds(p.forward_s)} "
                     f"({_times(p.forward_s / estimate)})" if estimate else "")
    host = [layer.name for layer in p.layers if not layer.on_device]
    if host and p.backend == "cuda":
        lines.append(f"{len(host)} of {len(p.layers)} layers ran through the host "
                     f"(no device kernel yet): {', '.join(host[:6])}"
                     + (" ..." if len(host) > 6 else ""))
    if p.kernels is not None:
        lines += ["", *_kernel_table(p, top)]
    return "\n".join(lines).rstrip()


def _kernel_table(p: Profile, top: int | None) -> list[str]:
    """The kernels' own times (``--kernels``), the most time first."""
    total = sum(spent for _, _, spent in p.kernels)
    shown = p.kernels[:top] if top else p.kernels
    rows = [["kernel", "calls", "time", "share", "mean"]]
    for name, calls, spent in shown:
        rows.append([name, f"{calls:g}", seconds(spent),
                     f"{100 * spent / total:.1f}%" if total else "-",
                     seconds(spent / calls) if calls else "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    what = "training step" if p.backward_s is not None else "forward pass"
    lines = [f"kernels, each launch and library GEMM on its own, per {what}: "
             f"{seconds(total)} in all, {sum(c for _, c, _ in p.kernels):g} launches"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    if top and len(p.kernels) > top:
        lines.append(f"... {len(p.kernels) - top} more kernels (--top 0 shows all)")
    return lines
