//! The Lua scripts the shared tier runs on Redis: each is one atomic step, on Redis's
//! own clock (`TIME`), so replicas with skewed clocks still agree. Every key a script
//! touches is passed in `KEYS`. Times are integer milliseconds throughout (Lua numbers
//! are doubles: exact up to 2^53).

// Makes the generation counter a count: a counter missing, of another type, not a
// whole number, or too large to bump safely (Lua's doubles) is set to the time in
// seconds, above any count replicas reached by bumping, so no old generation is ever
// read again.
macro_rules! generation_repair {
    () => {
        r"
local kind = redis.call('TYPE', KEYS[1])['ok']
local v = nil
if kind == 'string' then v = tonumber(redis.call('GET', KEYS[1])) end
if not v or v % 1 ~= 0 or v < 0 or v > 4000000000000 then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[1], redis.call('TIME')[1])
end
"
    };
}

/// An answer, or the coalescing lock for it, or how long another replica's lock has left.
///
/// KEYS: the job's hash, the answer's lock. ARGV: the field, a lock token, the lock's
/// lease (ms), and "1" to ignore a value (a corrupt one the caller could not read).
/// Returns `{1, value}`, `{2, now_ms}` (locked by the caller: fetch, then store), or
/// `{0, lock_pttl}` (another replica is fetching it: wait). A hash of another type is
/// dropped, and a lock that would outlive its lease (no TTL, a long one: not one of
/// ours) is cut back to it, so no junk in Redis blocks a job for longer than a lease.
pub const FIND_OR_LOCK: &str = r"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
if ARGV[4] ~= '1' then
  local v = redis.call('HGET', KEYS[1], ARGV[1])
  if v then return {1, v} end
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  local t = redis.call('TIME')
  return {2, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
end
local left = redis.call('PTTL', KEYS[2])
if left < 0 or left > tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  left = tonumber(ARGV[3])
end
return {0, left}
";

/// Extends a lock's lease while its holder is still fetching. KEYS: the lock. ARGV: the
/// token, the lease (ms). Returns 1, or 0 if the lock is no longer the caller's.
pub const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Stores an answer fetched under a lock taken at ARGV[4], unless the job was purged
/// since; the hash lives as long as its longest answer.
///
/// KEYS: the job's hash. ARGV: field, value, TTL (ms), the lock's time (ms).
/// Returns 1 if stored, 0 if refused (a purge came after the fetch began).
pub const STORE: &str = r"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'hash' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
local purged = redis.call('HGET', KEYS[1], 'purged')
if purged then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local p = tonumber(purged)
  if not p or p > now then
    -- Not a mark any purge made (junk, or in the future): it refuses nothing.
    redis.call('HDEL', KEYS[1], 'purged')
  elseif p >= tonumber(ARGV[4]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
";

/// Releases a lock if the caller still holds it. KEYS: the lock. ARGV: the token.
pub const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Purges one job: its answers go, and a `purged` mark (kept ARGV[1] ms) refuses every
/// fill that began before it. KEYS: the job's hash.
pub const PURGE: &str = r"
redis.call('DEL', KEYS[1])
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'purged', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
";

/// One token of the account's quota (GCRA), behind the 429 gate.
///
/// KEYS: the quota's arrival time, the gate. ARGV: the emission interval T (ms; 0 for no
/// quota, the gate alone), the burst, the longest closing (ms, `upstream.max_cooldown`).
/// Returns `{0, tokens_left}` (allowed), `{1, wait_ms}` (quota spent) or `{2, wait_ms}`
/// (the gate is closed).
///
/// The stored arrival time is never trusted past what the current rate and burst allow
/// (an empty bucket): a reload that changes the rate, or junk, must not lock the quota
/// for longer than one interval; a value that is not a number is a full bucket.
pub const TAKE: &str = r"
local closed = redis.call('PTTL', KEYS[2])
if closed > tonumber(ARGV[3]) then
  -- Longer than this gateway ever closes it (upstream.max_cooldown): cut back.
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  closed = tonumber(ARGV[3])
end
if closed > 0 then return {2, closed} end
local T = tonumber(ARGV[1])
if T == 0 then return {0, -1} end
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then redis.call('DEL', KEYS[1]) end
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if tat > now + burst * T then
  tat = now + burst * T
  redis.call('SET', KEYS[1], tat, 'PX', tat - now)
end
local new = tat + T
local wait = new - burst * T - now
if wait > 0 then return {1, wait} end
redis.call('SET', KEYS[1], new, 'PX', new - now)
return {0, math.floor((burst * T - (new - now)) / T)}
";

/// Gives back one token taken but not used. KEYS: the quota. ARGV: T (ms).
pub const REFUND: &str = r"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then return 0 end
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local new = tat - tonumber(ARGV[1])
if new <= now then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], new, 'PX', new - now) end
return 1
";

/// Bumps the generation ("empty everything"). A value that is not a number (junk) is
/// replaced by the time in seconds, above any count a gateway reached by bumping. KEYS:
/// the counter.
pub const NEXT_GENERATION: &str = concat!(
    generation_repair!(),
    r"
return redis.call('INCR', KEYS[1])
"
);

/// The generation now, for the watch's probe (which also proves Redis answers), and the
/// account's tokens left (-1: no quota), so a replica that loses Redis knows what the
/// account had. KEYS: the counter, the quota. ARGV: T (ms), the burst.
pub const PROBE: &str = concat!(
    generation_repair!(),
    r"
local gen = tonumber(redis.call('GET', KEYS[1]))
local T = tonumber(ARGV[1])
if T == 0 then return {gen, -1} end
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tat = now
if redis.call('TYPE', KEYS[2])['ok'] == 'string' then
  tat = tonumber(redis.call('GET', KEYS[2])) or now
end
if tat < now then tat = now end
if tat > now + burst * T then tat = now + burst * T end
return {gen, math.floor((burst * T - (tat - now)) / T)}
"
);

/// Closes the 429 gate for ARGV[1] ms, never shortening a closing in force. KEYS: the gate.
pub const CLOSE_GATE: &str = r"
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], '1', 'PX', ARGV[1]) end
return 1
";

/// Queues a relay delivery unless one of its id exists (a duplicate event, another
/// replica's). KEYS: the delivery, its subscriber's due set, the index of all. ARGV: the
/// JSON, its TTL (ms), its due time, its creation time, its id. Returns 1 if queued.
pub const RELAY_OFFER: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
  return 1
end
return 0
";

/// Claims a subscriber's due deliveries for one replica's attempts: each claimed one is
/// pushed past a lease, so no other replica claims it while the attempt runs, and a
/// replica that dies mid-attempt gives it back when the lease ends. KEYS: the due set.
/// ARGV: now, most to claim, the lease's end, the prefix of delivery names (the names are
/// made here: standalone Redis only, which `[shared]` requires anyway). Returns the
/// claimed deliveries' JSON.
pub const RELAY_CLAIM: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local v = redis.call('GET', ARGV[4] .. id)
  if v then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    table.insert(out, v)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
";

/// Records an attempt's result. KEYS: the delivery, its due set. ARGV: the JSON, its TTL
/// (ms), "1" if still pending, its next due time, its id.
pub const RELAY_FINISH: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
else
  redis.call('ZREM', KEYS[2], ARGV[5])
end
return 1
";
