"""The Redis side of the score server: the one package of ``docl.services`` that talks
to Redis (docs/architecture.md, "The store").

    codec.py        pure: RESP framing, the chunked column codecs (no I/O, no client)
    keys.py         pure: a run's key names (hash tags, chunk keys, the run index),
                    derived from its layout (which names no key)
    resp.py         the hot path's minimal RESP2 client (hiredis parses the replies)
    errors.py       redis-py / RESP / cluster exceptions -> storage's error types
    connection.py   routing: redis-py's (cluster) client, the hand-packed fast path per
                    node, the hand-over to redis-py, WAIT, MULTI/EXEC transactions
    slot.py         SlotStore: every store operation on the keys of one hash tag (slot)
    parts.py        what a partitioned run's operations share (failed-partition naming,
                    awaiting every part, duplicates across partitions)
    store.py        RedisStore, the engine's storage.Store: runs one slot through
                    SlotStore, and a partitioned run across its partitions' slots

This ``__init__`` imports nothing: ``codec`` and ``keys`` are used by the embedded
process supervisors, which the worker imports without the server extra (no redis-py).
"""
