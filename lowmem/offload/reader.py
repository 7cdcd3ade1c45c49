"""ReaderThread: one host thread that runs submitted loads in order, ahead of the compute thread.

The disk tier's reads (`os.preadv` releases the GIL) run here, so the compute thread only waits for
a block whose read is genuinely not finished yet, never for one it could have overlapped. Each
submission is ordered through the stream protocol: the submitter records a request event (on the
compute stream when copies are immediate, so the reader also sees the compute that freed the slot;
else on the host thread), the reader waits for it, runs the load, and records the job's `issued`
event on its own thread; `wait(job)` blocks the submitter on that event and re-raises a failed read.
"""

from __future__ import annotations

import queue
import threading
import weakref
from dataclasses import dataclass
from typing import Callable, Optional

from lowmem.offload.streams import COMPUTE, Event, Streams


@dataclass(eq=False)
class Job:
    issued: Event
    error: Optional[BaseException] = None


class ReaderThread:
    def __init__(self, streams: Streams, name: str, owner: object):
        """The thread stops when `close()` is called or when `owner` is garbage collected."""
        self.streams = streams
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._count = 0
        weakref.finalize(owner, self._queue.put, None)

    def submit(self, load: Callable[[], None]) -> Job:
        self._count += 1
        request = self.streams.event(f"{self.name} request {self._count}")
        self.streams.record(request, None if self.streams.async_copies else COMPUTE)
        job = Job(self.streams.event(f"{self.name} issued {self._count}"))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        self._queue.put((request, load, job))
        return job

    def wait(self, job: Job) -> None:
        self.streams.host_wait(job.issued)
        if job.error is not None:
            raise job.error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._serve(*item)
            del item  # an idle thread must not keep the last load (and its streamer) alive

    def _serve(self, request: Event, load: Callable[[], None], job: Job) -> None:
        try:
            self.streams.host_wait(request)
            load()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            job.error = exc
        finally:
            self.streams.record(job.issued)

    def close(self) -> None:
        """Finish what was submitted and stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
