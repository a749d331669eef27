"""Training: everything that runs a network to learn or to look inside it.

``loop`` (``fit``, ``evaluate``, ``TrainConfig``), ``tasks`` (classification, segmentation,
detection, embeddings), ``losses``, ``metrics``, ``optim``, ``detection`` and ``boxes``
(the YOLO head and its box kernels), ``data`` (readers, generated sets) and ``augment``,
``distributed`` (data-parallel over MPI), ``visualize`` and ``pictures``. None of it reads
a spec: it takes a compiled ``runtime.model.Model``. This package imports nothing itself,
so the backends can take the losses and optimisers without loading the loop.
"""
