"""The federation's one typed config, parsed once from Flower's flat kebab-case run config.

Flower hands every ServerApp and ClientApp a flat ``run_config`` (``[tool.flwr.app.config]`` in
``pyproject.toml``, overridden by ``flwr run --run-config "k=v ..."``). Nothing else in fedrec reads those raw
keys: ``FederationConfig.from_run_config`` validates every value once (unknown keys and bad values raise
``ConfigError`` naming the key and the value) and returns frozen dataclasses, and ``to_run_config`` writes
the same keys back, so a simulation can hand its config to Flower and get the identical object out again.

A store's own privacy policy wins over the operator's defaults: ``epsilon``, ``delta`` and ``accountant`` in a
SuperNode's ``--node-config`` override the run config on that store (``FederationConfig.with_node_policy``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shared.errors import ConfigError
from shared.models import MODEL_REGISTRY, ModelConfig
from shared.privacy.accounting import ACCOUNTANTS, PrivacyBudget

__all__ = [
    "RUN_CONFIG_KEYS",
    "SERVER_OPTIMIZERS",
    "AggregationConfig",
    "FederationConfig",
    "LocalTrainingConfig",
    "PersonalizationConfig",
    "PrivacyConfig",
    "SimulationDataConfig",
]

SERVER_OPTIMIZERS = ("fedavg", "fedadam")


@dataclass(frozen=True)
class LocalTrainingConfig:
    """One round of local training at a store (DP-SGD when ``privacy.dp``; see ``client.dp_training``).

    ``epochs`` local epochs per round (steps = ceil(epochs / q), q = batch_size / customers), Poisson batches
    of mean ``batch_size`` customers, Adam with ``lr``, per-customer clipping norm ``max_grad_norm`` (C),
    loss on each customer's most recent ``loss_window`` positions (None = all). The local learning rate of
    round ``r`` is ``lr * lr_decay ** (r - 1)`` (derived from the round id, so a resumed run gets the same
    rate): every store starts Adam afresh each round, whose first steps move every coordinate by about
    ``lr``; decaying the rate across rounds does what the centralized run's plateau decay does.
    """

    epochs: float = 3.0
    batch_size: int = 64
    lr: float = 3e-3
    max_grad_norm: float = 1.0
    grad_sample_mode: str = "bk"
    loss_window: int | None = 10
    lr_decay: float = 1.0

    def round_lr(self, round_id: int) -> float:
        """The local learning rate of round ``round_id`` (1-based)."""
        return self.lr * self.lr_decay ** max(0, round_id - 1)

    def to_dp_config(self, round_id: int = 1):
        """The DP training config of round ``round_id`` (``client.dp_training.DPTrainConfig``, imported
        lazily: it pulls in Opacus)."""
        from client.dp_training import DPTrainConfig

        return DPTrainConfig(
            epochs=self.epochs,
            expected_batch_size=self.batch_size,
            lr=self.round_lr(round_id),
            max_grad_norm=self.max_grad_norm,
            grad_sample_mode=self.grad_sample_mode,
            loss_window=self.loss_window,
        )


@dataclass(frozen=True)
class PrivacyConfig:
    """Customer-level DP-SGD at every store (``dp=False`` only for the non-private benchmark arm).

    ``epsilon`` / ``delta`` is each store's total budget over the whole run, per customer of that store,
    accounted by ``accountant`` (RDP: Mironov 2017; PRV: Gopi et al. 2021).
    """

    dp: bool = True
    epsilon: float = 8.0
    delta: float = 1e-5
    accountant: str = "rdp"

    def budget(self) -> PrivacyBudget:
        return PrivacyBudget(epsilon_max=self.epsilon, delta=self.delta, accountant=self.accountant)


@dataclass(frozen=True)
class AggregationConfig:
    """How the operator combines store updates and moves the global model.

    Parameters
    ----------
    insecure_plain : bool, default False
        Turn secure aggregation (SecAgg+) off. The operator then sees every store's update; for debugging and
        benchmarks only, logged as a warning on both sides, and a deployed store refuses it unless its own
        node config allows it.
    server_optimizer : str, default "fedavg"
        ``fedavg`` (server step ``lr * mean delta``) or ``fedadam`` (Reddi et al. 2021, "Adaptive
        Federated Optimization").
    delta_bound : float, default 1.0
        Every coordinate of a store's update is clipped to ``[-delta_bound, delta_bound]`` at the store, and
        the same value is SecAgg+'s clipping range, so secure aggregation never clips silently. Clipping the
        DP-SGD output is post-processing: it costs no privacy. It is consistent with the DP clip because the
        local optimizer (Adam) moves each coordinate by at most about ``lr`` per step whatever the clipped,
        noised gradient: a round of ``steps`` steps stays within ``lr * steps`` (0.003 x ~20 = 0.06 in the
        demo), far inside 1.0, so the bound never binds in practice (``clipped_fraction`` in the round log
        says if it does), while the quantization step ``2 * delta_bound / 2^bits`` stays ~1e-9.
    max_weight : float, default 1000
        SecAgg+'s largest per-store weight; a store's weight (its customers with a training target) is capped
        here. Set near the largest store: larger values coarsen the quantization.
    stage_timeout : float, default 600
        Seconds the operator waits for replies at each stage of a round (always finite).
    """

    insecure_plain: bool = False
    server_optimizer: str = "fedavg"
    server_lr: float = 1.0
    server_beta1: float = 0.9
    server_beta2: float = 0.99
    server_tau: float = 1e-3
    delta_bound: float = 1.0
    max_weight: float = 1000.0
    stage_timeout: float = 600.0
    fraction_train: float = 1.0
    min_stores: int = 2

    @property
    def secure(self) -> bool:
        return not self.insecure_plain


@dataclass(frozen=True)
class PersonalizationConfig:
    """After the last round every store fine-tunes a local copy (never uploaded) with early stopping."""

    enabled: bool = True
    epochs: int = 5
    lr: float = 1e-3
    patience: int = 2


@dataclass(frozen=True)
class SimulationDataConfig:
    """Where simulated stores get their data (ignored by a deployed store, which has ``store-dir``)."""

    dataset: str = "synthetic"
    partition_alpha: float = 0.5
    synthetic_items: int = 2000
    synthetic_customers: int = 3000
    max_customers: int = 0  # 0 = all; a seeded subset for quick runs


@dataclass(frozen=True)
class FederationConfig:
    """Everything a federated run needs; see ``RUN_CONFIG_KEYS`` for the key of every field."""

    rounds: int = 5
    seed: int = 0
    run_dir: str = "runs/federation"
    catalog: str = ""  # the operator's catalog.json; "" in simulation (built from the data set)
    resume: bool = False
    client_threads: int = 1
    model: ModelConfig = field(
        default_factory=lambda: ModelConfig(
            kind="transformer", dim=32, max_len=50, n_layers=2, n_heads=2, dropout=0.2, emb_dropout=0.2
        )
    )
    local: LocalTrainingConfig = field(default_factory=LocalTrainingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    personalization: PersonalizationConfig = field(default_factory=PersonalizationConfig)
    data: SimulationDataConfig = field(default_factory=SimulationDataConfig)

    def __post_init__(self) -> None:
        _validate(self)

    # ------------------------------------------------------------------------------------ run config
    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any] | None) -> FederationConfig:
        """Parse Flower's flat run config; absent keys keep their defaults, unknown keys raise."""
        values: dict[str, dict[str, Any]] = {}
        for key, raw in (run_config or {}).items():
            if key not in RUN_CONFIG_KEYS:
                raise ConfigError(
                    f"unknown run config key {key!r}={raw!r}; "
                    f"known keys: {', '.join(sorted(RUN_CONFIG_KEYS))}"
                )
            section, name, convert = RUN_CONFIG_KEYS[key]
            try:
                value = convert(raw)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"run config {key}={raw!r}: {err}") from None
            values.setdefault(section, {})[name] = value
        base = cls()
        top = values.pop("", {})
        sections = {
            name: replace(getattr(base, name), **overrides) if overrides else getattr(base, name)
            for name, overrides in values.items()
        }
        return replace(base, **top, **sections)

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """The flat run config that ``from_run_config`` turns back into this object."""
        out: dict[str, bool | int | float | str] = {}
        for key, (section, name, _) in RUN_CONFIG_KEYS.items():
            owner = getattr(self, section) if section else self
            value = getattr(owner, name)
            out[key] = 0 if value is None else value
        return out

    def with_node_policy(self, node_config: Mapping[str, Any] | None) -> FederationConfig:
        """A store's own budget (``epsilon``/``delta``/``accountant`` in its node config) overrides the
        run's."""
        node_config = node_config or {}
        overrides: dict[str, Any] = {}
        for key, convert in (
            ("epsilon", _positive_float),
            ("delta", _probability),
            ("accountant", _accountant),
        ):
            if key in node_config:
                try:
                    overrides[key] = convert(node_config[key])
                except (TypeError, ValueError) as err:
                    raise ConfigError(f"node config {key}={node_config[key]!r}: {err}") from None
        return replace(self, privacy=replace(self.privacy, **overrides)) if overrides else self


# ---------------------------------------------------------------------------------------- converters
def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError("expected true or false")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("expected an integer")
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError("expected a finite number")
    return out


def _positive_float(value: Any) -> float:
    out = _float(value)
    if out <= 0:
        raise ValueError("must be > 0")
    return out


def _probability(value: Any) -> float:
    out = _float(value)
    if not 0 < out < 1:
        raise ValueError("must be in (0, 1)")
    return out


def _accountant(value: Any) -> str:
    if value not in ACCOUNTANTS:
        raise ValueError(f"choose one of {ACCOUNTANTS}")
    return str(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _optional_window(value: Any) -> int | None:
    out = _int(value)
    if out < 0:
        raise ValueError("must be >= 0 (0 = every position)")
    return out or None


_Key = tuple[str, str, Callable[[Any], Any]]

# kebab-case key -> (section attribute, field name, converter). "" is the top level.
RUN_CONFIG_KEYS: dict[str, _Key] = {
    "num-server-rounds": ("", "rounds", _int),
    "seed": ("", "seed", _int),
    "run-dir": ("", "run_dir", _str),
    "catalog": ("", "catalog", _str),
    "resume": ("", "resume", _bool),
    "client-threads": ("", "client_threads", _int),
    "model": ("model", "kind", _str),
    "model-dim": ("model", "dim", _int),
    "model-max-len": ("model", "max_len", _int),
    "model-layers": ("model", "n_layers", _int),
    "model-heads": ("model", "n_heads", _int),
    "model-dropout": ("model", "dropout", _float),
    "model-emb-dropout": ("model", "emb_dropout", _float),
    "model-mlp-hidden": ("model", "mlp_hidden", _int),
    "model-tie-output": ("model", "tie_output", _bool),
    "local-epochs": ("local", "epochs", _float),
    "batch-size": ("local", "batch_size", _int),
    "lr": ("local", "lr", _float),
    "lr-decay": ("local", "lr_decay", _float),
    "max-grad-norm": ("local", "max_grad_norm", _float),
    "grad-sample-mode": ("local", "grad_sample_mode", _str),
    "loss-window": ("local", "loss_window", _optional_window),
    "dp": ("privacy", "dp", _bool),
    "epsilon": ("privacy", "epsilon", _float),
    "delta": ("privacy", "delta", _float),
    "accountant": ("privacy", "accountant", _str),
    "insecure-plain-aggregation": ("aggregation", "insecure_plain", _bool),
    "server-optimizer": ("aggregation", "server_optimizer", _str),
    "server-lr": ("aggregation", "server_lr", _float),
    "server-beta1": ("aggregation", "server_beta1", _float),
    "server-beta2": ("aggregation", "server_beta2", _float),
    "server-tau": ("aggregation", "server_tau", _float),
    "delta-bound": ("aggregation", "delta_bound", _float),
    "max-weight": ("aggregation", "max_weight", _float),
    "stage-timeout": ("aggregation", "stage_timeout", _float),
    "fraction-train": ("aggregation", "fraction_train", _float),
    "min-stores": ("aggregation", "min_stores", _int),
    "personalize": ("personalization", "enabled", _bool),
    "finetune-epochs": ("personalization", "epochs", _int),
    "finetune-lr": ("personalization", "lr", _float),
    "finetune-patience": ("personalization", "patience", _int),
    "dataset": ("data", "dataset", _str),
    "partition-alpha": ("data", "partition_alpha", _float),
    "synthetic-items": ("data", "synthetic_items", _int),
    "synthetic-customers": ("data", "synthetic_customers", _int),
    "max-customers": ("data", "max_customers", _int),
}


def _need(ok: bool, key: str, value: object, rule: str) -> None:
    if not ok:
        raise ConfigError(f"run config {key}={value!r} is invalid ({rule})")


def _validate(c: FederationConfig) -> None:
    """Cross-field checks with the run-config key named (section dataclasses check their own fields)."""
    _need(c.rounds >= 1, "num-server-rounds", c.rounds, "must be >= 1")
    _need(c.client_threads >= 1, "client-threads", c.client_threads, "must be >= 1")
    _need(bool(c.run_dir), "run-dir", c.run_dir, "must not be empty")
    _need(c.model.kind in MODEL_REGISTRY, "model", c.model.kind, f"choose one of {sorted(MODEL_REGISTRY)}")
    p = c.privacy
    if p.dp:
        p.budget()  # raises ConfigError naming epsilon_max / delta / accountant
    a = c.aggregation
    _need(
        a.server_optimizer in SERVER_OPTIMIZERS,
        "server-optimizer",
        a.server_optimizer,
        str(SERVER_OPTIMIZERS),
    )
    _need(a.server_lr > 0, "server-lr", a.server_lr, "must be > 0")
    _need(0 <= a.server_beta1 < 1, "server-beta1", a.server_beta1, "must be in [0, 1)")
    _need(0 <= a.server_beta2 < 1, "server-beta2", a.server_beta2, "must be in [0, 1)")
    _need(a.server_tau > 0, "server-tau", a.server_tau, "must be > 0")
    _need(0 < a.delta_bound <= 64, "delta-bound", a.delta_bound, "must be in (0, 64]")
    _need(a.max_weight >= 1, "max-weight", a.max_weight, "must be >= 1")
    _need(0 < a.stage_timeout <= 86_400, "stage-timeout", a.stage_timeout, "seconds in (0, 86400]")
    _need(0 < a.fraction_train <= 1, "fraction-train", a.fraction_train, "must be in (0, 1]")
    _need(a.min_stores >= 2, "min-stores", a.min_stores, "secure aggregation needs >= 2 stores")
    t = c.local
    _need(t.epochs > 0, "local-epochs", t.epochs, "must be > 0")
    _need(t.batch_size >= 1, "batch-size", t.batch_size, "must be >= 1")
    _need(t.lr > 0, "lr", t.lr, "must be > 0")
    _need(0 < t.lr_decay <= 1, "lr-decay", t.lr_decay, "must be in (0, 1]")
    _need(t.max_grad_norm > 0, "max-grad-norm", t.max_grad_norm, "must be > 0")
    _need(
        t.grad_sample_mode in ("bk", "ghost", "hooks"),
        "grad-sample-mode",
        t.grad_sample_mode,
        "bk, ghost or hooks",
    )
    q = c.personalization
    _need(q.epochs >= 1, "finetune-epochs", q.epochs, "must be >= 1")
    _need(q.lr > 0, "finetune-lr", q.lr, "must be > 0")
    _need(q.patience >= 1, "finetune-patience", q.patience, "must be >= 1")
    d = c.data
    _need(bool(d.dataset), "dataset", d.dataset, "must not be empty")
    _need(d.partition_alpha > 0, "partition-alpha", d.partition_alpha, "must be > 0")
    _need(d.max_customers >= 0, "max-customers", d.max_customers, "must be >= 0 (0 = all)")
