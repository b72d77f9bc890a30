from __future__ import annotations

import inspect
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.identity.keys import (
    ALPHABET,
    KEY_LENGTH,
    SECRET_LENGTH,
    KeyHasher,
    KeyLevel,
    display_prefix,
    generate_key,
    parse_key,
    redact,
)

PEPPER = b"p" * 32


@pytest.mark.parametrize(("level", "letter"), [(KeyLevel.READ, "r"), (KeyLevel.WRITE, "w"), (KeyLevel.ADMIN, "a")])
def test_format(level: KeyLevel, letter: str) -> None:
    key = generate_key(level)
    text = key.plaintext
    assert text.startswith(f"bst_{letter}_")
    assert len(text) == KEY_LENGTH == 51
    body = text[6:]
    assert len(body) == 45 and set(body) <= set(ALPHABET)
    assert key.key_id == body[:12] and key.level is level
    assert key.display_prefix == display_prefix(key.key_id, level) == f"bst_{letter}_{key.key_id}"
    assert KeyLevel.from_letter(letter) is level and level.letter == letter
    parsed = parse_key(text)
    assert parsed is not None and parsed.key_id == key.key_id and parsed.level is level
    assert parsed.plaintext == text


def test_checksum_is_zero_padded_base62_of_crc32() -> None:
    import zlib

    key = generate_key(KeyLevel.WRITE).plaintext
    value = 0
    for char in key[-6:]:
        value = value * 62 + ALPHABET.index(char)
    assert value == zlib.crc32(key[:-6].encode())


def test_secret_strength_and_uniqueness() -> None:
    assert SECRET_LENGTH * math.log2(62) >= 160
    keys = [generate_key(KeyLevel.READ) for _ in range(2000)]
    assert len({k.plaintext[18:45] for k in keys}) == 2000
    assert len({k.key_id for k in keys}) == 2000
    # Every alphabet character shows up in the secrets: randomness covers the whole alphabet.
    assert set("".join(k.plaintext[18:45] for k in keys)) == set(ALPHABET)


def test_every_single_character_substitution_is_caught() -> None:
    for level in KeyLevel:
        for _ in range(4):
            key = generate_key(level).plaintext
            for position, original in enumerate(key):
                for replacement in ALPHABET + "_-":
                    if replacement != original:
                        mutated = key[:position] + replacement + key[position + 1:]
                        assert parse_key(mutated) is None, (position, replacement)


@pytest.mark.parametrize("text", [
    "", "bst_", "bst_w_", "x" * 51, "bst_x_" + "A" * 45, "BST_w_" + "A" * 45, "bst-w_" + "A" * 45,
    "bst_w-" + "A" * 45, "bst_w_" + "A" * 44, "bst_w_" + "A" * 46, "bst_w_" + "é" * 45, "bst_w_" + "A" * 44 + "_",
    "bst_w_" + "A" * 44 + " ", "bst_w_" + "\u0661" * 45,
])
def test_malformed_inputs_do_not_parse(text: str) -> None:
    assert parse_key(text) is None


def test_wrong_level_letter_or_truncation_fails_checksum() -> None:
    key = generate_key(KeyLevel.READ).plaintext
    assert parse_key("bst_a_" + key[6:]) is None
    assert parse_key(key[:-1]) is None
    assert parse_key(key + "0") is None
    assert parse_key(f" {key}"[:51]) is None


@settings(max_examples=500)
@given(st.text())
def test_random_text_never_parses(text: str) -> None:
    assert parse_key(text) is None


@settings(max_examples=500)
@given(st.sampled_from("rwa"), st.text(alphabet=ALPHABET, min_size=45, max_size=45))
def test_random_well_shaped_keys_never_parse(letter: str, body: str) -> None:
    # Right shape, random checksum: 1 in 2**32 would pass.
    assert parse_key(f"bst_{letter}_{body}") is None


def test_hasher() -> None:
    hasher = KeyHasher(PEPPER)
    key = generate_key(KeyLevel.WRITE).plaintext
    digest = hasher.digest(key)
    assert len(digest) == 32 and digest == hasher.digest(key)
    assert hasher.verify(key, digest)
    assert not hasher.verify(generate_key(KeyLevel.WRITE).plaintext, digest)
    assert not hasher.verify(key, digest[:-1] + bytes([digest[-1] ^ 1]))
    assert KeyHasher(b"q" * 32).digest(key) != digest  # the pepper matters
    assert "ppp" not in repr(hasher)
    assert "compare_digest" in inspect.getsource(KeyHasher.verify)


@pytest.mark.parametrize("pepper", [b"", b"x" * 31])
def test_short_pepper_refused(pepper: bytes) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        KeyHasher(pepper)


def test_redact() -> None:
    key = generate_key(KeyLevel.WRITE)
    assert redact(key.plaintext) == f"bst_w_{key.key_id}…"
    assert key.plaintext[18:] not in redact(key.plaintext)
    assert redact("Bearer abcdef") == "[REDACTED]"
    assert redact("bst_w_short") == "[REDACTED]"
    assert redact("bst_z_" + key.plaintext[6:]) == "[REDACTED]"


def test_reprs_hide_plaintext() -> None:
    key = generate_key(KeyLevel.ADMIN)
    parsed = parse_key(key.plaintext)
    assert key.plaintext not in repr(key)
    assert key.plaintext not in repr(parsed)
