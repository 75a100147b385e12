"""Model files: ``weights.safetensors`` + ``meta.json`` in one directory, never pickles.

Stores load what the operator sends, and loading a pickle can run code; safetensors holds only tensors. The
meta names the model kind and config, the catalog hash the weights were trained against (a store refuses a
model for another catalog), the round, and a sha256 of the weights file so a half-written or corrupted file
is refused instead of served.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from shared.atomic import fsync_dir
from shared.errors import CatalogMismatchError, IncompatibleModelError
from shared.models import ModelConfig, SequentialRecommender, build_model

FORMAT = "fedrec-model/1"
WEIGHTS = "weights.safetensors"
META = "meta.json"
ORIGINS = ("central", "global", "personalized")


@dataclass(frozen=True)
class ModelMeta:
    """What a model file says about itself; ``origin`` is central, global (federated) or personalized."""

    model: dict
    n_items: int
    catalog_hash: str
    origin: str = "central"
    round: int | None = None
    created: float = field(default_factory=time.time)
    weights_sha256: str = ""
    format: str = FORMAT
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def model_to_bytes(model: SequentialRecommender) -> bytes:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return st_save(state)


def save_model(
    model: SequentialRecommender,
    directory: str | os.PathLike[str],
    *,
    catalog_hash: str,
    origin: str = "central",
    round_id: int | None = None,
    extra: dict | None = None,
) -> ModelMeta:
    """Write the model directory atomically: built in a temp sibling, fsynced, then renamed into place."""
    if origin not in ORIGINS:
        raise ValueError(f"origin={origin!r}; choose one of {ORIGINS}")
    target = Path(directory)
    if target.exists():
        raise FileExistsError(f"{target} exists; model versions are immutable")
    target.parent.mkdir(parents=True, exist_ok=True)
    weights = model_to_bytes(model)
    meta = ModelMeta(
        model=model.config.to_dict(),
        n_items=model.n_items,
        catalog_hash=catalog_hash,
        origin=origin,
        round=round_id,
        weights_sha256=hashlib.sha256(weights).hexdigest(),
        extra=extra or {},
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_synced(tmp / WEIGHTS, weights)
        _write_synced(tmp / META, json.dumps(meta.to_dict(), indent=2, sort_keys=True).encode())
        fsync_dir(tmp)
        os.rename(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def read_meta(directory: str | os.PathLike[str]) -> ModelMeta:
    path = Path(directory) / META
    try:
        data = json.loads(path.read_text())
        meta = ModelMeta(**data)
    except (OSError, ValueError, TypeError) as err:
        raise IncompatibleModelError(f"{path}: unreadable model meta ({err})") from err
    if meta.format != FORMAT:
        raise IncompatibleModelError(f"{path}: format {meta.format!r}, expected {FORMAT!r}")
    return meta


def load_model(
    directory: str | os.PathLike[str], *, expected_catalog_hash: str | None = None
) -> tuple[SequentialRecommender, ModelMeta]:
    """Load and verify a model directory; any mismatch raises instead of serving a wrong model."""
    directory = Path(directory)
    meta = read_meta(directory)
    if expected_catalog_hash is not None and meta.catalog_hash != expected_catalog_hash:
        raise CatalogMismatchError(
            f"{directory}: model trained against catalog {meta.catalog_hash[:12]}, "
            f"this store has {expected_catalog_hash[:12]}"
        )
    try:
        weights = (directory / WEIGHTS).read_bytes()
    except OSError as err:
        raise IncompatibleModelError(f"{directory}: cannot read weights ({err})") from err
    if hashlib.sha256(weights).hexdigest() != meta.weights_sha256:
        raise IncompatibleModelError(f"{directory}: weights checksum mismatch (corrupt or half-written file)")
    try:
        state = st_load(weights)
        model = build_model(ModelConfig.from_dict(meta.model), meta.n_items)
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, ValueError, KeyError) as err:
        raise IncompatibleModelError(f"{directory}: weights do not fit the declared model ({err})") from err
    model.eval()
    return model, meta


def state_to_arrays(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the parameters, keyed like ``state_dict`` (what travels in federation)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
