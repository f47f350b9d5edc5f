"""Weather updates by zip code, and subscribers that filter by topic pattern.

    python examples/weather.py                          # all in one process, embedded hub
    python examples/weather.py --url URL                # on a hub or RabbitMQ you run
    python examples/weather.py subscribe 'weather.1.#' --url URL   # one subscriber
    python examples/weather.py publish --url URL                   # the publisher

Topics are `weather.<region>.<zip>`, the region being the zip's first digit, so a
subscriber picks a region (`weather.1.*`), one zip (`weather.*.10001`) or everything
(`weather.#`).  '*' matches exactly one word, '#' zero or more.  Events are
at-most-once: a subscriber gets what is published while it is subscribed.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections import Counter
from typing import Any

import vertebra

PATTERNS = ["weather.#", "weather.1.*", "weather.*.10001"]


class Station:
    """A subscriber: counts the updates it gets and averages their temperature."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.temps: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, topic: str, payload: Any) -> None:
        with self.lock:
            self.temps.append(payload["temp"])

    def report(self) -> str:
        with self.lock:
            n, temps = len(self.temps), list(self.temps)
        avg = sum(temps) / n if n else float("nan")
        return f"{self.pattern:<18} {n:>5} updates, average {avg:5.1f} °C"


def publish(bus: vertebra.Bus, count: int) -> Counter[str]:
    """Publish ``count`` updates for random zips; return how many went to each zip."""
    sent: Counter[str] = Counter()
    for _ in range(count):
        zipcode = random.choice(["10001", "10002", "19104", "60601", "94103"])
        bus.publish(f"weather.{zipcode[0]}.{zipcode}",
                    {"zip": zipcode, "temp": round(random.uniform(-10, 35), 1)})
        sent[zipcode] += 1
    bus.flush()                                # until the transport has them all
    return sent


def run(url: str, count: int) -> None:
    stations = [Station(p) for p in PATTERNS]
    with vertebra.connect(url) as subscribers, vertebra.connect(url) as publisher:
        for station in stations:               # returns once the subscription is in force
            subscribers.subscribe(station.pattern, station)
        sent = publish(publisher, count)
        print(f"published {count} updates: {dict(sorted(sent.items()))}")
        deadline = time.monotonic() + 10       # events are in flight: wait for "weather.#"
        while len(stations[0].temps) < count and time.monotonic() < deadline:
            time.sleep(0.01)
    for station in stations:
        print(station.report())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["run", "publish", "subscribe"], default="run")
    parser.add_argument("pattern", nargs="?", default="weather.#")
    parser.add_argument("--url", help="transport URL (default: an embedded ZeroMQ hub)")
    parser.add_argument("--count", type=int, default=500, help="updates to publish")
    args = parser.parse_args()
    if args.mode == "publish":
        with vertebra.connect(args.url) as bus:
            publish(bus, args.count)
    elif args.mode == "subscribe":
        with vertebra.connect(args.url) as bus:
            bus.subscribe(args.pattern, lambda topic, payload: print(topic, payload))
            threading.Event().wait()           # until Ctrl-C
    elif args.url:
        run(args.url, args.count)
    else:
        with vertebra.Hub("tcp://127.0.0.1:0") as hub:
            run(hub.url, args.count)


if __name__ == "__main__":
    main()
