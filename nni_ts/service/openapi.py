"""The OpenAPI 3.0 description of the experiment service (served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

from .users import NAME_PATTERN

__all__ = ["ID_PATTERN", "openapi_document"]

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_API = "/api/v1"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "The request is malformed.",
        401: "No valid API token.",
        403: "Not allowed (another user's resource, or a quota).",
        404: "No such resource in your workspaces (or a path parameter that names none).",
        409: "Not possible in the resource's current state.",
        415: "The body's charset is unknown.",
        422: "The experiment config is invalid; `path` names the key.",
        503: "The service database is not available; try again later.",
    }
    return {str(c): _json(_ref("Error"), reasons[c]) for c in codes}


def _path_param(name: str, pattern: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": pattern}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_EXP = _path_param("experiment_id", ID_PATTERN)
_TRIAL = _path_param("trial_id", ID_PATTERN)
_WS = _path_param("workspace", NAME_PATTERN)
_PAGE = [
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000000}, "At most this many (default: all)."),
    _query("offset", {"type": "integer", "minimum": 0}, "Skip this many first (with limit)."),
]
_SECURE: list[dict[str, list[str]]] = [{"bearer": []}]


def _op(op_id: str, summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
    """An authenticated operation. Every one may answer 400 (a malformed request, e.g. a NUL in the
    query), 404 (a path that names nothing) and 503 (the database is down); one with a body also 415."""
    common = [400, 401, 404, 503] + ([415] if "requestBody" in more else [])
    return {
        "operationId": op_id,
        "summary": summary,
        "security": _SECURE,
        "responses": {**_errors(*common), **responses},
        **more,
    }


def openapi_document() -> dict[str, Any]:
    """The description of every route, with its parameters, bodies and answers."""
    from .configs import LegacyRequest

    legacy = LegacyRequest.model_json_schema(by_alias=True)
    legacy.pop("title", None)
    legacy["not"] = {"required": ["trailConcurrency", "trialConcurrency"]}  # one spelling, not both
    for prop in legacy.get("properties", {}).values():
        if "anyOf" in prop:  # OpenAPI 3.0 spells optional values with nullable
            types = [t for t in prop.pop("anyOf") if t.get("type") != "null"]
            prop.update(types[0] if len(types) == 1 else {"oneOf": types})
            prop["nullable"] = True
        for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if isinstance(prop.get(bound), int | float) and not isinstance(prop[bound], bool):
                prop[plain] = prop[bound]  # OpenAPI 3.0: a boolean beside minimum / maximum
                prop[bound] = True
    target = {
        "type": "object",
        "required": ["user", "workspace"],
        "properties": {
            "user": {"type": "string", "pattern": NAME_PATTERN},
            "workspace": {"type": "string", "pattern": NAME_PATTERN},
        },
    }
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string", "description": "What was wrong, as a sentence."},
                "path": {"type": "string", "description": "The config key at fault (422)."},
                "paths": {"type": "array", "items": {"type": "string"}, "description": "Every key at fault (422)."},
                "quota": {"type": "string", "description": "The quota exceeded (403): concurrentTrials or gpus."},
            },
        },
        "LegacyRequest": legacy,
        "LegacyTarget": target,
        "ExperimentConfig": {
            "type": "object",
            "description": "An NNI experiment config (v2 camelCase keys, or v1) as JSON.",
            "additionalProperties": True,
        },
        "Extend": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "maxTrialNumber": {"type": "integer", "minimum": 1, "maximum": 1000000},
                "maxExperimentDuration": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                "rerunFailed": {"type": "boolean"},
            },
        },
        "Created": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "user": {"type": "string"},
                "workspace": {"type": "string"},
                "status": {"type": "string"},
            },
        },
        "Experiment": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "user": {"type": "string"},
                "workspace": {"type": "string"},
                "name": {"type": "string", "nullable": True},
                "platform": {"type": "string"},
                "status": {"type": "string", "enum": ["RUNNING", "DONE", "STOPPED", "ERROR"]},
                "message": {"type": "string", "nullable": True},
                "trialConcurrency": {"type": "integer"},
                "gpusPerTrial": {"type": "integer"},
                "optimizeMode": {"type": "string"},
                "createdAt": {"type": "integer"},
                "endedAt": {"type": "integer", "nullable": True},
            },
        },
        "ExperimentDetails": {
            "allOf": [
                _ref("Experiment"),
                {
                    "type": "object",
                    "properties": {
                        "config": {"type": "object", "description": "The config, secrets replaced by ***."},
                        "trialCounts": {"type": "object", "additionalProperties": {"type": "integer"}},
                        "best": {"allOf": [_ref("Trial")], "nullable": True},
                        "live": {"type": "boolean"},
                    },
                },
            ]
        },
        "Trial": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "sequenceId": {"type": "integer"},
                "parameters": {"type": "object"},
                "status": {"type": "string"},
                "finalValue": {"type": "number", "nullable": True},
                "metricCount": {"type": "integer"},
            },
        },
        "Metric": {
            "type": "object",
            "properties": {
                "trialId": {"type": "string"},
                "seq": {"type": "integer"},
                "type": {"type": "string"},
                "scalar": {"type": "number", "nullable": True},
            },
        },
    }
    exp_json = _json(_ref("ExperimentDetails"))
    legacy_target_body = {
        "required": False,
        "content": {"application/json": {"schema": _ref("LegacyTarget")}},
    }
    legacy_query = [  # required: a JSON body with both is accepted too (the seeds' GET with a body)
        _query("user", {"type": "string", "pattern": NAME_PATTERN}, "The user (or in the JSON body).")
        | {"required": True},
        _query("workspace", {"type": "string", "pattern": NAME_PATTERN}, "The workspace (or in the JSON body).")
        | {"required": True},
    ]
    paths: dict[str, Any] = {
        f"{_API}/nni-exp/hello": {
            "get": {
                "operationId": "hello",
                "summary": "The launcher's liveness check: answers `Hello world`.",
                "responses": {
                    "200": {"description": "Hello world", "content": {"text/plain": {"schema": {"type": "string"}}}}
                },
            }
        },
        f"{_API}/nni-exp": {
            "post": _op(
                "legacyCreate",
                "The seeds' launcher: create the workspace's experiment from the launcher body.",
                {"200": _json(_ref("Created")), **_errors(400, 401, 403, 409, 422)},
                requestBody={"required": True, "content": {"application/json": {"schema": _ref("LegacyRequest")}}},
            ),
            "get": _op(
                "legacyResults",
                "The seeds' launcher: the workspace's latest experiment and its trials.",
                {"200": exp_json, **_errors(400, 401, 403, 404)},
                parameters=legacy_query,
                requestBody=legacy_target_body,
            ),
            "delete": _op(
                "legacyDelete",
                "The seeds' launcher: stop and delete the workspace's experiments.",
                {"200": _json({"type": "object"}), **_errors(400, 401, 403, 404, 409)},
                parameters=legacy_query,
                requestBody=legacy_target_body,
            ),
        },
        f"{_API}/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This description.",
                "responses": {"200": _json({"type": "object"})},
            }
        },
        f"{_API}/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Readiness: the database answers.",
                "responses": {"200": _json({"type": "object"}), **_errors(503)},
            }
        },
        f"{_API}/me": {
            "get": _op("me", "The caller, their quota and usage.", {"200": _json({"type": "object"}), **_errors(401)})
        },
        f"{_API}/workspaces": {
            "get": _op(
                "workspaces",
                "The caller's workspaces (an admin's: all).",
                {"200": _json({"type": "array"}), **_errors(401)},
            )
        },
        f"{_API}/workspaces/{{workspace}}/experiments": {
            "post": _op(
                "createExperiment",
                "Create and start an experiment from an NNI v2 (or v1) config given as JSON.",
                {"201": _json(_ref("Created")), **_errors(400, 401, 403, 422)},
                parameters=[_WS],
                requestBody={"required": True, "content": {"application/json": {"schema": _ref("ExperimentConfig")}}},
            )
        },
        f"{_API}/workspaces/{{workspace}}/files/{{path}}": {
            "put": _op(
                "uploadFile",
                "Put a trial code file into the workspace's code directory (the trials' working directory).",
                {"201": _json({"type": "object"}), **_errors(400, 401, 409)},
                parameters=[_WS, _path_param("path", r"^[A-Za-z0-9_.-][A-Za-z0-9_./-]{0,200}$")],
                requestBody={
                    "required": False,  # no body: an empty file
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                },
            )
        },
        f"{_API}/experiments": {
            "get": _op(
                "listExperiments",
                "The caller's experiments (an admin's: all, or one user's).",
                {"200": _json({"type": "array", "items": _ref("Experiment")}), **_errors(401)},
                parameters=[
                    _query("workspace", {"type": "string"}, "Only this workspace."),
                    _query("user", {"type": "string"}, "Only this user's (admins)."),
                ],
            )
        },
        f"{_API}/experiments/{{experiment_id}}": {
            "get": _op(
                "showExperiment",
                "Status, counts, best trial, config (secrets hidden).",
                {"200": exp_json, **_errors(401, 404)},
                parameters=[_EXP],
            ),
            "delete": _op(
                "deleteExperiment",
                "Stop the experiment, then delete its jobs, files and records.",
                {"200": _json({"type": "object"}), **_errors(401, 404, 409)},
                parameters=[_EXP],
            ),
        },
        f"{_API}/experiments/{{experiment_id}}/stop": {
            "post": _op(
                "stopExperiment",
                "Stop a running experiment (its trials are cancelled).",
                {"200": _json(_ref("Experiment")), **_errors(401, 404, 409)},
                parameters=[_EXP],
            )
        },
        f"{_API}/experiments/{{experiment_id}}/extend": {
            "post": _op(
                "extendExperiment",
                "Raise the budget or re-run failed trials (an ended experiment continues).",
                {"200": exp_json, **_errors(400, 401, 403, 404, 409, 422)},
                parameters=[_EXP],
                requestBody={"required": True, "content": {"application/json": {"schema": _ref("Extend")}}},
            )
        },
        f"{_API}/experiments/{{experiment_id}}/trials": {
            "get": _op(
                "listTrials",
                "The trials in sequence order: parameters, status, final value.",
                {"200": _json({"type": "array", "items": _ref("Trial")}), **_errors(400, 401, 404)},
                parameters=[_EXP, *_PAGE],
            )
        },
        f"{_API}/experiments/{{experiment_id}}/trials/{{trial_id}}": {
            "get": _op(
                "showTrial",
                "One trial with its metrics.",
                {"200": _json(_ref("Trial")), **_errors(401, 404)},
                parameters=[_EXP, _TRIAL],
            )
        },
        f"{_API}/experiments/{{experiment_id}}/trials/{{trial_id}}/log": {
            "get": _op(
                "trialLog",
                "A trial's stdout, stderr or trial.log.",
                {
                    "200": {"description": "The log", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **_errors(400, 401, 404),
                },
                parameters=[
                    _EXP,
                    _TRIAL,
                    _query("file", {"type": "string", "enum": ["stdout", "stderr", "trial.log"]}, "Which file."),
                    _query("tail", {"type": "integer", "minimum": 0}, "Only the last N bytes."),
                ],
            )
        },
        f"{_API}/experiments/{{experiment_id}}/metrics": {
            "get": _op(
                "listMetrics",
                "The experiment's metric records, by trial then sequence (or one trial's).",
                {"200": _json({"type": "array", "items": _ref("Metric")}), **_errors(400, 401, 404)},
                parameters=[_EXP, _query("trial", {"type": "string"}, "Only this trial's records."), *_PAGE],
            )
        },
        f"{_API}/experiments/{{experiment_id}}/events": {
            "get": _op(
                "events",
                "Server-sent events: experiment, trial, metric and trial_end events until the experiment ends.",
                {
                    "200": {
                        "description": "An event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 404),
                },
                parameters=[_EXP],
            )
        },
        f"{_API}/audit": {
            "get": _op(
                "audit",
                "The audit log (an admin's: everyone's; a user's: their own actions).",
                {"200": _json({"type": "array"}), **_errors(400, 401)},
                parameters=[_query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}, "At most this many.")],
            )
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "nni-ts experiment service",
            "version": "1",
            "description": "Users, workspaces and experiments over the nni-ts experiment loop; "
            "also the seeds' NNI launcher routes (/api/v1/nni-exp).",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
