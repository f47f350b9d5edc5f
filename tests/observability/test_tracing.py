"""One trace across nodes and transports: W3C trace context travels in the envelope headers."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import vertebra
from vertebra import Node, rpc, task

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider():
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    return provider


class Back(Node):
    name = "back"

    @rpc
    def double(self, x: int) -> int:
        return 2 * x

    @task
    def record(self, x: int) -> None:
        pass


class Front(Node):
    """Serves on one transport and calls ``back`` on another."""

    name = "front"

    def __init__(self, back_bus: vertebra.Bus) -> None:
        self.back = back_bus.proxy("back")

    @rpc
    def compute(self, x: int) -> int:
        return self.back.double(x) + 1      # a nested call, from the handler's thread


def test_one_trace_across_two_transports():
    hub = vertebra.Hub("tcp://127.0.0.1:0").start()
    try:
        with vertebra.connect(hub.url) as zmq_node, vertebra.connect(hub.url) as zmq_client, \
                vertebra.connect("memory://tracing") as mem:
            zmq_node.serve(Back())
            mem.serve(Front(zmq_client))
            EXPORTER.clear()
            tracer = trace.get_tracer("test")
            with tracer.start_as_current_span("request") as root:
                assert mem.proxy("front").compute(20) == 41
            spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    finally:
        hub.stop()
    assert set(spans) >= {"request", "front.compute call", "front.compute handle",
                          "back.double call", "back.double handle"}
    trace_ids = {s.context.trace_id for s in spans.values()}
    assert trace_ids == {root.get_span_context().trace_id}          # one trace
    parent = {name: s.parent.span_id if s.parent else None for name, s in spans.items()}
    sid = {name: s.context.span_id for name, s in spans.items()}
    assert parent["front.compute call"] == sid["request"]
    assert parent["front.compute handle"] == sid["front.compute call"]    # crossed memory://
    assert parent["back.double call"] == sid["front.compute handle"]      # inside the handler
    assert parent["back.double handle"] == sid["back.double call"]        # crossed zmq://
    assert spans["front.compute handle"].attributes["messaging.system"] == "memory"
    assert spans["back.double handle"].attributes["messaging.system"] == "zmq"
    assert spans["front.compute call"].kind == trace.SpanKind.CLIENT
    assert spans["back.double handle"].kind == trace.SpanKind.SERVER


def test_errors_mark_both_spans_and_casts_are_producer_spans():
    with vertebra.connect("memory://tracing-errors") as bus:
        bus.serve(Back())
        EXPORTER.clear()
        with pytest.raises(vertebra.RemoteError):
            bus.proxy("back").double("x", "y")     # wrong arguments
        bus.proxy("back").record.cast(1)
        bus.flush()
        import time
        for _ in range(200):
            if any(s.name == "back.record handle" for s in EXPORTER.get_finished_spans()):
                break
            time.sleep(0.01)
    spans = {s.name: s for s in EXPORTER.get_finished_spans()}
    assert spans["back.double call"].status.status_code == trace.StatusCode.ERROR
    assert spans["back.double handle"].status.status_code == trace.StatusCode.ERROR
    assert spans["back.record cast"].kind == trace.SpanKind.PRODUCER
    assert spans["back.record handle"].kind == trace.SpanKind.CONSUMER
    assert spans["back.record handle"].parent.span_id == spans["back.record cast"].context.span_id


def test_log_records_about_a_message_carry_structured_fields(caplog):
    with vertebra.connect("memory://logfields") as bus:
        bus.serve(Back())
        EXPORTER.clear()
        with caplog.at_level("WARNING", logger="vertebra"), pytest.raises(vertebra.Unreachable):
            bus.proxy("back").no_such_method()
    record = next(r for r in caplog.records if "no method" in r.getMessage())
    assert (record.service, record.method, record.kind) == ("back", "no_such_method", "call")
    assert record.message_id and len(record.trace_id) == 32        # from the traceparent header
    call = next(s for s in EXPORTER.get_finished_spans() if s.name == "back.no_such_method call")
    assert record.trace_id == format(call.context.trace_id, "032x")


def test_handler_spans_close_in_the_context_they_opened_in(caplog):
    """A sync handler suspends the runtime's coroutine (thread pool); its span must still
    be closed in the same context, or OpenTelemetry logs 'Failed to detach context'."""
    with vertebra.connect("memory://ctx") as bus, caplog.at_level("ERROR"):
        bus.serve(Back())
        for i in range(20):
            assert bus.proxy("back").double(i) == 2 * i
    assert not [r for r in caplog.records if "detach" in r.getMessage()]
