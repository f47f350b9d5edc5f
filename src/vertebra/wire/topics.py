"""Topic patterns: dot-separated words, ``*`` matches exactly one word, ``#`` zero or more.

The same rules as AMQP 0-9-1 topic exchanges, including ``orders.#`` matching ``orders``
and ``#`` matching every topic.  Every transport filters with :func:`matches` before a
handler runs, whatever coarser filter its server applied.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["matches", "validate_pattern", "validate_topic", "literal_prefix"]


def validate_topic(topic: str) -> str:
    """Return ``topic`` if it is a valid concrete topic (no wildcards), else raise ValueError."""
    if not isinstance(topic, str) or not topic:
        raise ValueError("a topic is a non-empty string")
    words = topic.split(".")
    if any(w in ("*", "#") for w in words):
        raise ValueError(f"a published topic has no wildcards: {topic!r}")
    if any(not w for w in words):
        raise ValueError(f"empty word in topic {topic!r}")
    return topic


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid subscription pattern, else raise ValueError."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("a topic pattern is a non-empty string")
    if any(not w for w in pattern.split(".")):
        raise ValueError(f"empty word in pattern {pattern!r}")
    return pattern


def literal_prefix(pattern: str) -> str:
    """A prefix every topic matching ``pattern`` starts with, for coarse prefix filters
    (ZeroMQ SUBSCRIBE): the literal words before the first wildcard, with the dot after
    them kept unless the wildcard is ``#`` (zero words: ``orders.#`` matches ``orders``)."""
    out: list[str] = []
    for word in pattern.split("."):
        if word == "#":
            return ".".join(out)
        if word == "*":
            return "".join(w + "." for w in out)
        out.append(word)
    return pattern


@lru_cache(maxsize=4096)
def _words(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("."))


def matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern`` (``*`` one word, ``#`` zero or more words)."""
    return _match(_words(pattern), 0, _words(topic), 0)


def _match(pat: tuple[str, ...], i: int, words: tuple[str, ...], j: int) -> bool:
    while i < len(pat):
        p = pat[i]
        if p == "#":
            if i == len(pat) - 1:
                return True
            return any(_match(pat, i + 1, words, k) for k in range(j, len(words) + 1))
        if j >= len(words) or (p != "*" and p != words[j]):
            return False
        i += 1
        j += 1
    return j == len(words)
