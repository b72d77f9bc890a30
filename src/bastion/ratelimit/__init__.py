"""Rate-limiting core: algorithms, counter stores and store-failure handling.

A lower layer: nothing here imports the pipeline, the server or the runtime. The `rate-limit`,
`business-flow` and `quota` policies build on it.
"""

from __future__ import annotations

from bastion.ratelimit.algorithms import Algorithm, Decision, FixedWindow, RuleSpec
from bastion.ratelimit.failover import FailureMode, LocalFallback
from bastion.ratelimit.memory import MemoryCounterStore
from bastion.ratelimit.store import CounterStore, CounterStoreError, RedisCounterStore

__all__ = [
    "Algorithm",
    "CounterStore",
    "CounterStoreError",
    "Decision",
    "FailureMode",
    "FixedWindow",
    "LocalFallback",
    "MemoryCounterStore",
    "RedisCounterStore",
    "RuleSpec",
]
