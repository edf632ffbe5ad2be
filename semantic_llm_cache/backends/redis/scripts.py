"""The Lua scripts that write, delete and count hits (each one atomic, one round trip), and how they are run.

Every write and delete appends a record to the partition's changelog (``slc:log:{P}``, a stream) in the same
script. A new log starts with a genesis record, so a reader that sees it knows it holds the partition's whole
history; the log outlives every entry logged in it (a missing log means a partition without live entries).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from semantic_llm_cache.backends.redis.connection import Client, NoScriptError

LOG_GRACE_MS = 60_000  # the log outlives its last entry by this much

# KEYS: entry, log, hits. ARGV: digest, expires_at ms ('' = never), log max length, log grace ms, hits, last hit
# time ('' = none), then the entry's field/value pairs.
# The log outlives every entry logged in it, so a missing log means a partition without live entries.
SET_SCRIPT = """
local log_type = redis.call('TYPE', KEYS[2])
if type(log_type) == 'table' then log_type = log_type['ok'] end
if log_type ~= 'stream' and log_type ~= 'none' then
  redis.call('DEL', KEYS[2])
  log_type = 'none'
end
local log_ttl = redis.call('PTTL', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
if ARGV[5] ~= '0' or ARGV[6] ~= '' then
  redis.call('HSET', KEYS[3], 'h', ARGV[5])
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[3], 't', ARGV[6]) end
end
local expire_at = tonumber(ARGV[2])
if expire_at then
  redis.call('PEXPIREAT', KEYS[1], expire_at)
  redis.call('PEXPIREAT', KEYS[3], expire_at)
end
if log_type == 'none' then redis.call('XADD', KEYS[2], '*', 'o', 'g') end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'o', 's', 'k', ARGV[1])
if not expire_at then
  redis.call('PERSIST', KEYS[2])
elseif log_type == 'none' or log_ttl >= 0 then
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local wanted = expire_at - now_ms + tonumber(ARGV[4])
  if log_type == 'none' or log_ttl < wanted then redis.call('PEXPIRE', KEYS[2], wanted) end
end
return id
"""

# KEYS: entry, log, hits. ARGV: digest, log max length. Returns 1 if an entry was deleted.
DELETE_SCRIPT = """
redis.call('DEL', KEYS[3])
local removed = redis.call('DEL', KEYS[1])
if removed == 1 then
  local log_type = redis.call('TYPE', KEYS[2])
  if type(log_type) == 'table' then log_type = log_type['ok'] end
  if log_type == 'stream' then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'o', 'd', 'k', ARGV[1])
  end
end
return removed
"""

# KEYS: entry, log, hits. ARGV: digest, log max length, sha1 of the payload (`j`) the entry must still hold.
# Used by clear(namespace) after checking that payload's namespace: an entry rewritten meanwhile is left alone.
DELETE_IF_SCRIPT = """
local payload = redis.call('HGET', KEYS[1], 'j')
if not payload or redis.sha1hex(payload) ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[3])
redis.call('DEL', KEYS[1])
local log_type = redis.call('TYPE', KEYS[2])
if type(log_type) == 'table' then log_type = log_type['ok'] end
if log_type == 'stream' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'o', 'd', 'k', ARGV[1])
end
return 1
"""

# KEYS: entry, hits. ARGV: now. The counters live beside the entry, not in it: changing an indexed hash makes
# the search module re-insert its vector (about a millisecond at 384 dimensions). They get the entry's TTL, and
# nothing is created for an entry that is gone.
RECORD_HIT_SCRIPT = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
redis.call('HINCRBY', KEYS[2], 'h', 1)
redis.call('HSET', KEYS[2], 't', ARGV[1])
if ttl >= 0 then redis.call('PEXPIRE', KEYS[2], ttl) else redis.call('PERSIST', KEYS[2]) end
return 1
"""


_SCRIPTS = {
    "set": SET_SCRIPT,
    "delete": DELETE_SCRIPT,
    "delete_if": DELETE_IF_SCRIPT,
    "record_hit": RECORD_HIT_SCRIPT,
}
_SHAS = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in _SCRIPTS.items()}


async def run_script(client: Client, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """Run a script by its sha (loading it by EVAL when the server does not have it)."""
    try:
        return await client.evalsha(_SHAS[name], len(keys), *keys, *args)
    except NoScriptError:
        return await client.eval(_SCRIPTS[name], len(keys), *keys, *args)


def queue_script(pipe: Any, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Queue a script on a pipeline (by EVAL: a pipeline cannot fall back on a missing sha)."""
    pipe.eval(_SCRIPTS[name], len(keys), *keys, *args)
