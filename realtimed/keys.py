"""
The secrets realtimed generates for itself on first start (JWT secret, API
key, anon key, webhook secret), kept in the data directory with mode 0600 so
that later starts reuse them.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable

from realtimed.auth import Keys
from realtimed.config import Config
from realtimed.webhooks.signing import encode_webhook_secret

KEYS_FILE = "secrets.json"


GENERATORS: dict[str, Callable[[], str]] = {
    "jwt_secret": lambda: secrets.token_urlsafe(48),
    "api_key": lambda: "ik_" + secrets.token_hex(24),
    "anon_key": lambda: "anon_" + secrets.token_hex(24),
    "webhook_secret": lambda: encode_webhook_secret(secrets.token_bytes(32)),
}


def resolve_keys(config: Config) -> tuple[Keys, list[str]]:
    """
    The keys to run with: each one configured, or else the one kept in the
    data directory, or else a new one, written there (mode 0600).

    @return: The keys, and the names of those generated just now (which the
        caller prints once so a new user can connect).
    """
    path = os.path.join(config.data_dir, KEYS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
    except FileNotFoundError:
        stored = {}
    except (OSError, ValueError) as e:
        raise RuntimeError(f"cannot read the secrets kept in {path}: {e}") from e
    generated: list[str] = []
    values: dict[str, str] = {}
    for name, generate in GENERATORS.items():
        configured = getattr(config, name)
        if configured is not None:
            values[name] = configured
            continue
        if not isinstance(stored.get(name), str):
            stored[name] = generate()
            generated.append(name)
        values[name] = stored[name]
    if generated:
        os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
        temporary = path + ".tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(stored, f, indent=2)
        os.replace(temporary, path)
    return Keys(**values), generated
