"""The happens-before checker for a `RecordingStreams` log.

Every host thread and every device stream is an agent with a vector clock. An operation issued by
a host thread onto a stream happens after everything that stream ran before and after everything
that host thread did (or waited for) before issuing it; host work (a disk read, a host wait) is an
operation of the host thread itself. `record(e)` captures the clock of the agent it runs on,
`wait(e)` / `host_wait(e)` merge it, `wait_stream(a, b)` merges b's clock into a's.

Accesses: `allocate` and `free` write a buffer on the compute stream (the caching allocator hands
freed memory to the next allocation on that stream), `copy` writes its destination and reads its
source, `write` writes, `use` reads (and writes when it leaves new content). The rules:

  (a) any two accesses to the same buffer, at least one a write, are ordered by happens-before;
  (b) each `use` finds the content it expects, and each `copy` finds in its source the content it
      claims to copy (no compute before its copy landed, no stale slot, no stale staging buffer);
  (c) no wait on an event that was never recorded (on CUDA such a wait silently does nothing).

The log is in issue order, which is consistent with happens-before, so comparing each access with
the last write and the reads since it (as race detectors do) covers every pair.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from lowmem.offload.streams import Op

FREED = "<freed>"
GARBAGE = "<uninitialised>"


@dataclass(frozen=True)
class Access:
    index: int  # position in the log
    agent: str  # the stream or host thread it ran on
    time: int  # that agent's clock when it ran
    write: bool

    def before(self, clock: Counter) -> bool:
        return self.time <= clock[self.agent]


def _join(*clocks: Counter) -> Counter:
    out: Counter = Counter()
    for clock in clocks:
        for agent, t in clock.items():
            out[agent] = max(out[agent], t)
    return out


def _describe(log: list[Op], i: int) -> str:
    op = log[i]
    what = op.buffer or (op.event.name if op.event else op.waited)
    extra = f" [{op.tag}]" if op.tag else ""
    return f"#{i} {op.kind} {what}{extra} on {op.stream} (issued by {op.agent})"


class _Replay:
    def __init__(self, log: list[Op]):
        self.log = log
        self.clocks: dict[str, Counter] = {}
        self.events: dict[int, Counter] = {}  # id(event) -> clock captured by its latest record
        self.last_write: dict[str, Access] = {}
        self.reads: dict[str, list[Access]] = {}
        self.content: dict[str, str] = {}
        self.problems: list[str] = []

    def clock(self, agent: str) -> Counter:
        return self.clocks.setdefault(agent, Counter())

    def run(self) -> list[str]:
        for i, op in enumerate(self.log):
            self.step(i, op)
        return self.problems

    def step(self, i: int, op: Op) -> None:
        issuer = self.clock(op.agent)
        issuer[op.agent] += 1
        if op.stream != op.agent:  # device work: after the stream's past and the issuer's knowledge
            runs = _join(self.clock(op.stream), issuer)
            runs[op.stream] += 1
            self.clocks[op.stream] = runs
        else:
            runs = issuer
        if op.kind == "record":
            self.events[id(op.event)] = Counter(runs)
        elif op.kind in ("wait", "host_wait"):
            captured = self.events.get(id(op.event))
            if captured is None:
                self.problems.append(f"{_describe(self.log, i)}: waits on an event that was never recorded")
            else:
                self.clocks[op.stream] = _join(runs, captured)
        elif op.kind == "wait_stream":
            self.clocks[op.stream] = _join(runs, self.clock(op.waited))
        else:
            self.access(i, op, runs)

    def access(self, i: int, op: Op, clock: Counter) -> None:
        me = lambda write: Access(i, op.stream, clock[op.stream], write)  # noqa: E731
        if op.kind == "copy":
            self.touch(op.src, me(False), clock)
            self.expect(i, op.src, op.tag, "copies from")
        if op.kind == "use" and op.tag is not None:  # tag None: compute only writes the buffer
            self.expect(i, op.buffer, op.tag, "reads")
        writes = op.kind != "use" or op.writes is not None
        self.touch(op.buffer, me(writes), clock)
        if op.kind == "allocate":
            self.content[op.buffer] = GARBAGE
        elif op.kind == "free":
            self.content[op.buffer] = FREED
        elif op.kind in ("copy", "write"):
            self.content[op.buffer] = op.tag
        elif op.writes is not None:
            self.content[op.buffer] = op.writes

    def expect(self, i: int, buffer: str, tag: str, verb: str) -> None:
        held = self.content.get(buffer)  # None: filled before the log began (a store's image)
        if held is not None and held != tag:
            self.problems.append(f"{_describe(self.log, i)}: {verb} {buffer!r} expecting {tag!r}, but it holds {held!r}")

    def touch(self, buffer: str, access: Access, clock: Counter) -> None:
        earlier = [self.last_write[buffer]] if buffer in self.last_write else []
        if access.write:
            earlier += self.reads.get(buffer, [])
        for other in earlier:
            if not other.before(clock):
                self.problems.append(f"{_describe(self.log, access.index)} races with {_describe(self.log, other.index)}")
        if access.write:
            self.last_write[buffer] = access
            self.reads[buffer] = []
        else:
            self.reads.setdefault(buffer, []).append(access)


def check(log: Iterable[Op]) -> list[str]:
    """Every violation of rules (a), (b), (c) in `log`, as readable lines (empty when ordered)."""
    return _Replay(list(log)).run()


def assert_ordered(log: Iterable[Op], limit: int = 10) -> None:
    problems = check(log)
    if problems:
        shown = "\n  ".join(problems[:limit])
        raise AssertionError(f"{len(problems)} stream-ordering problem(s):\n  {shown}")

