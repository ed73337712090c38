"""The cache-key form of the week before 2026-12-02 (model fingerprints over the configs as loaded, with the
model folder's path among the key's fields), accepted by `--resume` of a run started then and by
`load_setseq` of a LoRA file written then. Kept until 2027-06-01 (six months); then this module goes, with
`BackboneInfo.legacy_fingerprint`."""

from __future__ import annotations

from setseq.backbones.base import Backbone
from setseq.config import RunConfig
from setseq.train.encode import concept_configs, concept_key, run_key


def legacy_run_key(cfg: RunConfig, bb: Backbone) -> str | None:
    """The run's cache key as setseq computed it before 2026-12-02, recorded in the checkpoints of a run started
    then: `--resume` accepts it. Nothing is encoded (the video files are hashed again)."""
    if bb.info.legacy_fingerprint is None:
        return None
    return run_key([concept_key(one, bb, legacy=True)[1] for one in concept_configs(cfg)])
