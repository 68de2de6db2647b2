"""Which Redis commands may run twice without harm.

A retry after a timeout may repeat a command that already ran. That is harmless
for the commands below (the second run leaves the same state) and harmful for
INCR, LPUSH, APPEND and their kin, which are therefore never retried. Anything
not listed is treated as unsafe: a missing entry costs a retry, never data.
"""

from __future__ import annotations

__all__ = ["IDEMPOTENT", "READS", "WRITES"]

IDEMPOTENT: frozenset[str] = frozenset(
    {
        # reads
        "GET", "MGET", "EXISTS", "TTL", "PTTL", "TYPE", "STRLEN", "GETRANGE",
        "HGET", "HMGET", "HGETALL", "HEXISTS", "HKEYS", "HVALS", "HLEN",
        "SMEMBERS", "SISMEMBER", "SCARD", "LRANGE", "LLEN", "LINDEX",
        "ZRANGE", "ZSCORE", "ZCARD", "ZRANK",
        "PING", "ECHO", "INFO", "DBSIZE", "TIME",
        # writes that set, not accumulate
        "SET", "SETEX", "PSETEX", "MSET", "HSET", "HMSET", "SADD", "SREM", "ZREM",
        "HDEL", "DEL", "UNLINK", "EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT", "PERSIST",
    }
)  # fmt: skip

# Commands whose replies count as cache hits (a value) or misses (nil).
READS: frozenset[str] = frozenset({"GET", "MGET"})

# Writes the durable mode (REDIS_WAIT_REPLICAS) confirms with WAIT before acknowledging.
WRITES: frozenset[str] = frozenset({"SET", "SETEX", "PSETEX", "MSET", "DEL", "UNLINK"})
