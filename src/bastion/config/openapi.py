"""Turn an OpenAPI 3.0/3.1 document into route declarations: every operation becomes a route."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.config.loader import ConfigIssue, SourceDocument, read_document

OPERATION_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@dataclass(frozen=True, slots=True)
class OperationSecurity:
    """What an operation's `security` (or the document's) says: `[]` makes it public; the scopes of its
    first requirement become permissions the route requires."""

    public: bool
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Operation:
    operation_id: str
    method: str
    path: str
    spec: Mapping[str, Any]
    security: OperationSecurity | None = None


def _security(requirements: object) -> OperationSecurity | None:
    if not isinstance(requirements, list):
        return None
    if not requirements:
        return OperationSecurity(True, ())
    first = requirements[0]
    if not isinstance(first, Mapping):
        return None
    if not first:
        return OperationSecurity(True, ())  # `- {}`: anonymous access is one of the alternatives
    scopes: list[str] = []
    for values in first.values():
        if isinstance(values, list):
            scopes.extend(str(v) for v in values)
    return OperationSecurity(False, tuple(scopes))


def load_operations(path: Path) -> tuple[list[Operation], list[ConfigIssue]]:
    doc: SourceDocument = read_document(path)
    issues: list[ConfigIssue] = []
    data = doc.data
    if not isinstance(data, Mapping):
        return [], [doc.issue((), "an OpenAPI document must be a mapping")]
    version = str(data.get("openapi", ""))
    if not (version.startswith("3.0") or version.startswith("3.1")):
        issues.append(doc.issue(("openapi",), "only OpenAPI 3.0 and 3.1 documents are supported"))
    paths = data.get("paths")
    if not isinstance(paths, Mapping):
        issues.append(doc.issue(("paths",), "the document declares no `paths`"))
        return [], issues
    operations: list[Operation] = []
    seen: set[str] = set()
    for route_path, item in paths.items():
        if not isinstance(route_path, str) or not route_path.startswith("/"):
            issues.append(doc.issue(("paths", str(route_path)), "path must start with '/'"))
            continue
        if not isinstance(item, Mapping):
            issues.append(doc.issue(("paths", route_path), "path item must be a mapping"))
            continue
        for method in OPERATION_METHODS:
            spec = item.get(method)
            if spec is None:
                continue
            if not isinstance(spec, Mapping):
                issues.append(doc.issue(("paths", route_path, method), "operation must be a mapping"))
                continue
            op_id = spec.get("operationId") or f"{method}-{route_path.strip('/').replace('/', '-')}"
            op_id = str(op_id)
            if op_id in seen:
                issues.append(doc.issue(("paths", route_path, method, "operationId"),
                                        f"operationId {op_id!r} is used twice"))
                continue
            seen.add(op_id)
            security = _security(spec["security"]) if "security" in spec else _security(data.get("security"))
            operations.append(Operation(op_id, method.upper(), route_path, spec, security))
    return operations, issues
