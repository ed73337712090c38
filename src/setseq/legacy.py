"""The model-fingerprint and cache-key form of the week before 2026-12-02, in one place: fingerprints over the
model's configs as loaded (folder path, library version and load dtype counted) and cache keys with the model
folder's path among their fields. `--resume` of a run started then, and LoRA files written then, are accepted.
Kept until 2027-06-01; then remove this module, `BackboneInfo.legacy_fingerprint` and the one call of each
function below."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from setseq.data.cache import cache_key, config_hash, run_key

if TYPE_CHECKING:  # (a type only: the backbones import this module)
    from setseq.backbones.base import BackboneInfo


def legacy_fingerprint(configs: Any, digits: int) -> str:
    """A model's fingerprint as setseq computed it before 2026-12-02: over its configs as loaded (today's
    hashes `backbones.base.architecture(configs)`)."""
    return config_hash(configs, digits)


def legacy_run_key(info: BackboneInfo, fields: list[dict[str, Any]]) -> str | None:
    """The run's cache key as setseq computed it before 2026-12-02 from each concept's key fields
    (`train.encode.run_fields`), recorded in the checkpoints of a run started then: `--resume` accepts it."""
    if info.legacy_fingerprint is None:
        return None
    old = {"fingerprint": info.legacy_fingerprint, "model": info.model_id}
    return run_key([cache_key(f | old)[1] for f in fields])
