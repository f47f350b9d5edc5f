"""The transport-neutral core: the Bus, proxies, the pending-call table and the outbox.

The wire types it shares with the transports live in :mod:`vertebra.wire`."""
