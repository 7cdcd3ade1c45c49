"""The stream protocol: the few operations behind every copy/compute ordering the offload code does.

The streamer (and SpotEdit's cache ring) never touch CUDA streams or events directly; they call a
`Streams` object:

    allocate(name, nbytes) / free(buffer)    device memory, allocated and freed on the compute stream
    host(name, tensor)                       wrap host memory (a store's block image, a staging buffer)
    copy(dst, src, tag, stream)              an asynchronous copy issued on `stream` ("copy" by default)
    write(dst, tag, fill)                    the calling host thread fills `dst` itself (a disk read)
    use(buffer, tag)                         compute reads `buffer` and expects it to hold `tag`
    event(name) / record(event, stream)      an event recorded on a device stream, or (stream None) on
                                             the calling host thread
    wait(event, stream) / wait_stream(a, b)  a device stream waits for an event / for another stream
    host_wait(event)                         the calling host thread blocks until the event happened
    host_wait_stream(stream)                 ... until everything issued on `stream` has run

Three implementations:
- `CudaStreams`: "compute" is the current CUDA stream, other names are side streams; copies come
  from pinned memory with `non_blocking=True`; events are CUDA events.
- `ImmediateStreams` (CPU, `meta`): copies happen at once, stream waits are no-ops; an event is
  a flag set when it is recorded, so a host thread waiting on it (a reader thread waiting for the
  compute that frees a slot) really waits.
- `RecordingStreams` (tests): does what `ImmediateStreams` does, so results stay correct, and logs
  every operation with the host thread that issued it and the stream it runs on.
  `lowmem.offload.stream_check.check` replays that log with vector clocks and reports every
  unordered conflicting access, every compute that would read the wrong content, and every wait on
  an event that was never recorded (on CUDA that wait is silently a no-op).

A buffer's `tag` names its content ("dit block 7"): the checker follows tags through copies, so a
compute that would read a slot before its copy landed, or a stale occupant, is reported.
`async_copies` says whether copies run beside compute and must be ordered with events (CUDA, and
the recording stand-in by default), or land before the call returns (the host tier).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

COMPUTE = "compute"
COPY = "copy"
HOST = "host"  # the main thread; other host threads are named by their thread name


def current_agent() -> str:
    """The host thread issuing an operation, as the checker names it."""
    thread = threading.current_thread()
    return HOST if thread is threading.main_thread() else thread.name


@dataclass
class Buffer:
    """Named memory: the checker tracks accesses and content per name; `part` narrows the tensor."""

    name: str
    tensor: Optional[torch.Tensor]

    def part(self, start: int, stop: int) -> "Buffer":
        return Buffer(self.name, self.tensor[start:stop])


@dataclass(eq=False)
class Event:
    name: str
    recorded: threading.Event = field(default_factory=threading.Event)
    on_device: bool = False  # recorded on a device stream (else by a host thread)
    cuda: Optional["torch.cuda.Event"] = None


class Streams:
    """The immediate implementation, and the interface the others keep."""

    async_copies = False

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)

    @property
    def pin(self) -> bool:
        """Whether host buffers that feed copies should be page-locked."""
        return self.device.type == "cuda"

    # -- memory -------------------------------------------------------------------------------
    def allocate(self, name: str, nbytes: int) -> Buffer:
        with torch.inference_mode(False):  # a reader thread (not in inference mode) may copy into it
            return Buffer(name, torch.empty(nbytes, dtype=torch.uint8, device=self.device))

    def free(self, buffer: Buffer) -> None:
        buffer.tensor = None

    def host(self, name: str, tensor: torch.Tensor) -> Buffer:
        return Buffer(name, tensor)

    # -- work ---------------------------------------------------------------------------------
    def copy(self, dst: Buffer, src: Buffer, tag: str, stream: str = COPY) -> None:
        if src.tensor.is_meta and not dst.tensor.is_meta:
            return  # a meta tensor holds no data (a meta run writing back to the host): only shapes flow
        dst.tensor.copy_(src.tensor)

    def write(self, dst: Buffer, tag: str, fill: Callable[[torch.Tensor], None]) -> None:
        fill(dst.tensor)

    def use(self, buffer: Buffer, tag: Optional[str], writes: Optional[str] = None) -> None:
        """Compute is about to read `buffer` holding `tag` (None: compute does not read it) and, with
        `writes`, leave new content in it."""

    # -- ordering -----------------------------------------------------------------------------
    def event(self, name: str) -> Event:
        return Event(name)

    def record(self, event: Event, stream: Optional[str] = None) -> None:
        event.on_device = stream is not None
        event.recorded.set()

    def wait(self, event: Event, stream: str = COMPUTE) -> None:
        if not event.recorded.is_set():
            raise RuntimeError(f"stream {stream!r} waits on event {event.name!r}, which was never recorded")

    def wait_stream(self, waiter: str, waited: str) -> None:
        pass

    def host_wait(self, event: Event) -> None:
        event.recorded.wait()

    def host_wait_stream(self, stream: str) -> None:
        """The calling host thread blocks until everything issued on `stream` so far has run."""
        if self.async_copies:
            flushed = self.event(f"{stream} flushed")
            self.record(flushed, stream)
            self.host_wait(flushed)


ImmediateStreams = Streams


class CudaStreams(Streams):
    """Side streams for copies, CUDA events for ordering; compute is whatever stream is current."""

    async_copies = True

    def __init__(self, device: torch.device | str):
        super().__init__(device)
        self._side: dict[str, torch.cuda.Stream] = {}
        self._lock = threading.Lock()

    def stream(self, name: str) -> "torch.cuda.Stream":
        if name == COMPUTE:
            return torch.cuda.current_stream(self.device)
        with self._lock:
            if name not in self._side:
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                self._side[name] = side
            return self._side[name]

    def copy(self, dst: Buffer, src: Buffer, tag: str, stream: str = COPY) -> None:
        with torch.cuda.stream(self.stream(stream)):
            dst.tensor.copy_(src.tensor, non_blocking=True)

    def event(self, name: str) -> Event:
        return Event(name, cuda=torch.cuda.Event())

    def record(self, event: Event, stream: Optional[str] = None) -> None:
        if stream is not None:
            event.cuda.record(self.stream(stream))
        super().record(event, stream)

    def wait(self, event: Event, stream: str = COMPUTE) -> None:
        super().wait(event, stream)
        if not event.on_device:
            raise RuntimeError(f"event {event.name!r} was recorded by a host thread; a CUDA stream cannot wait on it")
        self.stream(stream).wait_event(event.cuda)

    def wait_stream(self, waiter: str, waited: str) -> None:
        self.stream(waiter).wait_stream(self.stream(waited))

    def host_wait(self, event: Event) -> None:
        super().host_wait(event)
        if event.on_device:
            event.cuda.synchronize()


@dataclass(frozen=True)
class Op:
    """One logged operation. `agent` is the host thread that issued it, `stream` where it runs (a
    device stream name, or the agent itself for host work)."""

    kind: str  # allocate free copy write use record wait wait_stream host_wait
    agent: str
    stream: str
    buffer: Optional[str] = None
    src: Optional[str] = None
    tag: Optional[str] = None
    writes: Optional[str] = None
    event: Optional[Event] = None
    waited: Optional[str] = None


class RecordingStreams(Streams):
    """Immediate execution plus a log of every operation, for `stream_check.check`.

    With `async_copies` (the default) the code under test takes its CUDA-shaped path (copies on the
    copy stream, staging for disk reads), so the log is the protocol the GPU would see."""

    def __init__(self, device: torch.device | str = "cpu", async_copies: bool = True):
        super().__init__(device)
        self.async_copies = async_copies
        self.log: list[Op] = []
        self._lock = threading.Lock()

    def _log(self, kind: str, stream: Optional[str] = None, **fields) -> None:
        agent = current_agent()
        with self._lock:
            self.log.append(Op(kind, agent, stream or agent, **fields))

    def allocate(self, name: str, nbytes: int) -> Buffer:
        self._log("allocate", COMPUTE, buffer=name)
        return super().allocate(name, nbytes)

    def free(self, buffer: Buffer) -> None:
        self._log("free", COMPUTE, buffer=buffer.name)
        super().free(buffer)

    def copy(self, dst: Buffer, src: Buffer, tag: str, stream: str = COPY) -> None:
        super().copy(dst, src, tag, stream)
        self._log("copy", stream, buffer=dst.name, src=src.name, tag=tag)

    def write(self, dst: Buffer, tag: str, fill: Callable[[torch.Tensor], None]) -> None:
        super().write(dst, tag, fill)
        self._log("write", buffer=dst.name, tag=tag)

    def use(self, buffer: Buffer, tag: Optional[str], writes: Optional[str] = None) -> None:
        self._log("use", COMPUTE, buffer=buffer.name, tag=tag, writes=writes)

    def record(self, event: Event, stream: Optional[str] = None) -> None:
        with self._lock:  # logged and set together, so a waiting thread's wait is logged after it
            self.log.append(Op("record", current_agent(), stream or current_agent(), event=event))
            Streams.record(self, event, stream)

    def wait(self, event: Event, stream: str = COMPUTE) -> None:
        self._log("wait", stream, event=event)  # logged, not raised: the checker reports it

    def wait_stream(self, waiter: str, waited: str) -> None:
        self._log("wait_stream", waiter, waited=waited)

    def host_wait(self, event: Event) -> None:
        super().host_wait(event)
        self._log("host_wait", event=event)


def streams_for(device: torch.device | str) -> Streams:
    """The implementation for a compute device: CUDA streams on a GPU, immediate elsewhere."""
    device = torch.device(device)
    return CudaStreams(device) if device.type == "cuda" else ImmediateStreams(device)
