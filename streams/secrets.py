"""Secrets inside topics: Fernet tokens (MultiFernet, so keys can rotate).

``TALKSTREAM_SECRET_KEYS`` holds comma-separated Fernet keys: the first encrypts, all decrypt.
The worker and the ingress refuse to start without it. Only ``talkstream dev`` makes a key of
its own, kept in the user's config folder (``~/.config/talkstream/dev-secret.key``), never
beside the data it protects.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from streams.errors import ConfigError, SecretError
from streams.settings import Settings

log = logging.getLogger(__name__)

DEV_KEY_FILE = "dev-secret.key"

# what Fernet.generate_key() makes: 32 bytes in url-safe base64, padded. Fernet itself decodes
# leniently (Python's base64 drops what is not of its alphabet and stops at the padding), so
# "K1;K2", "K1 K2" or "K1K2" would each open as K1 alone: the second key silently missing.
_FERNET_KEY = re.compile(r"[A-Za-z0-9_-]{43}=")


class SecretBox:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigError("at least one secret key is required")
        _check_keys(keys)
        try:
            self._fernet = MultiFernet([Fernet(key) for key in keys])
        except (ValueError, TypeError):
            raise ConfigError(
                "TALKSTREAM_SECRET_KEYS must be Fernet keys (32 url-safe base64 bytes), "
                "comma separated"
            ) from None

    def seal(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeError):
            raise SecretError("sealed secret cannot be opened with the configured keys") from None

    def rotate(self, token: str) -> str:
        """Re-encrypt with the first (newest) key."""
        return self._fernet.rotate(token.encode("ascii")).decode("ascii")


def _check_keys(keys: list[bytes]) -> None:
    """Each key exactly one Fernet key; else one line naming the entries by position (never a
    key: the message is printed and logged)."""
    wrong = [
        str(number)
        for number, key in enumerate(keys, start=1)
        if not _FERNET_KEY.fullmatch(key.decode("ascii", errors="replace"))
    ]
    if wrong:
        which = f"entry {wrong[0]} is" if len(wrong) == 1 else f"entries {', '.join(wrong)} are"
        raise ConfigError(
            f"TALKSTREAM_SECRET_KEYS: {which} not a Fernet key (44 url-safe base64 "
            "characters ending in '=', as Fernet.generate_key() makes them); keys are separated "
            "by commas only"
        )


def key_fingerprint(api_key: str) -> str:
    """A short, stable name for an upstream key (an OpenAI key is the target its calls are paced
    as): a truncated SHA-256, never the key and not reversible (keys are long and random)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


MISSING_KEYS = (
    "TALKSTREAM_SECRET_KEYS is not set (or holds no key): every worker and ingress needs "
    "the same Fernet key(s) to seal and open the keys inside topics. Make one with: "
    "python3 -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())' "
    "(only `talkstream dev` makes one for itself)"
)


def load_secret_box(settings: Settings) -> SecretBox:
    raw = settings.secret_keys.get_secret_value() if settings.secret_keys else ""
    keys = [part.strip().encode() for part in raw.split(",") if part.strip()]
    if not keys:  # an empty variable (compose's unset one) is named as an unset one
        raise ConfigError(MISSING_KEYS)
    return SecretBox(keys)


def dev_key(config_dir: Path | None = None) -> str:
    """The development key of ``talkstream dev``: made once, in the user's config folder
    (``$XDG_CONFIG_HOME/talkstream``, else ``~/.config/talkstream``), mode 0600."""
    base = config_dir or Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = base / "talkstream" / DEV_KEY_FILE
    if not path.exists():
        _write_dev_key(path)
        log.warning(
            "generated a development key at %s (talkstream dev only); set "
            "TALKSTREAM_SECRET_KEYS for anything else",
            path,
        )
    return path.read_text().strip()


def _write_dev_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(generate_key())
    try:
        os.link(tmp, path)  # first writer wins when processes race
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
