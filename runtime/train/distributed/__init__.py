"""Data-parallel training over MPI: every process (rank) holds the whole network, reads
its shard of each global batch, and the gradients are averaged across ranks with
``Allreduce`` before every optimiser step, so all ranks keep the same weights.

- Sharding (:func:`shard`): the global batches are those of a single-process run (a
  permutation drawn from (seed, epoch)); rank r takes the r-th contiguous slice of each,
  so the data order follows the global step and not the number of ranks.
- Gradients (:class:`GradientReducer`): each rank's gradient of its shard's mean loss is
  weighted by its share of the global batch, copied into contiguous buckets in the order
  the backward pass finishes them, and each bucket's ``Iallreduce`` (a sum) starts as soon
  as its last gradient is final, so communication overlaps the rest of the backward pass.
- Batch norm: per-rank statistics by default (the running statistics are averaged over
  the ranks before every evaluation and checkpoint: their update is linear, so this
  equals averaging at every step), or synchronised (:class:`SyncBatchNorm`): the moments
  of every rank's batch are combined in the forward pass and the gradient sums in the
  backward pass.
- :func:`cost_model`: the alpha-beta model of a ring all-reduce, to predict the scaling
  efficiency of more ranks and hosts from one machine's measurements.

mpi4py and an MPI library are optional (``pip install 'archc[distributed]'``: mpi4py and
Open MPI's wheel); a single process (:data:`ALONE`) needs neither.
"""

from __future__ import annotations

from runtime.train.distributed.cost import (  # noqa: F401 (the package's interface)
    PREDICT_RANKS,
    Link,
    cost_model,
    fit_link,
    scaling_report,
)
from runtime.train.distributed.reducer import (  # noqa: F401
    GradientReducer,
    average_buffers,
    broadcast_state,
    readiness_order,
)
from runtime.train.distributed.world import (  # noqa: F401
    ALONE,
    BUCKET_MB,
    INSTALL_HINT,
    ROOT_ENV,
    SyncBatchNorm,
    World,
    current,
    launch,
    launch_env,
    mpirun,
    shard,
    stop_job,
    where,
)
