"""TALKSTREAM_SECRET_KEYS read strictly: a list mistyped during a rotation is refused at start."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from streams.errors import ConfigError
from streams.secrets import SecretBox, generate_key, load_secret_box
from streams.settings import Settings

OLD, NEW = generate_key(), generate_key()


def box(value: str) -> SecretBox:
    return load_secret_box(Settings(secret_keys=SecretStr(value)))


def test_every_listed_key_opens_what_it_sealed() -> None:
    sealed_old = box(OLD).seal("sk-old")
    rotated = box(f"{NEW}, {OLD}")
    assert rotated.open(sealed_old) == "sk-old"
    assert box(NEW).open(rotated.seal("sk-new")) == "sk-new"  # the first one seals


@pytest.mark.parametrize(
    ("value", "entries"),
    [
        (f"{OLD};{NEW}", "entry 1 is"),  # another separator: Fernet alone would read OLD only
        (f"{OLD} {NEW}", "entry 1 is"),
        (f"{OLD}{NEW}", "entry 1 is"),  # a comma forgotten
        (f"{OLD},{NEW}junk", "entry 2 is"),  # trailing junk Fernet would drop
        (f"!{OLD},{NEW[:20]}", "entries 1, 2 are"),
        ("not-a-key", "entry 1 is"),
    ],
    ids=["semicolon", "space", "no-comma", "trailing-junk", "two-wrong", "not-a-key"],
)
def test_a_value_that_is_not_fernet_keys_is_one_line_without_them(value: str, entries: str) -> None:
    with pytest.raises(ConfigError) as refused:
        box(value)
    message = str(refused.value)
    assert message.startswith(f"TALKSTREAM_SECRET_KEYS: {entries} not a Fernet key")
    assert "\n" not in message
    assert OLD[:10] not in message and NEW[:10] not in message
