"""Pretraining past one process: PyTorch DDP, launched by ``torchrun``.

``pretrain.devices`` processes per node times ``pretrain.nodes`` nodes. When more than one
is asked for, ``byol pretrain`` starts itself again under ``torchrun`` (so the DVC stage
command and the Dagster asset need nothing else), and each worker it starts trains on its
shard of every global batch:

- the per-epoch permutation is drawn from the same seed on every rank; rank r takes the
  r-th slice of each global batch of ``pretrain.batch_size`` images (the batch size and so
  the LR, ``base_lr * batch_size / 256``, are global);
- every augmentation draw is made for the whole global batch and each rank applies its
  slice, so a sample is augmented exactly as it would be in one process;
- BatchNorm becomes SyncBatchNorm (torch's on CUDA; on CPU, where torch's has no kernel,
  :class:`CpuSyncBatchNorm` with the same maths over gloo), so statistics are those of the
  global batch;
- gradients are averaged by DDP, so the LARS step and the EMA of the target are the same
  on every rank; :func:`check_in_step` proves it at the end by comparing weight hashes;
- rank 0 alone writes files, logs and reports to Dagster.

Multi-node: run the same command on every node with torchrun's rendezvous settings in the
environment (``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``); one node uses
``--standalone``. Each node may have its own copy of the project (same params, same prepared
data) or share one folder:

- node 0 holds rank 0, so its folder alone receives the outputs and the resume state, and its
  launcher alone takes the project's lock (the other nodes write nothing there);
- on a resume, rank 0's saved state is sent to every rank (:func:`from_rank0`), so no other
  node needs a copy of it, and a stale one on its disk is never read;
- the ranks compare their params and data hash before training and stop if they differ;
- when a rank dies (or its node does), its peers' next collective fails at once, as the
  kernel closes its sockets: every other rank stops within seconds with an error that says
  how to resume, and so does each node's torchrun. A peer that stops answering without dying
  (a frozen node, a silent network) is only noticed at the process group's timeout (torch's
  default: 30 min on gloo, 10 on NCCL).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ContextManager, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from byol_core.io import proc
from byol_core.errors import ByolError, brief

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without DDP)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.size


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def current() -> World:
    """The world as torchrun described it in the environment (one process otherwise)."""
    if not under_torchrun():
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies. torchrun starts
    each worker in a session of its own, so without this a ``kill -9`` of ``byol pretrain``
    would leave the ranks training on, unseen, and racing the next run for the same files."""
    if sys.platform.startswith("linux") and not proc.die_with_parent(signal.SIGKILL, os.getppid()):
        os._exit(1)  # the parent died before the request took hold


def node_rank(nodes: int) -> int | None:
    """This node's rank among ``nodes`` (0 on one node), from torchrun's static rendezvous
    settings in the environment; None under a dynamic rendezvous (``PET_RDZV_BACKEND`` c10d
    or etcd), where torchrun assigns it. Settings that cannot work are refused here, before
    torchrun would wait for nodes that never come."""
    if nodes == 1:
        return 0
    run_everywhere = f"run `byol pretrain` on each of the {nodes} nodes"
    if os.environ.get("PET_RDZV_BACKEND", "static") != "static":
        if "PET_RDZV_ENDPOINT" not in os.environ:
            raise ByolError(f"pretrain.nodes is {nodes} and PET_RDZV_BACKEND is {os.environ['PET_RDZV_BACKEND']}, "
                            f"but PET_RDZV_ENDPOINT is not set: set it (host:port of the rendezvous) and "
                            f"{run_everywhere}, or set pretrain.nodes: 1.")
        return None
    if not any(key in os.environ for key in ("PET_RDZV_ENDPOINT", "PET_MASTER_ADDR")):
        raise ByolError(f"pretrain.nodes is {nodes}: {run_everywhere} with PET_NODE_RANK, PET_MASTER_ADDR and "
                        "PET_MASTER_PORT set (torchrun's rendezvous), or set pretrain.nodes: 1.")
    raw = os.environ.get("PET_NODE_RANK", "")
    if not raw.isdigit() or int(raw) >= nodes:
        others = "1 on the other" if nodes == 2 else f"1 to {nodes - 1} on the others, one each"
        raise ByolError(f"PET_NODE_RANK is {raw or 'not set'}: with pretrain.nodes {nodes}, set it to 0 on the node "
                        f"at PET_MASTER_ADDR (it writes the outputs) and to {others}.")
    return int(raw)


def launch(devices: int, nodes: int, argv: list[str], lock: ContextManager) -> int:
    """Run ``byol <argv>`` in ``devices`` processes on this node under torchrun; returns its
    exit code. Nodes other than one need the rendezvous settings in the environment (see
    :func:`node_rank`). ``lock`` (the project's run lock) is held while torchrun runs, except
    on nodes other than node 0: they write nothing into their folder, so a project folder
    shared between nodes does not lock them out."""
    node = node_rank(nodes)
    command = [sys.executable, "-m", "byol_core.train.distributed", f"--nproc-per-node={devices}", f"--nnodes={nodes}"]
    if nodes == 1:
        command.append("--standalone")
    command += ["-m", "byol_core.cli", *argv]
    where = "" if nodes == 1 else f" on node {node} of {nodes}" if node is not None else f" on one of {nodes} nodes"
    print(f"byol: launching {devices * nodes} processes{where}: torchrun {' '.join(command[3:])}", file=sys.stderr)
    with lock if node in (0, None) else contextlib.nullcontext():
        return subprocess.run(command, preexec_fn=die_with_parent).returncode


def torchrun(argv: list[str]) -> int:
    """torchrun (``torch.distributed.run``) with ``argv``, its exit code returned. When a
    worker fails, torchrun's own report is a traceback around the worker's; the worker has
    already printed its error, so one line here says which rank ended and how."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
        print(f"byol pretrain: error: training process rank {rank} {how}; its own message, if it left one, is "
              "above.", file=sys.stderr)
        return 1
    except SignalException as exc:  # SIGTERM or SIGINT: torchrun has stopped its workers
        return 128 + int(exc.sigval)
    return 0


def setup(device_type: str) -> tuple[World, torch.device]:
    """Join the process group (NCCL on CUDA, gloo on CPU) and pick this rank's device."""
    world = current()
    die_with_parent()
    if device_type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise ByolError(f"pretrain.devices asks for GPU {world.local_rank} on this node but only "
                            f"{torch.cuda.device_count()} are visible: lower pretrain.devices.")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world.size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", device_id=device if device_type == "cuda" else None)
    return world, device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a per-rank scalar (a no-op in one process)."""
    if not dist.is_initialized():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, with a gradient: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def differentiable_all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(tensor)


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch, for CPU processes (gloo), where torch's
    SyncBatchNorm has no kernel. Same maths as ``F.batch_norm`` in training mode: mean and
    biased variance of the global batch normalise, the unbiased variance feeds the running
    estimate. Both sums go through a differentiable all-reduce, so gradients flow to every
    rank's inputs. Outside training or without a process group it is plain BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * dist.get_world_size()  # ranks hold equal shards
        mean = differentiable_all_reduce(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = differentiable_all_reduce(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * count / max(count - 1, 1), self.momentum)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm in ``model`` made to use global-batch statistics, weights kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, CpuSyncBatchNorm):
            like = next(iter(child.state_dict().values()), None)
            sync = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats, device=device,
                                    dtype=like.dtype if like is not None and like.is_floating_point() else None)
            sync.load_state_dict(child.state_dict())
            if child.affine:  # a frozen BatchNorm (the target's) stays frozen
                sync.weight.requires_grad_(child.weight.requires_grad)
                sync.bias.requires_grad_(child.bias.requires_grad)
            setattr(model, name, sync)
        else:
            sync_batchnorm(child, device)
    return model


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The DDP wrapper that averages gradients (parameters broadcast from rank 0 first)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def fingerprint(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def gather(value: T) -> list[T]:
    """Every rank's ``value``, in rank order (``[value]`` without a process group)."""
    if not dist.is_initialized():
        return [value]
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, value)
    return every


def from_rank0(make: Callable[[], T]) -> T:
    """``make()`` run on rank 0 alone, its result sent to every rank (pickled over the
    process group): what lives on node 0's disk reaches ranks whose nodes do not hold it. A
    ``ByolError`` it raises is raised on every rank. Without a process group: ``make()``."""
    if not dist.is_initialized():
        return make()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box = [(True, make())]
        except ByolError as exc:
            box = [(False, str(exc))]
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise ByolError(value)
    return value


# What gloo and NCCL say when a peer is gone: its process died (the socket closes), or it
# stopped answering until the process group's timeout (30 min for gloo, 10 for NCCL).
_PEER_LOST = ("gloo/transport", "Connection closed by peer", "Connection reset by peer", "Broken pipe",
              "Timed out", "timed out", "pair closure", "NCCL communicator was aborted")


def lost_peer(exc: BaseException) -> ByolError | None:
    """The error to report when ``exc`` is a collective failing because another rank is
    gone (None when it is something else)."""
    if not (isinstance(exc, dist.DistError) or any(mark in str(exc) for mark in _PEER_LOST)):
        return None
    return ByolError(f"pretrain: lost contact with another training process ({brief(exc, 160)}): a rank, its "
                     "launcher or its node stopped, or the network between nodes failed. Start `byol pretrain` "
                     "again on every node: training resumes from the last checkpoint (paths.resume on node 0).")


def check_in_step(module: nn.Module) -> str:
    """Every rank's hash of ``module``'s weights and buffers; they must all be equal."""
    every = gather(fingerprint(module))
    if len(set(every)) != 1:
        raise ByolError(f"pretrain: the {len(every)} ranks ended with different weights (hashes {every}); "
                        "this is a bug: please report it with your params.yaml.")
    return every[0]


if __name__ == "__main__":  # what `byol pretrain` runs as torchrun (see launch)
    sys.exit(torchrun(sys.argv[1:]))
