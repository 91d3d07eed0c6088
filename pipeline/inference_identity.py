"""What identifies the computation of a change cube: its inference document and fingerprint.

A change cube records the document of everything that decides its values (the job's data-plane
fields, the input cube's identity, the models, the tiling, the prompts, the store format) and its
SHA-256, the *fingerprint*. A run resumes an existing cube only when the fingerprints agree
(:func:`pipeline.change_cube.check_reusable`).

The job's fields enter through an allow-list, :data:`INFERENCE_JOB_FIELDS`, the convention of the
input cube's fingerprint (:func:`pipeline.cube.input_fingerprint`): a job field decides the result
only when it is named there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.change_cube import FORMAT
from pipeline.engine_spec import ModelSpec
from pipeline.models import ModelIdentity
from pipeline.spec import JobSpec

__all__ = ["INFERENCE_JOB_FIELDS", "fingerprint", "inference_document", "inference_job_fields"]

#: Job fields that decide the inference result. The others do not: where the output goes and
#: whether it is replaced, the cluster, the engine specs (which enter the document on their own:
#: models, tiling, prompts), the input cube's ``block_size`` (it counts through the tiling), the
#: catalog (the input cube's identity records which items it holds, and the same items served from
#: another endpoint give the same cube), zones, limits, asset roots and what is published. A new
#: job field stays out until named here (tests/pipeline/test_inference_identity.py asks for a decision).
INFERENCE_JOB_FIELDS = frozenset(
    {
        "aoi",
        "before",
        "after",
        "collections",
        "bands",
        "band_map",
        "quality",
        "grid",
        "cloud_limit",
        "zarr_format",
    }
)


def inference_job_fields(job_json: Any) -> Any:
    """The inference fields of a job recorded as JSON (:data:`INFERENCE_JOB_FIELDS`).

    Text that is not a JSON object is returned as it is (an input cube of an earlier version may
    record its job in another form).
    """
    try:
        doc = json.loads(job_json)
    except (TypeError, json.JSONDecodeError):
        return job_json
    return {k: v for k, v in doc.items() if k in INFERENCE_JOB_FIELDS} if isinstance(doc, dict) else doc


def inference_document(
    job: JobSpec,
    *,
    input_identity: Mapping[str, Any],
    models: ModelSpec,
    identities: Sequence[ModelIdentity],
    tiling: Mapping[str, Any],
    prompts: Mapping[str, Any],
) -> dict[str, Any]:
    """The document of what decides a change cube's values (JSON-ready).

    Parameters
    ----------
    job
        The job; only its :data:`INFERENCE_JOB_FIELDS` enter.
    input_identity
        The input cube's identity (:attr:`pipeline.cube_read.InputCube.identity`).
    models, identities
        The model spec (without where its files lie or the device) and the identities of the models
        it builds.
    tiling
        The resolved tiling: ``tile_size``, ``overlap``, ``window``, ``block_size``.
    prompts
        The prompt spec as JSON.
    """
    return {
        "format": FORMAT,
        "job": job.model_dump(mode="json", include=set(INFERENCE_JOB_FIELDS)),
        "input_cube": input_identity,
        "models": [{"role": m.role, "name": m.name, "sha256": m.sha256} for m in identities],
        "model_options": models.model_dump(mode="json", exclude={"checkpoint", "backbone_weights", "device"}),
        "tiling": dict(tiling),
        "prompts": prompts,
        "zarr_format": job.zarr_format,
    }


def fingerprint(document: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``document`` as sorted JSON."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()
