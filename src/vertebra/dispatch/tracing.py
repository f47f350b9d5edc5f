"""Trace context across nodes and transports: W3C ``traceparent`` in the envelope headers.

OpenTelemetry is optional.  When ``opentelemetry-api`` is installed and a tracer provider
is configured (an SDK's, set with ``trace.set_tracer_provider``), every call, cast,
task and event gets a span (client/producer on the sending side, server/consumer around
the handler), and the sending span's context travels in ``headers["traceparent"]`` (and
``tracestate``), so a call chain or a workflow across processes and transports is one
trace.  Without one — no opentelemetry, or only its API's default no-op provider — these
functions cost a check and do nothing (no no-op spans on the hot path).

opentelemetry is not imported here until something else has imported it (a program sets
a provider by importing ``opentelemetry.trace``), or the environment names a provider:
a process that does not trace does not carry it (about 1.5 MiB and 20 ms of imports).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..wire.envelope import Envelope

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["consumer_span", "producer_span", "tracing"]

_KINDS = {"call": "CLIENT", "cast": "PRODUCER", "task": "PRODUCER", "event": "PRODUCER"}

_OFF: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
_UNKNOWN = object()

_enabled = False
_from_env = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
"""A provider named in the environment is loaded by opentelemetry on first use: ask it."""
_noop: object = _UNKNOWN
"""The provider set that was found to be a no-op one (not asked again while it stays)."""
trace: Any = None
"""``opentelemetry.trace`` once it is in use (see the module's docstring), with:"""
propagate: Any = None
SpanKind: Any = None
Status: Any = None
StatusCode: Any = None


def _opentelemetry() -> ModuleType | None:
    """``opentelemetry.trace`` if the program has imported it (or the environment names a
    provider and it is installed), else None; the names above are bound the first time."""
    global trace, propagate, SpanKind, Status, StatusCode, _from_env
    if "opentelemetry.trace" not in sys.modules and not _from_env:
        return None
    try:  # optional: pip install 'vertebra[otel]'
        trace = importlib.import_module("opentelemetry.trace")
        propagate = importlib.import_module("opentelemetry.propagate")
    except ImportError:  # exercised by the extras-free CI run
        _from_env = False             # not installed: do not try again on every message
        return None
    SpanKind, Status, StatusCode = trace.SpanKind, trace.Status, trace.StatusCode
    return trace  # type: ignore[no-any-return]


def tracing() -> bool:
    """Whether a real tracer provider is configured (then messages get spans).

    OpenTelemetry lets a provider be set only once, so a yes is kept.  A no costs an
    attribute test while no provider is set at all (opentelemetry's own global, read
    directly: ``get_tracer_provider()`` reads ``os.environ`` on every call), and the full
    check only once a provider appears."""
    if _enabled:
        return True
    otel = trace or _opentelemetry()
    if otel is None:
        return False
    provider = getattr(otel, "_TRACER_PROVIDER", _UNKNOWN)
    if (provider is None and not _from_env) or provider is _noop:
        return False
    return _check(provider)


def _check(provider: object) -> bool:
    global _enabled, _noop
    _enabled = not isinstance(trace.get_tracer_provider(),
                              (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    if not _enabled and provider is not None and provider is not _UNKNOWN:
        _noop = provider                  # a no-op provider was set: it stays set
    return _enabled


def _name(env: Envelope) -> str:
    return env.topic if env.kind == "event" else f"{env.service}.{env.method}"


def _attributes(env: Envelope, transport: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {"messaging.system": transport, "messaging.message.id": env.id,
                             "vertebra.kind": env.kind}
    if env.kind == "event":
        attrs["messaging.destination.name"] = env.topic
    else:
        attrs.update({"rpc.system": "vertebra", "rpc.service": env.service, "rpc.method": env.method})
    return attrs


def producer_span(env: Envelope, transport: str) -> contextlib.AbstractContextManager[None]:
    """A span for sending ``env``; its context is injected into ``env.headers`` (a
    shared do-nothing context manager when tracing is off)."""
    if not tracing():
        return _OFF
    return _producer_span(env, transport)


@contextlib.contextmanager
def _producer_span(env: Envelope, transport: str) -> Iterator[None]:
    tracer = trace.get_tracer("vertebra")
    kind = getattr(SpanKind, _KINDS.get(env.kind, "PRODUCER"))
    with tracer.start_as_current_span(f"{_name(env)} {env.kind}", kind=kind,
                                      attributes=_attributes(env, transport)) as span:
        propagate.inject(env.headers)
        try:
            yield
        except Exception as exc:
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise


def consumer_span(env: Envelope, transport: str) -> contextlib.AbstractContextManager[None]:
    """A span around handling ``env``, a child of the context its headers carry (a
    shared do-nothing context manager when tracing is off)."""
    if not tracing():
        return _OFF
    return _consumer_span(env, transport)


@contextlib.contextmanager
def _consumer_span(env: Envelope, transport: str) -> Iterator[None]:
    tracer = trace.get_tracer("vertebra")
    kind = SpanKind.SERVER if env.kind == "call" else SpanKind.CONSUMER
    parent = propagate.extract(env.headers)
    with tracer.start_as_current_span(f"{_name(env)} {'handle' if env.kind != 'event' else 'receive'}",
                                      context=parent, kind=kind,
                                      attributes=_attributes(env, transport)) as span:
        try:
            yield
        except Exception as exc:
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
