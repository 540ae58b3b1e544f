"""The one rule for what counts as a secret, used wherever data leaves the process.

Call records (``CallRecord.kwargs``), cassettes (request headers and query parameters), the fake server's
request reprs and the LLM error boundary (API keys echoed in provider error bodies) all ask this module, so a
header that one of them redacts is redacted by all of them.

A *name* (a header, a keyword argument, a query parameter, a mapping key) is secret when it contains a
credential part anywhere (``secret``, ``passw``, ``apikey``, ``authori``...) or one of its words is a short
credential word (``key``, ``token``, ``auth``...).  Words are split at ``-``, ``_``, ``.``, spaces and lower-to-upper case changes, and
compared case-insensitively, so ``Authorization``, ``x-api-key``, ``Helicone-Auth``,
``Ocp-Apim-Subscription-Key``, ``OPENAI_API_KEY``, ``apiKey``, ``access_token`` and ``Set-Cookie`` are
secret, while ``max_tokens``, ``anthropic-version`` and ``traceparent`` are not (``tokens`` counts tokens; it
is not a token).  A false positive costs a value in a record; a false negative leaks a key, so the word list
leans wide.

Leaf module: it imports nothing from the package.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

__all__ = [
    "REDACTED",
    "SECRET_PARTS",
    "SECRET_WORDS",
    "is_secret_name",
    "redact_text",
    "secret_query_values",
    "secret_values",
]

#: What a redacted value is replaced with.
REDACTED = "<redacted>"

#: The words that make a name secret (compared lower-case).
SECRET_WORDS = frozenset({"auth", "bearer", "jwt", "key", "session", "sig", "signature", "token"})
#: Parts that make a name secret wherever they appear in it (also inside one word: ``secretkey``, ``authToken``).
SECRET_PARTS = ("apikey", "authori", "authenti", "cookie", "credential", "passphrase", "passw", "secret")

# A lower-to-upper case change starts a word ("apiKey" → api, Key); separators split words too.
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def is_secret_name(name: str) -> bool:
    """Whether a header, keyword argument, query parameter or mapping key named *name* holds a secret."""
    lowered = name.lower()
    if any(part in lowered for part in SECRET_PARTS):
        return True
    return any(word.lower() in SECRET_WORDS for word in _WORD.findall(name))


def secret_values(headers: Iterable[tuple[str, str]], *, min_length: int = 1) -> tuple[str, ...]:
    """The values of the secret-named *headers*, also without an auth scheme (``Bearer sk-x`` gives ``sk-x``).

    Values shorter than *min_length* are left out (a redaction of a very short string would rewrite ordinary
    text).  The longest come first, so that ``Bearer sk-x`` is replaced before its own ``sk-x``.
    """
    found: set[str] = set()
    for name, value in headers:
        if not value or not is_secret_name(name):
            continue
        found.add(value)
        scheme, _, rest = value.partition(" ")
        if rest.strip() and scheme.isalpha():
            found.add(rest.strip())
    return tuple(sorted((s for s in found if len(s) >= min_length), key=len, reverse=True))


def secret_query_values(url: str) -> tuple[str, ...]:
    """The values of the secret-named query parameters of *url* (an Azure ``?api-key=...``, a ``?token=...``)."""
    query = urlsplit(url).query
    return tuple(value for name, value in parse_qsl(query, keep_blank_values=False) if is_secret_name(name))


def redact_text(text: str, secrets: Iterable[str], replacement: str = REDACTED) -> str:
    """Return *text* with every occurrence of the *secrets* replaced by *replacement*.

    Each secret is also found in its escaped forms (as ``repr()`` and JSON write it, and percent-encoded as in
    a URL or a form), since servers echo keys inside quoted strings and echo the request URL (a key in a query
    parameter).  Give the longest secrets first (as :func:`secret_values` returns them).
    """
    for secret in secrets:
        if not secret:
            continue
        forms = {
            secret,
            repr(secret)[1:-1],
            json.dumps(secret)[1:-1],
            quote(secret, safe=""),
            quote(secret),
            quote_plus(secret, safe=""),
        }
        for form in sorted(forms, key=len, reverse=True):
            if form in text:
                text = text.replace(form, replacement)
    return text
