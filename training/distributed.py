"""Data-parallel training over several processes (torch.distributed: gloo on CPU, NCCL on GPUs).

Start the processes with torch's launcher (``torchrun --nproc_per_node N onnxverify train ...``,
or ``onnxverify train ... --nproc N``, which runs it); every process runs the same training
loop and :func:`from_env` finds the process group from the launcher's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

How a step is shared (the same arithmetic as torch's ``DistributedDataParallel``):

* every process draws the same batch (same seed and permutation) and keeps its shard
  ``batch[rank::world]``;
* after the backward pass :meth:`Dist.average_gradients` all-reduces every gradient weighted
  by the shard sizes, so each process holds the gradient of the loss over the whole batch
  (exactly, up to float summation order) and takes the same optimiser step; parameters never
  drift apart (they are broadcast from rank 0 at the start and after ParamRamp's ``r`` is set);
* epoch metrics are summed over processes; rank 0 alone evaluates, logs, checkpoints, exports.

The DDP *wrapper* is not used because one training step runs the module more than once (the
clean forward, MTL-IBP's / SABR's PGD attack and adversarial forward) and the bounds use the
same parameters outside the module (the verifier's IR on torch); the wrapper's reducer assumes
one forward per backward through itself.  The gradients are reduced in one flat buffer per
step, as DDP's buckets do.

Multi-GPU: ``torchrun --nproc_per_node 4 onnxverify train ... --device cuda`` (each process
takes ``cuda:LOCAL_RANK``, NCCL).  Multi-node: ``torchrun --nnodes 2 --node_rank R
--master_addr HOST --master_port PORT --nproc_per_node G onnxverify train ...`` on every node.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import torch

__all__ = ["Dist", "from_env", "world_size_from_env"]


def world_size_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@dataclass
class Dist:
    """The process group of a data-parallel run: ``rank`` of ``world`` processes."""

    rank: int
    world: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This process's part of a batch of ``n`` items (``rank::world``)."""
        return slice(self.rank, n, self.world)

    def broadcast_parameters(self, tensors: Iterable[torch.Tensor]) -> None:
        """Copy rank 0's values of ``tensors`` (parameters and buffers) to every process."""
        with torch.no_grad():
            for t in tensors:
                torch.distributed.broadcast(t.data, src=0)

    def average_gradients(self, params, n_local: int) -> int:
        """All-reduce the gradients of ``params`` weighted by ``n_local`` (this process's
        shard size); afterwards every process holds ``sum_r n_r g_r / sum_r n_r``.  Returns
        the total batch size."""
        params = [p for p in params if p.requires_grad]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        buf = torch.cat([flat * float(n_local), flat.new_tensor([float(n_local)])])
        torch.distributed.all_reduce(buf)
        total = float(buf[-1])
        flat = buf[:-1] / total
        offset = 0
        for p in params:
            k = p.numel()
            g = flat[offset:offset + k].view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
            offset += k
        return int(round(total))

    def sum_values(self, values: Dict[str, float], device) -> Dict[str, float]:
        """Sum a dict of floats over processes (same keys on every process)."""
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return {k: float(v) for k, v in zip(keys, t.tolist())}

    def all_finite(self, value: float, device) -> bool:
        t = torch.tensor([0.0 if value == value and abs(value) != float("inf") else 1.0], device=device)
        torch.distributed.all_reduce(t)
        return float(t) == 0.0

    def barrier(self) -> None:
        torch.distributed.barrier()

    def close(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def from_env(device: str = "cpu") -> Optional[Dist]:
    """The process group of a launcher-started run (None for a single process).  Initialises
    it (gloo for CPU devices, NCCL for CUDA) unless already initialised."""
    world = world_size_from_env()
    if world <= 1:
        return None
    if not torch.distributed.is_available():
        raise ValueError("this torch build has no torch.distributed: train with one process")
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world)
    return Dist(rank=rank, world=world, local_rank=local, backend=backend)
