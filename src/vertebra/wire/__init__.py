"""The wire types beneath both the dispatch core and the transports: the envelope, the
codecs, the error tree and its wire form, service descriptions and topic patterns.

They import nothing else of vertebra, so that the Transport interface and every adapter
depend on them without depending on :mod:`vertebra.dispatch`.
"""
