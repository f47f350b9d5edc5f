"""The transport-neutral core: envelope, codecs, errors, the Bus, proxies, outbox."""
