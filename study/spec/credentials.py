"""Credentials never come from a spec (docs/cluster.md): they come from the environment or a
secret store, since a spec is stored in the results DB and logged to MLflow as parameters and an
artifact. ``find_credentials`` is the scan the spec model runs over the raw spec."""

from __future__ import annotations

import re
from typing import Any

# A key is read as words (snake, kebab, dotted or camel case) so that `author`, `max_tokens` or
# `tokenizer` pass while `db_password`, `apiKey`, `x-auth-token` or `authorization` are refused.
CREDENTIAL_WORD = re.compile(
    r"\w*(password|passwd|passphrase|secret|apikey|privatekey|credential)s?|\w*token|pass|pwd|auth|authorization|oauth\w*|bearer"
)
CREDENTIAL_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)


def credential_key(key: str) -> bool:
    """Whether a mapping key names a credential: one of its words, or two adjacent words joined
    (`api_key`, `private-key`), is a credential's name."""
    words = [w for w in re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()) if w]
    joined = words + [a + b for a, b in zip(words, words[1:])]
    return any(CREDENTIAL_WORD.fullmatch(w) for w in joined)


def find_credentials(value: Any, where: str = "") -> str | None:
    """The first field of a raw spec that looks like a credential (by its name or a URL with a
    password), as a dotted path; None if there is none."""
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{where}.{k}" if where else str(k)
            if credential_key(str(k)):
                return path
            found = find_credentials(v, path)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = find_credentials(v, f"{where}[{i}]")
            if found:
                return found
    elif isinstance(value, str) and CREDENTIAL_URL.search(value):
        return where or "spec"
    return None
