"""The change cube's identity: which job fields enter its fingerprint, and the engine's patch points.

The job fields enter through an allow-list (the input cube's convention). It replaced a deny-list
of the fields that do not decide the result; the two must select the same fields, or the
fingerprints of existing change cubes would change and their runs could no longer resume.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine_inputs import engine_job

from pipeline.engine_spec import ModelSpec
from pipeline.inference_identity import (
    INFERENCE_JOB_FIELDS,
    fingerprint,
    inference_document,
    inference_job_fields,
)
from pipeline.models import ModelIdentity
from pipeline.spec import JobSpec

#: The job fields that do not decide a change cube's values (the former deny-list).
NOT_DECIDING = {
    "output",
    "overwrite",
    "cluster",
    "models",
    "tiling",
    "prompts",
    "block_size",
    "catalog",
    "zones",
    "limits",
    "asset_roots",
    "publishers",
}


def test_every_job_field_either_decides_the_result_or_is_known_not_to() -> None:
    fields = set(JobSpec.model_fields)
    unclassified = fields - INFERENCE_JOB_FIELDS - NOT_DECIDING
    assert not unclassified, (
        f"JobSpec fields {sorted(unclassified)} are in neither list: add those that change the "
        "change cube's values to pipeline.inference_identity.INFERENCE_JOB_FIELDS, the others here"
    )
    assert fields >= INFERENCE_JOB_FIELDS and not INFERENCE_JOB_FIELDS & NOT_DECIDING


def _document(job: JobSpec) -> dict[str, object]:
    return inference_document(
        job,
        input_identity={"shape": [600, 500], "bands": ["red", "nir"]},
        models=ModelSpec(),
        identities=(ModelIdentity("change", "cva", "builtin", "none"),),
        tiling={"tile_size": 64, "overlap": 16, "window": "hann", "block_size": 128},
        prompts={"classes": ["water"]},
    )


def test_the_allow_list_selects_what_the_deny_list_did(tmp_path: Path) -> None:
    job = engine_job(tmp_path, band_map={"red": "B04"}, cloud_limit=20.0)
    document = _document(job)
    assert document["job"] == job.model_dump(mode="json", exclude=NOT_DECIDING)
    recorded = inference_job_fields(job.model_dump_json())
    assert recorded == {k: v for k, v in json.loads(job.model_dump_json()).items() if k not in NOT_DECIDING}


def test_fields_that_do_not_decide_the_result_leave_the_fingerprint_alone(tmp_path: Path) -> None:
    job = engine_job(tmp_path / "a")
    same = fingerprint(_document(job))
    moved = job.model_copy(update={"output": str(tmp_path / "b"), "overwrite": True, "block_size": 256})
    assert fingerprint(_document(moved)) == same
    assert fingerprint(_document(job.model_copy(update={"cloud_limit": 10.0}))) != same


def test_a_job_recorded_in_another_form_is_kept_as_it_is() -> None:
    assert inference_job_fields("job /data/berlin") == "job /data/berlin"
    assert inference_job_fields("[1, 2]") == [1, 2]
    assert inference_job_fields(None) is None
