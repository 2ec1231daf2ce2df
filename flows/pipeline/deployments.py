"""One Prefect deployment per pipeline, whose run form in the UI shows the pipeline's own
parameters (types, defaults, bounds and descriptions from its spec and its ops).

``prefect deploy`` makes a deployment's form from the flow's signature, where a pipeline's
parameters are one opaque ``params: dict``. After ``tierflow deploy`` has applied
``deployments/prefect.yaml``, :func:`deploy_pipelines` writes, for every pipeline
(``tierflow pipelines list``) and pool, a deployment of the ``pipeline`` flow with
``spec`` fixed to that pipeline and a ``parameter_openapi_schema`` whose ``params`` is the
spec's parameter model (:func:`~.spec_params.params_schema`): ``pipeline-local`` /
``pipeline-slurm`` run ``cells``, ``pipeline-<name>-local`` / ``-slurm`` the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tierflow.flows.pipeline.library import list_specs
from tierflow.flows.pipeline.spec import DEFAULT_PIPELINE, PipelineSpec
from tierflow.flows.pipeline.spec_params import params_schema
from tierflow.storage.errors import TierflowError

__all__ = ["PipelineDeployment", "deploy_pipelines", "deployment_name", "run_form_schema"]

_POOLS = ("local", "slurm")


@dataclass(frozen=True)
class PipelineDeployment:
    name: str
    pipeline: str
    pool: str


def deployment_name(spec: PipelineSpec, pool: str) -> str:
    """``pipeline-local`` for the default pipeline, ``pipeline-<name>-local`` for the others."""
    return f"pipeline-{pool}" if spec.name == DEFAULT_PIPELINE else f"pipeline-{spec.name}-{pool}"


def run_form_schema(spec: PipelineSpec) -> dict[str, Any]:
    """The ``pipeline`` flow's parameter schema with ``params`` typed by ``spec`` and ``spec``
    fixed to its name."""
    from prefect.utilities.callables import parameter_schema

    from tierflow.flows.pipeline.flow import pipeline

    schema = parameter_schema(pipeline.fn).model_dump_for_openapi()
    model = params_schema(spec)
    definitions = dict(schema.get("definitions") or {})
    definitions.update(model.pop("$defs", {}))
    title = str(model.get("title", f"{spec.name} parameters"))
    key = title.replace(" ", "_")
    definitions[key] = model
    properties = dict(schema["properties"])
    properties["spec"] = {**properties.get("spec", {}), "title": "pipeline", "type": "string", "enum": [spec.name], "default": spec.name,
                          "description": spec.description or spec.name}
    properties["params"] = {"title": title, "description": f"the parameters of {spec.name} ([params] in {spec.file.rsplit('/', 1)[-1]})",
                            "allOf": [{"$ref": f"#/definitions/{key}"}], "default": {},
                            "position": properties.get("params", {}).get("position", 4)}
    return {**schema, "properties": properties, "definitions": definitions}


def deploy_pipelines(config_dir: str | None = None) -> list[PipelineDeployment]:
    """Create or update one deployment per pipeline and pool, modelled on the
    ``pipeline/pipeline-<pool>`` deployments ``prefect deploy`` made (entrypoint, pull steps,
    pool, tags); returns what it wrote."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    written = []
    with get_client(sync_client=True) as client:
        for pool in _POOLS:
            try:
                template = client.read_deployment_by_name(f"pipeline/pipeline-{pool}")
            except ObjectNotFound:
                raise TierflowError(f"the deployment pipeline/pipeline-{pool} is missing",
                                    hint="deployments/prefect.yaml declares it: run `tierflow deploy` without --name") from None
            for spec in list_specs(config_dir):
                name = deployment_name(spec, pool)
                client.create_deployment(
                    flow_id=template.flow_id, name=name, description=spec.description or spec.name, tags=list(template.tags),
                    work_pool_name=template.work_pool_name, work_queue_name=template.work_queue_name, path=template.path,
                    entrypoint=template.entrypoint, pull_steps=template.pull_steps, job_variables=dict(template.job_variables or {}),
                    parameters={"spec": spec.name}, parameter_openapi_schema=run_form_schema(spec), enforce_parameter_schema=True)
                written.append(PipelineDeployment(name, spec.name, pool))
    return written
