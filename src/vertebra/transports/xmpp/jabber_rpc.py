"""XEP-0009 Jabber-RPC: XML-RPC values inside ``<query xmlns='jabber:iq:rpc'/>``, both ways.

Types: ``int``/``i4`` <-> int, ``boolean`` <-> bool, ``string`` (or an untyped value) <->
str, ``double`` <-> float, ``base64`` <-> bytes, ``dateTime.iso8601`` -> str (as sent),
``array`` <-> list/tuple, ``struct`` <-> dict (string keys), ``nil`` <-> None.

Faults: ``faultCode`` 404 no such method, 400 bad arguments (they cannot bind to the
method's announced signature, checked before the call: :func:`fits`; or the node's error
object says ``bad_arguments``), 500 the method raised (:func:`fault_code`).
"""

from __future__ import annotations

import ast
import base64
import math
import xml.etree.ElementTree as ET
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["RpcError", "fault", "fault_code", "fault_of", "fits", "from_xml", "parse_call",
           "response", "to_xml"]

_Q = "{jabber:iq:rpc}"
MAX_DEPTH = 64


class RpcError(ValueError):
    """A methodCall that is not well-formed XML-RPC."""


def from_xml(value: ET.Element, depth: int = 0) -> Any:
    """The Python value of a ``<value/>`` element."""
    if depth > MAX_DEPTH:
        raise RpcError("value nested too deeply")
    children = list(value)
    if not children:
        return value.text or ""
    el = children[0]
    tag = el.tag.removeprefix(_Q)
    text = el.text or ""
    try:
        if tag in ("int", "i4", "i8"):
            return int(text.strip())
        if tag == "boolean":
            if text.strip() not in ("0", "1"):
                raise RpcError(f"boolean must be 0 or 1, not {text!r}")
            return text.strip() == "1"
        if tag == "string" or tag == "dateTime.iso8601":
            return text
        if tag == "double":
            return float(text.strip())
        if tag == "base64":
            return base64.b64decode(text.strip(), validate=True)
        if tag == "nil":
            return None
        if tag == "array":
            data = el.find(f"{_Q}data")
            return [from_xml(v, depth + 1) for v in (data if data is not None else [])
                    if v.tag == f"{_Q}value"]
        if tag == "struct":
            out: dict[str, Any] = {}
            for member in el.findall(f"{_Q}member"):
                name, val = member.find(f"{_Q}name"), member.find(f"{_Q}value")
                if name is None or val is None:
                    raise RpcError("struct member needs a name and a value")
                out[name.text or ""] = from_xml(val, depth + 1)
            return out
    except (ValueError, TypeError) as exc:
        if isinstance(exc, RpcError):
            raise
        raise RpcError(f"bad {tag} value: {exc}") from exc
    raise RpcError(f"unknown XML-RPC type {tag!r}")


def to_xml(value: Any, depth: int = 0) -> str:
    """``<value>...</value>`` for a Python value (ValueError for what XML-RPC cannot carry)."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if value is None:
        inner = "<nil/>"
    elif isinstance(value, bool):
        inner = f"<boolean>{int(value)}</boolean>"
    elif isinstance(value, int):
        inner = f"<int>{value}</int>" if -2**31 <= value < 2**31 else f"<i8>{value}</i8>"
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("XML-RPC cannot carry inf or nan")
        inner = f"<double>{value!r}</double>"
    elif isinstance(value, str):
        inner = f"<string>{escape(value)}</string>"
    elif isinstance(value, (bytes, bytearray, memoryview)):
        inner = f"<base64>{base64.b64encode(bytes(value)).decode('ascii')}</base64>"
    elif isinstance(value, (list, tuple)):
        inner = "<array><data>" + "".join(to_xml(v, depth + 1) for v in value) + "</data></array>"
    elif isinstance(value, dict):
        inner = "<struct>" + "".join(
            f"<member><name>{escape(str(k))}</name>{to_xml(v, depth + 1)}</member>"
            for k, v in value.items()) + "</struct>"
    else:
        raise ValueError(f"XML-RPC cannot carry a {type(value).__name__}")
    return f"<value>{inner}</value>"


def parse_call(query: ET.Element) -> tuple[str, list[Any]]:
    """(methodName, params) of a ``<query><methodCall/></query>``."""
    call = query.find(f"{_Q}methodCall")
    if call is None:
        raise RpcError("no methodCall")
    name = call.find(f"{_Q}methodName")
    if name is None or not (name.text or "").strip():
        raise RpcError("no methodName")
    params = call.find(f"{_Q}params")
    args = []
    for p in (params if params is not None else []):
        v = p.find(f"{_Q}value")
        if v is None:
            raise RpcError("param without a value")
        args.append(from_xml(v))
    return (name.text or "").strip(), args


def response(result: Any) -> str:
    """The ``<query/>`` answering a call with ``result``."""
    return ("<query xmlns='jabber:iq:rpc'><methodResponse><params><param>"
            f"{to_xml(result)}</param></params></methodResponse></query>")


def fault(code: int, message: str) -> str:
    """The ``<query/>`` answering a call with a fault."""
    body = to_xml({"faultCode": code, "faultString": message})
    return f"<query xmlns='jabber:iq:rpc'><methodResponse><fault>{body}</fault></methodResponse></query>"


def fits(signature: str, count: int) -> bool:
    """Whether ``count`` positional arguments bind to a method announced with ``signature``
    (a ServiceInfo method's text, e.g. ``"(a: int, b: int = 0) -> int"``); True when the
    text cannot be read (the node will tell)."""
    try:
        fn = ast.parse(f"def f{signature}: pass").body[0]
    except Exception:   # not Python syntax (a foreign node's text): no opinion
        return True
    if not isinstance(fn, ast.FunctionDef):
        return True
    a = fn.args
    positional = len(a.posonlyargs) + len(a.args)
    if any(d is None for d in a.kw_defaults):
        return False    # a keyword-only parameter without a default: XML-RPC cannot pass it
    return positional - len(a.defaults) <= count and (a.vararg is not None or count <= positional)


def fault_code(error: dict[str, Any]) -> int:
    """The ``faultCode`` for a wire error object: 404 no such method (code unreachable),
    400 bad arguments (code protocol, or ``bad_arguments`` set), else 500."""
    if error.get("code") == "unreachable":
        return 404
    if error.get("code") == "protocol" or error.get("bad_arguments") is True:
        return 400
    return 500


def fault_of(error: dict[str, Any]) -> str:
    """The fault ``<query/>`` answering a call that failed with the wire error ``error``."""
    return fault(fault_code(error), f"{error.get('type', 'Error')}: {error.get('message', '')}")
