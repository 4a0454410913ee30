"""Scaling out: a Redis worker registry, atomic admission, and gateway/worker routing.

``single`` (the default role) needs none of this: one process admits calls against its own
replica pool (``omni.pool``), which is then the in-process registry.
"""
