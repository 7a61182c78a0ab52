"""Sharding a run over processes started by ``torchrun`` (one per GPU, or several on a CPU).

``torchrun --nproc_per_node=N -m tkmia run ...`` starts ``N`` copies of the command with
the environment variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set. When
``WORLD_SIZE > 1``, :func:`init_from_env` joins the process group (``nccl`` on CUDA,
``gloo`` on the CPU) and every rank:

1. scores the clean images and selects what to attack itself (deterministic, so every
   rank selects the same images: nothing needs to be exchanged);
2. attacks its share: the selected list of each setting is cut into chunks of
   ``--chunk-size`` exactly as a single process cuts it, and chunk ``b`` goes to rank
   ``b mod WORLD_SIZE``; every chunk thus holds the same images as in a single-process
   run, so the per-image results are the same too;
3. appends its records to its own file ``records/<setting>/<method>.rank<r>.jsonl``.

Rank 0 alone writes the shared files (``config.json``, ``setting.json``, the summary,
tables and figures), after a barrier, reading the records of all ranks. Without
``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) everything is a single process and nothing here
touches ``torch.distributed``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from tkmia.errors import InputError

#: how long a rank waits for the others at a barrier: ranks finish their shares at
#: different times, so this is generous (override with TKMIA_DIST_TIMEOUT_S).
DEFAULT_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that writes the shared files)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when a process group is in use (``world_size > 1``)."""
        return self.world_size > 1

    def owns(self, chunk_number: int) -> bool:
        """Whether this rank attacks chunk ``chunk_number`` of a setting's selected list."""
        return chunk_number % self.world_size == self.rank

    def records_name(self, method_key: str) -> str:
        """This process's records file name for a method."""
        if self.world_size == 1:
            return f"{method_key}.jsonl"
        return f"{method_key}.rank{self.rank}.jsonl"

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in a single process)."""
        if self.active:
            dist.barrier()

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a broadcast); ``obj`` itself when single."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer") from None


def info_from_env() -> DistInfo:
    """``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment (defaults 0, 1, 0)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"inconsistent RANK={rank} and WORLD_SIZE={world} in the environment")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def init_from_env(device: str) -> tuple[DistInfo, str]:
    """Join the process group when ``WORLD_SIZE > 1``; returns ``(info, device)``.

    On CUDA every rank uses the GPU ``cuda:<LOCAL_RANK>`` and the ``nccl`` backend; on
    the CPU the ``gloo`` backend. A single process returns ``device`` unchanged.
    """
    info = info_from_env()
    if not info.active:
        return info, device
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {device!r} asked for, but no CUDA device is available")
        if info.local_rank >= torch.cuda.device_count():
            raise InputError(
                f"LOCAL_RANK={info.local_rank} but only {torch.cuda.device_count()} CUDA "
                "devices are visible; start at most that many processes per node"
            )
        device = f"cuda:{info.local_rank}"
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=_env_int("TKMIA_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout}
        if backend == "nccl":
            kwargs["device_id"] = torch.device(device)
        try:
            dist.init_process_group(**kwargs)
        except TypeError:  # torch without device_id
            kwargs.pop("device_id", None)
            dist.init_process_group(**kwargs)
    return info, device


def shutdown(info: DistInfo) -> None:
    """Leave the process group (if this process joined one)."""
    if info.active:
        if dist.is_initialized():
            dist.destroy_process_group()
