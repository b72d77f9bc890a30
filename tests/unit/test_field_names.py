"""Header field names are lowered once and remembered; the memory is bounded and never holds a refused name."""

from __future__ import annotations

import pytest

from bastion.server import http1


def test_names_are_lowered_once_and_shared() -> None:
    first = http1._field_name(b"X-Request-Tag")
    assert first == b"x-request-tag"
    assert http1._FIELD_NAMES[b"X-Request-Tag"] is first


def test_a_name_with_an_underscore_is_refused_and_not_remembered() -> None:
    with pytest.raises(Exception, match="underscore") as refused:
        http1._field_name(b"X_User")
    assert type(refused.value).__name__ == "_Refuse"
    assert b"X_User" not in http1._FIELD_NAMES


def test_arbitrary_names_cannot_grow_the_memory() -> None:
    for number in range(3 * http1._MAX_FIELD_NAMES):
        http1._field_name(b"X-Made-Up-%d" % number)
        assert len(http1._FIELD_NAMES) <= http1._MAX_FIELD_NAMES
