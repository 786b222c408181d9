"""The gateway's OpenAPI 3.0 document, derived from the proto descriptors (one schema, not two).

Each message becomes a component schema of its protobuf JSON mapping: fields by their JSON
(lowerCamelCase) name, 64-bit integers as strings (the mapping also accepts numbers), bytes as
base64 strings, enums by name, maps as objects, float and double as numbers or the strings "NaN",
"Infinity", "-Infinity", google.protobuf.Struct as any object, Timestamp as an RFC 3339 string.
Oneof members are listed as optional properties; a body setting two members of one oneof is
refused (400).
"""

from __future__ import annotations

from typing import Any

from explaind_client.v1 import explaind_pb2 as pb
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

VERSION = "0.1.0"
ERROR = {"$ref": "#/components/schemas/Error"}
FD = FieldDescriptor
_INTEGER_32 = {FD.TYPE_INT32: "int32", FD.TYPE_SINT32: "int32", FD.TYPE_SFIXED32: "int32",
               FD.TYPE_UINT32: "int64", FD.TYPE_FIXED32: "int64"}
_INTEGER_64 = {FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64, FD.TYPE_UINT64, FD.TYPE_FIXED64}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string"},
}


def _name(full_name: str) -> str:
    return full_name.removeprefix("explaind.v1.").replace(".", "_")


def _enum(enum: EnumDescriptor, components: dict[str, Any]) -> dict[str, Any]:
    name = _name(enum.full_name)
    if name not in components:
        components[name] = {"type": "string", "enum": [v.name for v in enum.values]}
    return {"$ref": f"#/components/schemas/{name}"}


def _scalar(field: FieldDescriptor, components: dict[str, Any]) -> dict[str, Any]:
    t = field.type
    if t == FD.TYPE_MESSAGE:
        return message(field.message_type, components)
    if t == FD.TYPE_ENUM:
        return _enum(field.enum_type, components)
    if t in _INTEGER_32:
        return {"type": "integer", "format": _INTEGER_32[t]}
    if t in _INTEGER_64:
        return {"type": "string", "format": "int64", "pattern": "^-?[0-9]{1,20}$"}
    if t in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        return {"oneOf": [{"type": "number"}, {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}]}
    if t == FD.TYPE_BOOL:
        return {"type": "boolean"}
    if t == FD.TYPE_BYTES:
        return {"type": "string", "format": "byte"}
    return {"type": "string"}


def message(descriptor: Descriptor, components: dict[str, Any]) -> dict[str, Any]:
    """A $ref to the message's component schema, which is added (with those it uses) when missing."""
    if descriptor.full_name in _WELL_KNOWN:
        return dict(_WELL_KNOWN[descriptor.full_name])
    name = _name(descriptor.full_name)
    if name not in components:
        properties: dict[str, Any] = {}
        components[name] = {"type": "object", "properties": properties, "additionalProperties": False}
        for field in descriptor.fields:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                value = field.message_type.fields_by_name["value"]
                schema: dict[str, Any] = {"type": "object", "additionalProperties": _scalar(value, components)}
            elif field.is_repeated:
                schema = {"type": "array", "items": _scalar(field, components)}
            else:
                schema = _scalar(field, components)
            properties[field.json_name] = schema
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "INVALID_ARGUMENT or FAILED_PRECONDITION: the message names the field",
            401: "UNAUTHENTICATED: missing or unknown bearer token (auth_tokens)",
            403: "PERMISSION_DENIED", 404: "NOT_FOUND: unknown model, label or path",
            413: "the body is over max_message_bytes",
            429: "RESOURCE_EXHAUSTED: overload or a quota; Retry-After (s) and retry-after-ms say when",
            500: "INTERNAL: a bug in explaind", 503: "UNAVAILABLE: shutting down, or the model is unhealthy",
            504: "DEADLINE_EXCEEDED: past the x-timeout-s header's deadline"}
    return {str(c): {"description": text[c], "content": _json(ERROR)} for c in codes}


def document() -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of the gateway's routes."""
    components: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "status", "message"], "properties": {
                "code": {"type": "integer", "description": "the HTTP status"},
                "status": {"type": "string", "description": "the gRPC status code's name"},
                "message": {"type": "string", "description": "the same message as the gRPC status"}}}}},
    }
    ref = {n: message(pb.DESCRIPTOR.message_types_by_name[n], components) for n in (
        "ExplainRequest", "ExplainResponse", "EvaluateRequest", "EvaluateResponse", "ListModelsResponse",
        "ModelInfo", "ListMethodsResponse", "ListMetricsResponse", "ExplainUpdate", "EvaluateUpdate")}
    instance = {"oneOf": [
        {"type": "object", "required": ["b64"], "properties": {"b64": {"type": "string", "format": "byte"}},
         "additionalProperties": False, "description": "an encoded image (PNG, JPEG)"},
        {"type": "array", "description": "a float32 tensor without the batch dimension (a tabular row)",
         "items": {}, "minItems": 1},
        {"type": "object", "additionalProperties": False, "description": "ExplainRequest's input fields",
         "properties": {"image": {"type": "string", "format": "byte"}, "tensor": ref_tensor(components)}}]}
    # ExplainRequest's properties plus `instances` (allOf cannot extend a schema closed by
    # additionalProperties false).
    components["KServeExplainRequest"] = {
        "type": "object", "required": ["instances"], "additionalProperties": False,
        "description": "KServe v1 explainer protocol: one explanation per instance; the other properties "
                       "are ExplainRequest's (method, target, render, evaluate...), shared by every instance",
        "properties": {**components["ExplainRequest"]["properties"],
                       "instances": {"type": "array", "minItems": 1, "items": instance}}}
    components["KServeExplainResponse"] = {"type": "object", "required": ["explanations"], "properties": {
        "explanations": {"type": "array", "items": ref["ExplainResponse"]}}}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "a model of the repository (GET /v1/models)"}
    model_query = {"name": "model", "in": "query", "required": False, "schema": {"type": "string"},
                   "description": "only those this model supports"}
    timeout = {"name": "x-timeout-s", "in": "header", "required": False,
               "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 86400},
               "description": "the call's deadline in seconds (gRPC's deadline)"}
    sse = {"text/event-stream": {"schema": {"type": "string"}}}

    def get(summary: str, response: dict[str, Any], *params: dict[str, Any], errors=(401, 404, 500, 503)):
        return {"get": {"summary": summary, "parameters": list(params),
                        "responses": {"200": {"description": "OK", "content": _json(response)}, **_errors(*errors)}}}

    def post(summary: str, body: dict[str, Any], response: dict[str, Any], streams: bool = False):
        content = sse if streams else _json(response)
        return {"post": {"summary": summary, "parameters": [name, timeout],
                         "requestBody": {"required": True, "content": _json(body)},
                         "responses": {"200": {"description": "OK", "content": content},
                                       **_errors(400, 401, 403, 404, 413, 429, 500, 503, 504)}}}

    explain_body = {"oneOf": [{"$ref": "#/components/schemas/KServeExplainRequest"}, ref["ExplainRequest"]]}
    paths = {
        "/v1/models": get("ListModels", ref["ListModelsResponse"], errors=(401, 500)),
        "/v1/models/{name}": get("GetModel", ref["ModelInfo"], name),
        "/v1/models/{name}:explain": post(
            "Explain. KServe v1: {instances: [...]} -> {explanations: [...]}, one per instance; or one "
            "ExplainRequest -> one ExplainResponse", explain_body,
            {"oneOf": [{"$ref": "#/components/schemas/KServeExplainResponse"}, ref["ExplainResponse"]]}),
        "/v1/models/{name}:explainStream": post(
            "ExplainStream as server-sent events: `event: progress|partial|result`, data the "
            "ExplainUpdate field's JSON; `event: error` with an Error after the stream started",
            ref["ExplainRequest"], ref["ExplainUpdate"], streams=True),
        "/v1/models/{name}:evaluate": post("Evaluate", ref["EvaluateRequest"], ref["EvaluateResponse"]),
        "/v1/models/{name}:evaluateStream": post(
            "EvaluateStream as server-sent events (`progress`, `result`, `error`)", ref["EvaluateRequest"],
            ref["EvaluateUpdate"], streams=True),
        "/v1/methods": get("ListMethods", ref["ListMethodsResponse"], model_query),
        "/v1/metrics": get("ListMetrics", ref["ListMetricsResponse"], model_query),
    }
    return {"openapi": "3.0.3",
            "info": {"title": "explaind HTTP/JSON gateway", "version": VERSION,
                     "description": "The Explainer gRPC service over HTTP; bodies are the proto messages "
                                    "(proto/explaind/v1) in protobuf's JSON mapping."},
            "components": {"schemas": components,
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{}, {"bearer": []}],
            "paths": paths}


def ref_tensor(components: dict[str, Any]) -> dict[str, Any]:
    return message(pb.Tensor.DESCRIPTOR, components)
