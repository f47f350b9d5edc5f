"""Print how many tests passed, failed and were skipped per transport (from a JUnit XML)."""

from __future__ import annotations

import collections
import re
import sys
import xml.etree.ElementTree as ET

counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
for case in ET.parse(sys.argv[1]).iter("testcase"):
    cls, name = case.get("classname", ""), case.get("name", "")
    m = re.search(r"\[(memory|zmq|amqp|xmpp)\b", name)
    area = f"conformance[{m.group(1)}]" if "conformance" in cls and m else cls.split(".")[1] if "." in cls else cls
    if "transports." in cls:
        area = "transports/" + cls.split("transports.")[1].split(".")[0]
    outcome = "passed"
    for child in case:
        if child.tag in ("failure", "error"):
            outcome = "failed"
        elif child.tag == "skipped":
            outcome = "skipped"
    counts[area][outcome] += 1
width = max(map(len, counts), default=10)
for area in sorted(counts):
    c = counts[area]
    print(f"{area:<{width}}  {c['passed']:4d} passed  {c['failed']:3d} failed  {c['skipped']:3d} skipped")
