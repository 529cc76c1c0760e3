"""Pretraining batches: resident on the device when the data fits, streamed when it does not.

Both paths hand the step the same uint8 batches, in the order of the same per-epoch
permutation, so a run's weights do not depend on the path (a test holds them bitwise equal).

- :class:`Resident`: the whole pretraining set lives on the device as uint8 and a batch is
  one gather there (airbench's fast path: the step never waits for the host).
- :class:`Streamed`: a background thread gathers each batch from the shards into one of a
  few reused buffers (pinned memory on CUDA) a few batches ahead; on CUDA the copy to the
  device runs on a stream of its own, overlapped with the previous step. Memory holds a few
  batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from byol_core.device import free_memory
from byol_core.data.store import ShardedImages

AHEAD = 4  # batches gathered ahead of the step
_AUTO_SHARE = {"cuda": 0.5, "cpu": 1 / 3}  # of free device memory that resident data may take


def resident_budget(setting: str | float, device: torch.device) -> int:
    """Bytes of data that may stay resident: ``pretrain.resident_max_mb`` in MiB, or for
    ``auto`` a share of the free memory of the device (GPU memory on CUDA, RAM on CPU)."""
    if setting != "auto":
        return int(float(setting) * (1 << 20))
    return int(free_memory(device) * _AUTO_SHARE[device.type])


class Resident:
    """The data on the device as one uint8 tensor; a batch is a gather there."""

    name = "resident"

    def __init__(self, images: ShardedImages, device: torch.device):
        # Filled a chunk at a time, so the host never holds a second copy on the way to a GPU.
        self.data = torch.empty(images.shape, dtype=torch.uint8, device=device)
        for start, chunk in images.iter_chunks(max(1, (64 << 20) // max(1, int(np.prod(images.image_shape))))):
            self.data[start:start + len(chunk)].copy_(torch.from_numpy(chunk))
        images.close()

    def batches(self, order: torch.Tensor, steps: int, batch: int, local: int, rank: int) -> Iterator[torch.Tensor]:
        for i in range(steps):
            start = i * batch + rank * local
            yield self.data[order[start:start + local]]


class Streamed:
    """Batches gathered from the shards by a background thread."""

    name = "streamed"

    def __init__(self, images: ShardedImages, device: torch.device):
        self.images, self.device = images, device
        self.cuda = device.type == "cuda"

    def _gather(self, rows: list[np.ndarray], out: queue.Queue, stop: threading.Event, free: queue.Queue) -> None:
        """Fill a free buffer with each batch's rows, in order (the buffers go round: no
        allocation per batch)."""
        try:
            for index in rows:
                buffer, done = _get(free, stop)
                if buffer is None:
                    return
                if done is not None:  # CUDA: the buffer's last copy to the device must be over
                    done.synchronize()
                self.images.take(index, out=buffer.numpy())
                if not _put(out, buffer, stop):
                    return
        except BaseException as exc:  # re-raised in the training thread
            out.put(exc)

    def batches(self, order: torch.Tensor, steps: int, batch: int, local: int, rank: int) -> Iterator[torch.Tensor]:
        index = order.cpu().numpy()
        rows = [index[i * batch + rank * local:i * batch + (rank + 1) * local] for i in range(steps)]
        out: queue.Queue = queue.Queue(maxsize=AHEAD)
        free: queue.Queue = queue.Queue()
        for _ in range(AHEAD + 3):
            free.put((torch.empty((local, *self.images.image_shape), dtype=torch.uint8, pin_memory=self.cuda), None))
        stop = threading.Event()
        worker = threading.Thread(target=self._gather, args=(rows, out, stop, free), daemon=True)
        worker.start()

        def receive() -> torch.Tensor:
            item = out.get()
            if isinstance(item, BaseException):
                raise item
            return item

        try:
            if not self.cuda:
                previous = None
                for _ in range(steps):
                    item = receive()
                    if previous is not None:  # the step that used it is over
                        free.put((previous, None))
                    previous = item
                    yield item
                return
            copier = torch.cuda.Stream(self.device)
            pending = self._to_device(receive(), copier, free) if steps else None
            for i in range(steps):
                on_device, ready = pending
                pending = self._to_device(receive(), copier, free) if i + 1 < steps else None
                torch.cuda.current_stream(self.device).wait_event(ready)
                on_device.record_stream(torch.cuda.current_stream(self.device))
                yield on_device
        finally:
            stop.set()
            while worker.is_alive():
                try:
                    out.get(timeout=0.05)
                except queue.Empty:
                    pass
            worker.join()

    def _to_device(self, pinned: torch.Tensor, copier, free: queue.Queue) -> tuple[torch.Tensor, torch.cuda.Event]:
        """Copy on the side stream; the buffer goes back to the gatherer with the copy's event."""
        with torch.cuda.stream(copier):
            on_device = pinned.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(copier)
        free.put((pinned, done))
        return on_device, done


def _get(free: queue.Queue, stop: threading.Event):
    """A free buffer, or (None, None) once the consumer stopped."""
    while not stop.is_set():
        try:
            return free.get(timeout=0.1)
        except queue.Empty:
            continue
    return None, None


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def for_data(images: ShardedImages, device: torch.device, setting: str | float) -> Resident | Streamed:
    """Resident when the data fits ``pretrain.resident_max_mb``, else streamed."""
    if images.nbytes <= resident_budget(setting, device):
        return Resident(images, device)
    return Streamed(images, device)
