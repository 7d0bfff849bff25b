"""deploy/kuberay/*.yaml against the Kubernetes schemas (kubernetes-validate, strict: unknown fields are errors)
and the KubeRay RayJob / RayService CRD schemas shipped in deploy/kuberay/schemas/ (v1.7.0's openAPIV3Schema);
the RayJob runs what the planner planned."""

from __future__ import annotations

import functools
import gzip
import json
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from audio_thinker.app.cli.parsers import build_parser
from audio_thinker.app.train.plan import make_plan
from audio_thinker.core.placement import run_groups, totals
from audio_thinker.core.presets import load_config

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "deploy" / "kuberay"
K8S_VERSION = "1.33"
CRD_SCHEMAS = {
    "RayJob": KUBERAY / "schemas" / "ray.io_rayjobs-v1.7.0.json.gz",
    "RayService": KUBERAY / "schemas" / "ray.io_rayservices-v1.7.0.json.gz",
}


def strict(schema):
    """The CRD schema with unknown fields refused, as `kubectl apply --validate=strict` does (the API server
    would otherwise prune a misspelt key silently)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(strict(json.loads(gzip.decompress(CRD_SCHEMAS[kind].read_bytes()))))


def documents() -> list[tuple[str, dict]]:
    return [(p.name, doc) for p in sorted(KUBERAY.glob("*.yaml")) for doc in yaml.safe_load_all(p.read_text()) if doc]


def rayjob() -> dict:
    (job,) = [doc for _, doc in documents() if doc["kind"] == "RayJob"]
    return job


def pod_templates(doc: dict) -> list[dict]:
    spec = doc["spec"]["rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("name, doc", documents(), ids=lambda x: x if isinstance(x, str) else x.get("kind"))
def test_every_manifest_validates(name, doc):
    if doc["kind"] in CRD_SCHEMAS:
        crd_validator(doc["kind"]).validate(doc)
        for template in pod_templates(doc):  # the pod templates once more against Kubernetes' own PodTemplate
            pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validation_catches_a_misspelt_key():
    job = rayjob()
    job["spec"]["shutdownAfterJobFinish"] = True
    with pytest.raises(jsonschema.ValidationError, match="shutdownAfterJobFinish"):
        crd_validator("RayJob").validate(job)


def test_the_rayjob_runs_the_planned_config_on_the_resources_the_planner_counts():
    job = rayjob()
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "audio-thinker"
    args = build_parser().parse_args(argv[1:])
    # A restarted job finds its run and resumes it; the first start finds none and starts it.
    assert args.command == "train" and args.resume_if_exists and not args.resume
    config = load_config(args.config, args.overrides)
    assert make_plan(config, config.run.gpu_memory_gb * 1e9).problems == []
    spec = job["spec"]["rayClusterSpec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"  # the driver only: no model on the head
    (workers,) = spec["workerGroupSpecs"]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == config.run.gpus_per_node
    assert workers["replicas"] * limits["nvidia.com/gpu"] == config.run.num_gpus == totals(run_groups(config))["GPU"]
    assert float(limits["cpu"]) >= totals(run_groups(config))["CPU"]
