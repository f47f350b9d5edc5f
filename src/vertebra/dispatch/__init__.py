"""The transport-neutral core: the Bus, proxies, the pending-call table, the outbox (the wire types it uses live in :mod:`vertebra.wire`)."""
