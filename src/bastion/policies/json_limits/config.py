"""JSON body limits: structure caps and strictness for requests whose Content-Type is JSON."""

from __future__ import annotations

from pydantic import Field

from bastion.config.model import Model

MAX_DEPTH = 512  # far below the interpreter's recursion limit, which the stdlib JSON parser consumes


class JsonLimitsConfig(Model):
    max_depth: int = Field(32, ge=1, le=MAX_DEPTH, description="Deepest nesting of arrays and objects "
                           "(`[[1]]` is 2). Checked before parsing, so a body of thousands of `[` costs one scan.")
    max_array_length: int = Field(10_000, ge=0, le=100_000_000, description="Most elements in one array.")
    max_string_length: int = Field(100_000, ge=0, le=1_000_000_000, description="Longest string, keys "
                                   "included, in characters after unescaping.")
    max_number_length: int = Field(1_000, ge=1, le=1_000_000, description="Longest number literal, in "
                                   "characters. Huge numbers are cheap to send and expensive to convert "
                                   "(some parsers are quadratic in the digit count).")
    max_keys: int = Field(100_000, ge=0, le=100_000_000, description="Most object keys in the whole "
                          "body, all objects together.")
    require_json: bool = Field(False, description="Refuse (415 `request.unsupported_media_type`) request "
                               "bodies whose Content-Type is not JSON. Off: such bodies pass unchecked.")
