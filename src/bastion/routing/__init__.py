"""Canonical path normalisation and the route matcher."""

from bastion.routing.path import InvalidPath, canonical_path, encode_path
from bastion.routing.router import Match, MethodNotAllowed, Router, RouteSpec

__all__ = ["InvalidPath", "Match", "MethodNotAllowed", "RouteSpec", "Router", "canonical_path", "encode_path"]
