"""Reads of many keys whose reply never passes a byte bound.

A batch of gets names keys, not sizes: 1,000 gets of a 1 MiB value are a 9 KB
request and a 1 GB reply. A bounded read asks Redis only for a reply it can send:

- when the batch's worst case (keys x the value limit) fits the bound, one MGET,
  as before (nothing to check);
- otherwise one Lua script (EVALSHA) that asks every key's STRLEN first and returns
  the values (MGET's reply) only when their total fits a small bound
  (LUA_COPY_BYTES: a value copied into Lua costs Redis's one thread far more than a
  native MGET of it, docs/performance.md), else the
  sizes. With the sizes known, the values that fit the bound, in order, are read
  with MGETs in chunks whose worst case fits what is left (`read_known`), so Redis
  never builds more than the bound either; each value that does not fit stands as
  its size (`TooLarge`);
- where Lua is not there (the embedded fakeredis, a Redis user without EVALSHA,
  Cluster, whose keys span slots), the sizes come from a pipeline of STRLEN (one per
  distinct key) and the values from the same chunked MGETs: more round trips and
  more work per key, still bounded.

Like MGET, a key holding another type reads as a miss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BOUNDED_READ_LUA",
    "LUA_COPY_BYTES",
    "PartialRead",
    "TooLarge",
    "read_known",
    "script_sizes",
    "worst_case_fits",
]

Key = str | bytes


@dataclass(frozen=True, slots=True)
class TooLarge:
    """A value left out of a bounded read: adding it would have passed the bound."""

    size: int


class PartialRead(list[Any]):
    """The values of a bounded read some of which were left out (TooLarge entries).

    Its type says so, so a caller needs no look at every value to know.
    """


BOUNDED_READ_LUA = """
-- Sizes first: STRLEN of every key (a key of another type counts as a miss, -1;
-- any other error, NOPERM say, ends the script with it),
-- which costs Redis no copy. Only when their total fits ARGV[1] are the values
-- read (MGET, a few thousand keys at a time: unpack() takes no more), and the
-- reply is MGET's followed by their total size. Otherwise it is the sizes followed
-- by -1 - their total, so the last element tells the shapes apart, and the caller
-- reads what fits itself: a value copied into Lua costs Redis far more than MGET.
local budget = tonumber(ARGV[1])
local n = #KEYS
local sizes, total = {}, 0
for i = 1, n do
  local size = redis.pcall('STRLEN', KEYS[i])
  if type(size) == 'table' then
    if not string.find(size.err or '', 'WRONGTYPE', 1, true) then
      return redis.error_reply(size.err or 'STRLEN failed') -- NOPERM and the like
    end
    size = -1
  else
    total = total + size
  end
  sizes[i] = size
end
if total > budget then
  sizes[n + 1] = -1 - total
  return sizes
end
local out = {}
for first = 1, n, 4000 do
  local values = redis.call('MGET', unpack(KEYS, first, math.min(n, first + 3999)))
  for j = 1, #values do
    out[first + j - 1] = values[j]
  end
end
out[n + 1] = total
return out
"""

# unpack() in Redis's Lua takes a few thousand values at most (LUAI_MAXCSTACK).
MAX_CHUNK = 4000
# Most value bytes the script itself returns: values passing through Lua hold Redis's
# one thread far longer than a native MGET, so more goes by plain MGETs once sizes
# are known (figures in docs/performance.md).
LUA_COPY_BYTES = 1024 * 1024


def worst_case_fits(count: int, value_limit: int, max_bytes: int | None) -> bool:
    """Whether `count` values of at most `value_limit` bytes fit `max_bytes` (None: no bound)."""
    return max_bytes is None or count * value_limit <= max_bytes


def script_sizes(reply: list[Any]) -> tuple[list[Any], int, bool]:
    """Split the script's reply (its last element is taken off `reply`).

    (values, their total bytes, True) when the values came back (MGET's shape);
    (sizes, their total, False) otherwise: each key's size, -1 for a key of another
    type, 0 for a miss or an empty value.
    """
    tail = int(reply.pop())
    if tail >= 0:
        return reply, tail, True
    return [int(size) for size in reply], -1 - tail, False


def read_known(
    keys: Sequence[Key],
    sizes: Sequence[int],
    max_bytes: int,
    value_limit: int,
    mget: Callable[[Sequence[Key]], list[Any]],
) -> list[Any]:
    """Read the values that fit `max_bytes`, in order, given each key's size.

    Keys whose size does not fit what is left become TooLarge at once. The rest are
    read with MGETs of at most max(1, room // value_limit) keys, so a value that grew
    since its size was taken cannot make Redis build more than the bound (it is
    left out too when it no longer fits).
    """
    out: list[Any] = [None] * len(keys)
    dropped = False
    chosen: list[int] = []
    room = max_bytes
    for index, size in enumerate(sizes):
        if size < 0:
            continue  # another type: a miss, as MGET says
        if size <= room:
            chosen.append(index)
            room -= size
        else:
            out[index] = TooLarge(size)
            dropped = True
    left = max_bytes
    start = 0
    while start < len(chosen):
        chunk = chosen[start : start + max(1, min(left // max(value_limit, 1), MAX_CHUNK))]
        start += len(chunk)
        for index, value in zip(chunk, mget([keys[i] for i in chunk]), strict=True):
            if value is not None and len(value) > left:
                out[index] = TooLarge(len(value))
                dropped = True
            elif value is not None:
                out[index] = value
                left -= len(value)
    return PartialRead(out) if dropped else out
