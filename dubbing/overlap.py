"""Stages that overlap: items drawn from a source in one thread, passed through a function in the calling thread
and then through further functions, each in a thread of its own, joined by bounded queues; the first error of
any stage stops them all, and no thread outlives the call."""
from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable

QUEUE_DEPTH = 2  # items waiting between two stages


class _Stopped(Exception):
    """Another stage failed: this one stops where it is."""


def run_overlapped(source: Iterable, middle: Callable, *after: Callable,
                   source_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                   depth: int = QUEUE_DEPTH) -> None:
    """Every item of `source` through `middle` and then each of `after` in turn, in order: `source` drawn in one
    thread, `middle` in the calling thread and each of `after` in a thread of its own (the last one's results are
    dropped), joined by queues of `depth` items. The first error of any stage (or a KeyboardInterrupt in the
    calling thread) stops them all, and is raised here once every thread has ended."""
    stop, errors, done = threading.Event(), [], object()
    boxes = [queue.Queue(depth) for _ in range(len(after) + 1)]  # into middle, then into each of after

    def put(box: queue.Queue, item) -> None:
        while not stop.is_set():
            try:
                return box.put(item, timeout=0.05)
            except queue.Full:
                pass
        raise _Stopped

    def get(box: queue.Queue):
        while True:
            try:
                return box.get(timeout=0.05)
            except queue.Empty:
                if stop.is_set():
                    raise _Stopped from None

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except _Stopped:
                pass
            except BaseException as error:  # noqa: BLE001 (handed to the calling thread, which raises it)
                errors.append(error)
                stop.set()
        return run

    def produce() -> None:
        with source_context():
            try:
                for item in source:
                    put(boxes[0], item)
            finally:
                getattr(source, "close", lambda: None)()
        put(boxes[0], done)

    def stage(work: Callable, inbox: queue.Queue, outbox: queue.Queue | None) -> Callable[[], None]:
        def run() -> None:
            while (item := get(inbox)) is not done:
                result = work(item)
                if outbox is not None:
                    put(outbox, result)
            if outbox is not None:
                put(outbox, done)
        return run

    threads = [threading.Thread(target=guarded(produce), name="dub-prepare", daemon=True)]
    for n, work in enumerate(after):
        outbox = boxes[n + 2] if n + 2 < len(boxes) else None
        threads.append(threading.Thread(target=guarded(stage(work, boxes[n + 1], outbox)), daemon=True,
                                        name=f"dub-{getattr(work, '__name__', n)}"))
    for thread in threads:
        thread.start()
    try:
        guarded(stage(middle, boxes[0], boxes[1] if after else None))()
    except BaseException as error:  # a KeyboardInterrupt that lands outside the guarded call
        errors.append(error)
        stop.set()
    finally:
        for thread in threads:
            while thread.is_alive():
                try:
                    thread.join()
                except BaseException as error:  # Ctrl-C while waiting: stop everything, keep waiting
                    errors.append(error)
                    stop.set()
    if errors:
        raise errors[0]
