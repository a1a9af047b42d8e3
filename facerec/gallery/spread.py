"""`facerec index` spread over processes and machines (`torchrun ... -m facerec index DIR`).

Process 0 leads: it holds the gallery's lock, scans and plans as one process would, opens the models,
and sends every process the job (the models' provenance and the images to embed). Each process embeds
every N-th image of the list (a strided share balances photos of different sizes); the results come
back to process 0, which puts them in the list's order and commits, so the gallery equals a one-process
run's. The other processes only need the photos at the same paths (a shared file system across
machines) and the weights; only process 0 touches the gallery.

Messages are JSON (vectors as base64 of their float32 bytes) in uint8 tensors over gloo, never pickle:
torch.distributed's object helpers pickle, and a process must not unpickle what another sends.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from facerec.errors import FacerecError


class LeaderStopped(FacerecError):
    """Process 0 failed before sending a job; its error is the one to read."""


@dataclass
class Team:
    """This process's place among the processes of one `facerec index` run; `sent` is whether process 0
    has sent the job (every other process waits for exactly one)."""

    rank: int
    size: int
    sent: bool = False

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list[int]:
        """The positions in `items` this process embeds."""
        return list(range(self.rank, len(items), self.size))

    def broadcast(self, message: Any = None) -> Any:
        """Process 0's JSON `message`, on every process."""
        self.sent = True
        import torch
        import torch.distributed as dist

        data = json.dumps(message).encode() if self.leader else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, 0)
        if self.leader:
            buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        else:
            buffer = torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(buffer, 0)
        return json.loads(buffer.numpy().tobytes())

    def gather(self, message: Any) -> list[Any]:
        """Every process's JSON `message`, in rank order, on every process."""
        import torch
        import torch.distributed as dist

        data = json.dumps(message).encode()
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64))
        longest = max(int(size) for size in sizes)
        mine = torch.zeros(longest, dtype=torch.uint8)
        mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        parts = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.size)]
        dist.all_gather(parts, mine)
        return [
            json.loads(part[: int(size)].numpy().tobytes()) for part, size in zip(parts, sizes, strict=True)
        ]

    def finish(self, failed: bool) -> None:
        """On process 0: send the others an empty job (nothing to embed) or None (failed) when no job
        was sent, so none waits forever. Then leave the process group."""
        import torch.distributed as dist

        if self.leader and not self.sent:
            self.broadcast(None if failed else {"images": []})
        if dist.is_initialized():
            dist.destroy_process_group()


def join() -> Team | None:
    """The run's team when torchrun started several processes (gloo: the messages are CPU tensors
    whatever device embeds), else None."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return Team(dist.get_rank(), dist.get_world_size())


def pack_vectors(vectors: list[np.ndarray]) -> str:
    """float32 rows as base64 text: exact, and a quarter of the size of JSON numbers."""
    matrix = np.asarray(vectors, dtype="<f4")
    return base64.b64encode(matrix.tobytes()).decode("ascii")


def unpack_vectors(text: str, width: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(-1, width).astype(np.float32)
