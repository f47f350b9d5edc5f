"""Print how many tests passed, failed and were skipped per area and per transport (from a
JUnit XML), then one closing line ``total: N passed, N failed, N skipped``.

Exits non-zero when the file holds no test, when any test failed, or when a transport's
conformance suite passed no test (a transport left out by the environment, or all of
its tests skipped, must not look like a green run)."""

from __future__ import annotations

import collections
import re
import sys
import xml.etree.ElementTree as ET

TRANSPORTS = ("memory", "zmq", "amqp", "xmpp")


def area_of(cls: str, name: str) -> str:
    """``conformance[zmq]``, ``transports/amqp``, or the test package (``faults``, ...)."""
    m = re.search(r"\[(memory|zmq|amqp|xmpp)\b", name)
    if "conformance" in cls and m:
        return f"conformance[{m.group(1)}]"
    if "transports." in cls:
        return "transports/" + cls.split("transports.")[1].split(".")[0]
    return cls.split(".")[1] if "." in cls else cls


def outcome_of(case: ET.Element) -> str:
    """passed, failed (failure or error) or skipped."""
    outcome = "passed"
    for child in case:
        if child.tag in ("failure", "error"):
            return "failed"
        if child.tag == "skipped":
            outcome = "skipped"
    return outcome


def main(path: str) -> int:
    """Print the counts of the JUnit XML at ``path``; 1 if the run must fail, else 0."""
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for case in ET.parse(path).iter("testcase"):
        counts[area_of(case.get("classname", ""), case.get("name", ""))][outcome_of(case)] += 1
    total: collections.Counter[str] = sum(counts.values(), collections.Counter())
    width = max(map(len, counts), default=10)
    for area in sorted(counts):
        c = counts[area]
        print(f"{area:<{width}}  {c['passed']:4d} passed  {c['failed']:3d} failed  {c['skipped']:3d} skipped")
    problems = [f"conformance[{t}] passed no test" for t in TRANSPORTS
                if counts[f"conformance[{t}]"]["passed"] == 0]
    if not total:
        problems.append(f"{path} holds no test")
    if total["failed"]:
        problems.append(f"{total['failed']} test(s) failed")
    for problem in problems:
        print(f"FAILED: {problem}")
    print(f"total: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
