"""Serving settings in one frozen value, validated once at the boundary (CLI or test)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from client.serving.hidden_cache import DEFAULT_CACHE_SIZE
from shared.errors import ConfigError

SCORERS = ("fast", "naive")

# Request-shape limits are fixed (not per deployment) because they are part of the published schema.
MAX_N = 1000
MAX_SESSION_ITEMS = 200
MAX_EVENTS_PER_REQUEST = 100
MAX_ID_LENGTH = 256


@dataclass(frozen=True)
class ServeConfig:
    """How one store's service runs.

    ``max_body_bytes`` caps a request body (413 beyond it); ``poll_seconds`` is how often the model dir is
    checked for a new version; ``history_keep`` is how many recent items per customer stay in memory (at
    least the model window); ``max_batch`` caps how many queued requests one scoring pass takes;
    ``scorer="naive"`` is the benchmark's baseline (the model's own forward per request, full sort);
    ``epsilon_budget`` is the store's privacy budget shown next to the ledger's spend on the staff page;
    ``hidden_cache`` is how many history windows keep their encoder output (0: none); ``coarse`` chooses
    bf16 two-stage scoring (``auto``: where it is faster; results are exact either way).
    """

    state_dir: Path
    interactions: Path | None = None
    catalog: Path | None = None
    max_body_bytes: int = 64 * 1024
    poll_seconds: float = 1.0
    history_keep: int = 200
    max_batch: int = 64
    scorer: str = "fast"
    epsilon_budget: float | None = None
    coarse: str = "auto"
    hidden_cache: int = DEFAULT_CACHE_SIZE

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        if self.max_body_bytes < 1024:
            raise ConfigError(f"serve.max-body-bytes={self.max_body_bytes!r} must be >= 1024")
        if self.poll_seconds <= 0:
            raise ConfigError(f"serve.poll-seconds={self.poll_seconds!r} must be > 0")
        if self.history_keep < 1:
            raise ConfigError(f"serve.history-keep={self.history_keep!r} must be >= 1")
        if self.max_batch < 1:
            raise ConfigError(f"serve.max-batch={self.max_batch!r} must be >= 1")
        if self.epsilon_budget is not None and not self.epsilon_budget > 0:
            raise ConfigError(f"serve.epsilon-budget={self.epsilon_budget!r} must be > 0")
        if self.hidden_cache < 0:
            raise ConfigError(f"serve.hidden-cache={self.hidden_cache!r} must be >= 0 (0 turns it off)")
        if self.coarse not in ("auto", "bf16", "off"):
            raise ConfigError(f"serve.coarse={self.coarse!r}; choose auto, bf16 or off")
        if self.scorer not in SCORERS:
            raise ConfigError(f"serve.scorer={self.scorer!r}; choose one of {SCORERS}")
