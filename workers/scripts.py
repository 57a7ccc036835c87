"""The worker's Lua scripts: an answer and its entry's acknowledgement as one atomic step.

On one Redis (not a Cluster) a worker stores an answer (a reply on the caller's reply
stream, a job chunk's result, a dead letter) and XACK + XDELs its entry in one script:
an answered entry leaves the queue stream at once, and a script Redis refuses stored
nothing and acknowledged nothing, so its entry is still pending and runs again.

Every composed script opens with a ``#!lua`` shebang and no ``allow-oom`` flag. Redis 7
then refuses the whole script at its start while memory is over ``maxmemory``; a script
without the shebang is refused only at its first denyoom command, and a write before that
one (an XACK, say) would go through and let the rest run over the limit.

In a Redis Cluster the answer lives in another slot than the entry (the reply stream under
the gateway's hash tag, a job's keys under the job's, the queue under the model's), and a
script may touch one slot only; there the outbox stores the answer, reads Redis's reply,
then acknowledges in a second step. A dead letter shares the entry's slot: written with
the acknowledgement in one script where nobody is to be told, else before the caller is
told (so a caller told its request was dead-lettered finds it there), with the
acknowledgement last.
"""

from __future__ import annotations

from dataclasses import dataclass

from embedstream import jobstore, keys


@dataclass(frozen=True, slots=True)
class Step:
    """A piece of Lua that reads its own ``keys`` KEYS and ``args`` ARGV, and may ``return``."""

    lua: str
    keys: int
    args: int


def atomic(*steps: Step) -> str:
    """One script running ``steps`` in order, each given its slice of KEYS and ARGV (the
    steps' slices one after the other), that returns every step's result (nil as 0)."""
    parts = ["#!lua"]
    calls = []
    k = a = 0
    for n, step in enumerate(steps):
        # KEYS and ARGV as parameters shadow the globals: each step reads its slice as if alone.
        parts.append(f"local function step{n}(KEYS, ARGV)\n{step.lua.strip()}\nend")
        given = f"{{unpack(KEYS, {k + 1}, {k + step.keys})}}, {{unpack(ARGV, {a + 1}, {a + step.args})}}"
        calls.append(f"local r{n} = step{n}({given})")
        k, a = k + step.keys, a + step.args
    results = ", ".join(f"r{n} or 0" for n in range(len(steps)))
    return "\n".join([*parts, *calls, f"return {{{results}}}", ""])


#: The caller's reply. KEYS: its reply stream. ARGV: the encoded reply. NOMKSTREAM: the stream
#: of a gateway that left is not made again (nobody would read or expire it).
REPLY = Step(f"return redis.call('XADD', KEYS[1], 'NOMKSTREAM', '*', '{keys.PAYLOAD}', ARGV[1])", 1, 1)

#: A job chunk's result, counted once (:data:`embedstream.jobstore.RECORD`, as ``recording`` builds it).
RECORD = Step(jobstore.RECORD, *jobstore.RECORD_ARITY)

#: The entry is done. KEYS: its stream. ARGV: group, entry id.
ACK = Step(
    """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
""",
    1,
    2,
)

#: A dead letter; dead letters are kept to a fixed number and it returns how many the cap
#: trimmed. KEYS: the dead-letter stream. ARGV: cap, payload, reason, entry id, worker.
DEAD = Step(
    f"""
local before = redis.call('XLEN', KEYS[1])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', '{keys.PAYLOAD}', ARGV[2],
           'reason', ARGV[3], 'id', ARGV[4], 'worker', ARGV[5])
return before + 1 - redis.call('XLEN', KEYS[1])
""",
    1,
    5,
)

#: Answer kind -> the script that stores that answer and acknowledges its entry (one Redis).
ANSWERED = {"reply": atomic(REPLY, ACK), "record": atomic(RECORD, ACK)}

#: Answer kind (None: nobody to tell) -> the script that tells the caller, writes the dead
#: letter and acknowledges its entry (one Redis; in a Cluster only where nobody is told).
DEAD_LETTERED = {None: atomic(DEAD, ACK), "reply": atomic(REPLY, DEAD, ACK), "record": atomic(RECORD, DEAD, ACK)}

#: The dead letter alone: the first of three steps in a Cluster, where the caller is told in another slot.
DEAD_LETTER = atomic(DEAD)

# Give entries this worker still owns back to the group: idle as if timed out, so the next
# reclaim scan takes them, and with the delivery that failed to store its answer uncounted.
# XCLAIM is no denyoom command (and this script has no shebang), so this works while Redis is full.
# KEYS: stream. ARGV: group, consumer, idle ms, ids.
HAND_BACK = """
for i = 4, #ARGV do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if row and row[2] == ARGV[2] then
    local count = math.max(0, tonumber(row[4]) - 1)
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'RETRYCOUNT', count, 'JUSTID')
  end
end
return 0
"""
