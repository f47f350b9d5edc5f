"""The nodes the dashboard tests watch: a shop (calls, a task that fails until its depot
opens, workflow steps) and a mailer."""

from __future__ import annotations

import threading

from vertebra import Node, rpc, task


class Shop(Node):
    """Orders, prices and parcels."""

    name = "shop"

    def __init__(self) -> None:
        self.depot_open = False
        self.shipped: list[str] = []
        self.gate = threading.Event()       # shop.label("box-slow") waits for it

    @rpc
    def price(self, sku: str) -> int:
        """The price of ``sku`` in cents."""
        return 100 * len(sku)

    @task(max_attempts=1)
    def ship(self, parcel: str) -> None:
        """Hand a parcel to the depot (fails while the depot is closed)."""
        if not self.depot_open:
            raise PermissionError("the depot is closed")
        self.shipped.append(parcel)

    @rpc
    def pack(self, order: str) -> str:
        """Put an order in a box."""
        return f"box-{order}"

    @rpc
    def label(self, box: str) -> str:
        """Print the label of a box."""
        if box == "box-13":
            raise ValueError("no address for order 13")
        if box == "box-slow":
            self.gate.wait(60)
        return f"label:{box}"


class Mailer(Node):
    """Sends the mail."""

    name = "mailer"

    def __init__(self) -> None:
        self.sent = 0

    @task
    def send(self, to: str, subject: str) -> None:
        """Send one mail."""
        self.sent += 1

    @rpc
    def notify(self, label: str) -> str:
        """Tell the customer their parcel is on its way."""
        return f"mailed {label}"
