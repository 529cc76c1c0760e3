"""Device and precision choice: one code path for CPU and GPU."""

from __future__ import annotations

import contextlib

import torch

from byol_core.errors import ByolError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an explicit ``cuda`` must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ByolError(f"device: {name!r} asked for, but no CUDA GPU is visible. Set device: auto or cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ByolError(f"device: {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible "
                        f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1}).")
    return device


def autocast(device: torch.device, precision: str, cache: bool = True):
    """bf16 autocast for ``bf16``, and for ``auto`` on CUDA; plain fp32 otherwise.
    ``cache=False`` inside a CUDA graph's capture, as torch's CUDA-graph notes ask."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (the fast layout for convolutions there). On CPU plain NCHW:
    torch 2.14's CPU backward of a channels_last 1x1 stride-2 convolution (8 -> 16
    channels, inputs of 56 px and up) corrupts memory, and it gains little at this size."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def exact_kernels(device: torch.device) -> None:
    """On CUDA, cuDNN's deterministic kernels, chosen by its fixed heuristics rather than by
    timing them (``benchmark``): the same inputs give the same bits in every process, so a
    run resumed after a kill -9 ends with exactly the weights of one that never stopped.
    (CPU kernels are deterministic already.)"""
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = _EXACT_CUDNN["deterministic"]
        torch.backends.cudnn.benchmark = _EXACT_CUDNN["benchmark"]


_EXACT_CUDNN = {"deterministic": True, "benchmark": False}


def exact_cudnn():
    """:func:`exact_kernels`' settings for the ``with`` block only (a benchmark that times
    our step beside others run under torch's defaults)."""
    return torch.backends.cudnn.flags(enabled=True, **_EXACT_CUDNN)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (for honest wall-clock timings); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> int:
    """Bytes free for new allocations: free GPU memory on CUDA, available RAM on CPU
    (0 when unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
