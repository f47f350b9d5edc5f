"""The ``xmpp://`` transport (slixmpp on any XMPP server; tested on Prosody).

Importing this package imports slixmpp; vertebra imports it only when a URL names the
scheme.  See :mod:`.transport` for the capability sheet and docs/transports/xmpp.md.
"""

from __future__ import annotations

from .transport import XmppTransport

__all__ = ["XmppTransport"]
