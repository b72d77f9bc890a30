"""Load the YAML configuration with source positions, so every problem names file, line and path."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bastion.config.model import GatewayConfig

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '(document)'}: {self.message}"


class ConfigError(Exception):
    """One or more problems in a configuration; the message lists them all."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = list(issues)


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


class _LineLoader(yaml.SafeLoader):
    """A safe loader that also records the line of every mapping key and sequence item."""


def _compose_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            lines[(*loc, key)] = key_node.start_mark.line + 1
            _compose_lines(value_node, (*loc, key), lines)
            lines[(*loc, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _compose_lines(item, (*loc, index), lines)


@dataclass(frozen=True, slots=True)
class SourceDocument:
    path: Path
    data: Any
    lines: dict[Loc, int]

    def line_of(self, loc: Loc) -> int | None:
        for cut in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:cut]))
            if line is not None:
                return line
        return None

    def issue(self, loc: Loc, message: str) -> ConfigIssue:
        return ConfigIssue(str(self.path), self.line_of(loc), format_loc(loc), message)


def read_document(path: Path) -> SourceDocument:
    """Parse YAML (or JSON, a subset) keeping line numbers; raise ConfigError on syntax errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), None, "", f"cannot read file: {exc.strerror}")]) from exc
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([ConfigIssue(str(path), line, "", f"YAML syntax error: {problem}")]) from exc
    lines: dict[Loc, int] = {}
    if node is not None:
        _compose_lines(node, (), lines)
    return SourceDocument(path, data, lines)


def validation_issues(doc: SourceDocument, error: ValidationError, prefix: Loc = ()) -> list[ConfigIssue]:
    issues = []
    for item in error.errors(include_url=False):
        loc = (*prefix, *item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "value_error" and "error" in item.get("ctx", {}):
            message = str(item["ctx"]["error"])  # our validators' own words, without pydantic's prefix
        issues.append(doc.issue(loc, message))
    return issues


def validate_document(doc: SourceDocument) -> tuple[GatewayConfig | None, list[ConfigIssue]]:
    """Validate the structure of a configuration document: the model, or the located problems."""
    if not isinstance(doc.data, Mapping):
        return None, [doc.issue((), "the configuration must be a YAML mapping")]
    try:
        return GatewayConfig.model_validate(doc.data), []
    except ValidationError as exc:
        return None, validation_issues(doc, exc)


def load_config(path: str | os.PathLike[str]) -> tuple[GatewayConfig, SourceDocument]:
    """Read and validate the gateway configuration (structure only; see pipeline.compiler for the rest)."""
    doc = read_document(Path(path))
    config, issues = validate_document(doc)
    if config is None:
        raise ConfigError(issues)
    return config, doc


def resolve_secret(reference: str, base_dir: Path) -> str:
    """Resolve an ``env:NAME`` or ``file:PATH`` reference. Values are never logged."""
    kind, _, rest = reference.partition(":")
    if kind == "env":
        value = os.environ.get(rest)
        if value is None:
            raise ValueError(f"environment variable {rest} is not set")
        return value
    if kind == "file":
        file_path = Path(rest) if Path(rest).is_absolute() else base_dir / rest
        try:
            return file_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {file_path}: {exc.strerror}") from exc
    raise ValueError("secret references are 'env:NAME' or 'file:PATH'")


def load_json_or_yaml(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return yaml.safe_load(text)
