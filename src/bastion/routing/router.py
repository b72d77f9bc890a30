"""Host + method + canonical path -> route, compiled once per configuration.

Templates are literal segments, ``{name}`` (exactly one non-empty segment) and a final ``**``
(zero or more segments). Literal segments win over parameters, parameters over ``**``; the router
backtracks, so the most specific template that matches is chosen whatever the declaration order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mypy_extensions import mypyc_attr

T = TypeVar("T")

_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_.-]*)\}$")


class TemplateError(ValueError):
    """A route template that cannot be compiled."""


@mypyc_attr(native_class=False)  # mypyc cannot compile generic dataclasses
@dataclass(frozen=True, slots=True)
class RouteSpec(Generic[T]):
    path: str
    methods: frozenset[str]
    target: T
    hosts: tuple[str, ...] = ()


@mypyc_attr(native_class=False)  # mypyc cannot compile generic dataclasses
@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    target: T
    params: dict[str, str]
    template: str


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    allow: tuple[str, ...]


@mypyc_attr(native_class=False)  # mypyc cannot compile generic dataclasses
@dataclass(slots=True)
class _Leaf(Generic[T]):
    template: str
    by_method: dict[str, T] = field(default_factory=dict)
    param_names: tuple[str, ...] = ()


@mypyc_attr(native_class=False)  # mypyc cannot compile generic dataclasses
@dataclass(slots=True)
class _Node(Generic[T]):
    static: dict[str, _Node[T]] = field(default_factory=dict)
    param: _Node[T] | None = None
    param_name: str = ""
    leaf: _Leaf[T] | None = None
    glob: _Leaf[T] | None = None


def split_template(path: str) -> list[str]:
    if not path.startswith("/"):
        raise TemplateError(f"route path {path!r} must start with '/'")
    segments = path[1:].split("/")
    for index, segment in enumerate(segments):
        if segment == "**" and index != len(segments) - 1:
            raise TemplateError(f"'**' must be the last segment in {path!r}")
        if ("{" in segment or "}" in segment) and not _PARAM.match(segment):
            raise TemplateError(f"bad parameter segment {segment!r} in {path!r}")
        if segment == "" and index != len(segments) - 1 and path != "/":
            raise TemplateError(f"empty segment in {path!r}")
    return segments


class _Tree(Generic[T]):
    def __init__(self) -> None:
        self.root: _Node[T] = _Node()

    def add(self, spec: RouteSpec[T]) -> None:
        node = self.root
        names: list[str] = []
        segments = split_template(spec.path)
        glob = segments[-1] == "**"
        if glob:
            segments = segments[:-1]
        for segment in segments:
            param = _PARAM.match(segment)
            if param:
                name = param.group(1)
                if node.param is None:
                    node.param = _Node()
                    node.param_name = name
                names.append(name)
                node = node.param
            else:
                node = node.static.setdefault(segment, _Node())
        if glob:
            if node.glob is None:
                node.glob = _Leaf(spec.path, {}, tuple(names))
            leaf = node.glob
        else:
            if node.leaf is None:
                node.leaf = _Leaf(spec.path, {}, tuple(names))
            leaf = node.leaf
        if leaf.template != spec.path and leaf.param_names != tuple(names):
            raise TemplateError(f"{spec.path!r} conflicts with {leaf.template!r}")
        for method in spec.methods:
            if method in leaf.by_method:
                raise TemplateError(f"{method} {spec.path} is declared twice")
            leaf.by_method[method] = spec.target

    def lookup(self, segments: list[str]) -> tuple[_Leaf[T], list[str]] | None:
        values: list[str] = []
        return self._walk(self.root, segments, 0, values)

    def _walk(self, node: _Node[T], segments: list[str], index: int,
              values: list[str]) -> tuple[_Leaf[T], list[str]] | None:
        if index == len(segments):
            if node.leaf is not None:
                return node.leaf, list(values)
            if node.glob is not None:
                return node.glob, list(values)
            return None
        segment = segments[index]
        child = node.static.get(segment)
        if child is not None:
            found = self._walk(child, segments, index + 1, values)
            if found is not None:
                return found
        if node.param is not None and segment != "":
            values.append(segment)
            found = self._walk(node.param, segments, index + 1, values)
            values.pop()
            if found is not None:
                return found
        if node.glob is not None:
            return node.glob, list(values)
        return None


class Router(Generic[T]):
    """Immutable after construction; one per compiled configuration."""

    def __init__(self, specs: Iterable[RouteSpec[T]]) -> None:
        self._exact: dict[str, _Tree[T]] = {}
        self._wildcard: list[tuple[str, _Tree[T]]] = []
        self._any: _Tree[T] = _Tree()
        wildcard: dict[str, _Tree[T]] = {}
        for spec in specs:
            if not spec.hosts:
                self._any.add(spec)
            for host in spec.hosts:
                host = host.lower()
                if host.startswith("*."):
                    wildcard.setdefault(host[1:], _Tree()).add(spec)
                else:
                    self._exact.setdefault(host, _Tree()).add(spec)
        # Longest suffix first, so "*.eu.example.com" wins over "*.example.com".
        self._wildcard = sorted(wildcard.items(), key=lambda item: -len(item[0]))

    def match(self, host: str, method: str, path: str) -> Match[T] | MethodNotAllowed | None:
        segments = path[1:].split("/")
        trees: list[_Tree[T]] = []
        exact = self._exact.get(host)
        if exact is not None:
            trees.append(exact)
        for suffix, tree in self._wildcard:
            if host.endswith(suffix) and len(host) > len(suffix):
                trees.append(tree)
        trees.append(self._any)
        for tree in trees:
            found = tree.lookup(segments)
            if found is None:
                continue
            leaf, values = found
            target = leaf.by_method.get(method)
            if target is None and method == "HEAD":
                target = leaf.by_method.get("GET")
            if target is None:
                allow = set(leaf.by_method)
                if "GET" in allow:
                    allow.add("HEAD")
                return MethodNotAllowed(tuple(sorted(allow)))
            return Match(target, dict(zip(leaf.param_names, values, strict=False)), leaf.template)
        return None
