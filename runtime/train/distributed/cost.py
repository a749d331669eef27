"""The alpha-beta cost model of a ring all-reduce: predicts the scaling efficiency of
more ranks and hosts from one machine's measurements."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

@dataclass(frozen=True)
class Link:
    """An all-reduce's cost per message (alpha, seconds) and per byte (beta, s/B)."""
    alpha: float
    beta: float
    name: str

    def ring(self, ranks: int, nbytes: float) -> float:
        """Seconds for a ring all-reduce of ``nbytes`` over ``ranks``: a reduce-scatter and
        an all-gather, each P - 1 steps that send nbytes / P to the next rank."""
        if ranks == 1:
            return 0.0
        return 2 * (ranks - 1) * self.alpha + 2 * (ranks - 1) / ranks * nbytes * self.beta


def fit_link(sizes, seconds, ranks: int, name: str) -> Link:
    """alpha and beta from all-reduce times of several sizes on ``ranks`` (least squares
    on t = 2(P-1) alpha + 2(P-1)/P n beta)."""
    a = np.stack([np.full(len(sizes), 2.0 * (ranks - 1)),
                  2.0 * (ranks - 1) / ranks * np.asarray(sizes, float)], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(a, np.asarray(seconds, float), rcond=None)
    return Link(max(float(alpha), 0.0), max(float(beta), 0.0), name)


def cost_model(compute_s: float, backward_s: float, bucket_bytes: list[int], ranks: int,
               link: Link) -> dict:
    """Predicted step of one rank: its compute (forward and backward of a fixed per-rank
    batch) and the communication the backward pass does not hide. Buckets leave during
    the backward pass, so all but the last can overlap it: exposed = max(all buckets -
    the backward pass, the last bucket). Efficiency: compute / step."""
    each = [link.ring(ranks, b) for b in bucket_bytes]
    comm = sum(each)
    exposed = max(comm - backward_s, each[-1] if each else 0.0)
    step = compute_s + exposed
    return {"ranks": ranks, "link": link.name, "comm_s": comm, "exposed_s": exposed,
            "step_s": step, "efficiency": compute_s / step}



PREDICT_RANKS = (2, 4, 8, 16, 32, 64)


def scaling_report(results: list[dict], *, network: Link, compute_s: float | None = None,
                   compute_label: str = "") -> dict:
    """Measured throughput, communication and efficiency per rank count, and the cost
    model's prediction next to each measurement and for more ranks: on links like this
    host's (alpha and beta fitted to all-reduce times measured here) and across hosts
    (``network``, assumed). ``compute_s``: a rank's compute per step to predict with
    (default: the one-rank run's, measured)."""
    base = next((r for r in results if r["ranks"] == 1), None)
    timed = [r for r in results if r.get("link")]
    local = (fit_link(timed[-1]["link"]["sizes"], timed[-1]["link"]["seconds"],
                      timed[-1]["ranks"], "this host (measured)") if timed else None)
    ref = base or results[0]
    buckets = (timed[-1] if timed else ref)["bucket_bytes"]
    steps = ref["steps"]
    measured_compute = ref["work_s"] / steps
    measured_backward = (ref["backward_s"] - ref["comm_s"]) / steps
    compute = measured_compute if compute_s is None else compute_s
    # on another device, the backward pass takes about two thirds of a step
    backward = measured_backward if compute_s is None else compute_s * 2 / 3
    rows = []
    for r in results:
        row = {"ranks": r["ranks"], "images_per_s": r["images_per_s"],
               "step_s": r["seconds"] / r["steps"],
               "comm_share": r["comm_s"] / r["seconds"],
               "exposed_share": r["wait_s"] / r["seconds"],
               "imbalance_share": r["imbalance_s"] / r["seconds"]}
        if base is not None:
            row["efficiency"] = r["images_per_s"] / (r["ranks"] * base["images_per_s"])
        if local is not None and r["ranks"] > 1:
            row["predicted_efficiency"] = cost_model(
                measured_compute, measured_backward, buckets, r["ranks"], local)["efficiency"]
        rows.append(row)
    links = [x for x in (local, network) if x is not None]
    predictions = [cost_model(compute, backward, buckets, p, link)
                   for link in links for p in PREDICT_RANKS]
    return {"measured": rows, "predicted": predictions, "buckets": buckets,
            "compute_s": compute, "compute_label": compute_label or "measured here, 1 rank",
            "backward_s": backward, "per_rank_batch": ref["per_rank_batch"],
            "threads": ref["threads"],
            "links": [{"name": x.name, "alpha_s": x.alpha, "beta_s_per_byte": x.beta}
                      for x in links]}

