"""A training run's settings: :class:`TrainConfig`, the task's options and the data, merged
from a spec's ``training:`` section (which the lowered program carries) and the caller's
own settings over it. ``archc train`` and a Python caller of ``fit`` go through the same
:func:`settings`, so both run the same training for the same spec and flags.

Examples
--------
>>> s = settings({"epochs": 12, "lr": 0.05, "data": "digits"}, {"lr": 0.1, "seed": None})
>>> s.config.epochs, s.config.lr, s.data
(12, 0.1, 'digits')
>>> settings({}, {"unfreeze": ["3:layer4.*"]}).config.unfreeze
((3, 'layer4.*'),)
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from runtime.errors import TrainingError, UsageError
from runtime.train.distributed import BUCKET_MB
from runtime.train import optim


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup: int = 0
    label_smoothing: float = 0.0
    clip: float | None = None
    augment: str | None = None  # e.g. "crop,flip,mixup" (runtime/train/augment.py)
    freeze: tuple[str, ...] = ()  # parameter name patterns that do not train ("layer1.*")
    unfreeze: tuple[tuple[int, str], ...] = ()  # (epoch, pattern): frozen ones thaw then
    patience: int | None = None  # stop after this many epochs without a better test accuracy
    seed: int = 0
    sync_bn: bool = False  # data-parallel: batch statistics over every rank's batch
    # data-parallel: gradients all-reduced in buckets of this many MiB
    bucket_mb: float = BUCKET_MB
    checkpoint_every: int | None = None  # also checkpoint every this many steps (in epochs)

    def make_optimizer(self, params, kernels=None):
        """The optimiser over ``params``; ``kernels``: where they live (a backend's
        ``optim``; None: the host)."""
        if self.optimizer == "sgd":
            return optim.SGD(params, self.lr, momentum=self.momentum, nesterov=self.nesterov,
                             weight_decay=self.weight_decay, kernels=kernels)
        if self.optimizer in ("adam", "adamw"):
            return optim.OPTIMIZERS[self.optimizer](params, self.lr,
                                                    weight_decay=self.weight_decay,
                                                    kernels=kernels)
        raise TrainingError(f"unknown optimizer '{self.optimizer}' (sgd, adam, adamw)")


CONFIG_KEYS = tuple(f.name for f in fields(TrainConfig))
"""The settings :class:`TrainConfig` takes (``archc train``'s flags, dashes aside)."""
TASK_KEYS = ("task", "loss", "margin", "box_loss", "objectness", "class_weights",
             "anchor_scale")
"""The settings of the task (``runtime/train/tasks.py``): its kind, then its options."""
KEYS = CONFIG_KEYS + TASK_KEYS + ("data",)
"""Every setting a spec's ``training:`` section or a caller may give."""


def epoch_pattern(text: str) -> tuple[int, str]:
    """``"3:layer4.*"`` -> ``(3, "layer4.*")``: from epoch 3 on, ``layer4.*`` trains."""
    epoch, sep, pattern = text.partition(":")
    if not sep or not epoch.isdigit() or int(epoch) < 1 or not pattern:
        raise UsageError(f"'{text}' is not EPOCH:PATTERN (e.g. 3:'layer4.*')")
    return int(epoch), pattern


@dataclass(frozen=True)
class Settings:
    """A run's settings: the loop's ``config``, the ``task`` kind (None: from the data) and
    its ``options``, and the ``data`` source (None when neither side names one)."""

    config: TrainConfig
    task: str | None = None
    options: dict = field(default_factory=dict)
    data: str | None = None


def merge(section: dict, given: dict) -> dict:
    """The spec's ``training:`` section with the caller's settings over it (a setting given
    as None or [] is not given); unknown names refused."""
    unknown = sorted(set(section) - set(KEYS)) + sorted(set(given) - set(KEYS))
    if unknown:
        raise UsageError(f"unknown training setting '{unknown[0]}' (settings: "
                         f"{', '.join(KEYS)})")
    merged = dict(section)
    merged.update({k: v for k, v in given.items() if v is not None and v != []})
    return merged


def settings(section: dict, given: dict | None = None) -> Settings:
    """The :class:`Settings` of a run: ``section`` (a spec's ``training:``, as
    ``program.training`` carries it) with ``given`` over it."""
    merged = merge(section, given or {})
    try:
        unfreeze = tuple(u if isinstance(u, tuple) else
                         tuple(u) if isinstance(u, list) else epoch_pattern(u)
                         for u in merged.get("unfreeze", ()))
    except UsageError as exc:
        raise UsageError(f"training setting 'unfreeze': {exc.message}") from None
    config = TrainConfig(**{**{k: merged[k] for k in CONFIG_KEYS if k in merged},
                            "freeze": tuple(merged.get("freeze", ())), "unfreeze": unfreeze})
    options = {k: merged[k] for k in TASK_KEYS[1:] if k in merged}
    if "label_smoothing" in merged:
        options["label_smoothing"] = merged["label_smoothing"]
    return Settings(config, merged.get("task"), options, merged.get("data"))
