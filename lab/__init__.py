"""Benchmarks and experiment harnesses, outside the server and worker packages.

They measure the library (the service's report path, the Redis store, the
worker's overhead, per-epoch studies); the ``docl bench`` and ``docl train``
commands import them lazily. Nothing in ``docl.services``, ``docl.worker`` or
``docl.client`` (except the CLI) imports this package.
"""
