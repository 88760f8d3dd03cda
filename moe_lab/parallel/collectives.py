"""The two collectives expert parallelism differentiates through, and what they cost.

``all_to_all``: rank r splits its rows into W chunks and sends chunk s to rank s, receiving
one chunk from every rank (``torch.distributed.all_to_all_single`` with variable split sizes).
As a function of all ranks' inputs it is a permutation of rows, so its adjoint is the inverse
permutation: the backward sends each gradient row back where its row came from, the same
all-to-all with the send and receive sizes swapped.

``all_reduce_sum``: every rank gets the sum of all ranks' tensors. Each rank's input appears in
every rank's output, so the gradient of a rank's input is the sum over ranks of the output
gradients: the backward is the same all-reduce.

Both record, in an ``ExchangeLog``, the bytes this rank sent to the *other* ranks (the chunk a
rank addresses to itself is copied in memory and never leaves the process) and, when asked,
the seconds spent in each call, including the wait for the slowest rank.

Taught in: notebooks/07_gpu_and_scaling.ipynb.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

PAYLOAD = ("dispatch", "combine")


@dataclass
class ExchangeLog:
    """What one rank's expert-parallel layer sent to other ranks in one forward (and backward).

    Attributes:
        bytes: exchange name -> bytes this rank sent to the other ranks. ``"counts"``: the
            per-expert counts sent before a dropless exchange; ``"dispatch"``: token rows to the
            experts' ranks; ``"combine"``: expert outputs back; ``"dispatch.backward"`` and
            ``"combine.backward"``: the gradients of those two, added when backward runs.
        seconds: the same names (and ``"experts"``, the local expert computation) -> wall
            seconds, recorded only when the layer was built with ``time_exchanges=True``.
    """

    bytes: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def record(self, name: str, nbytes: int, seconds: float | None = None) -> None:
        """Add an exchange's bytes (and seconds, when timed)."""
        self.bytes[name] = self.bytes.get(name, 0) + nbytes
        self.time(name, seconds)

    def time(self, name: str, seconds: float | None) -> None:
        """Add seconds to ``name`` (nothing when None: the layer is not timed)."""
        if seconds is not None:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def payload_bytes(self, backward: bool = False) -> int:
        """Token rows sent (dispatch + combine), with their backward when ``backward``."""
        names = [*PAYLOAD, *(f"{n}.backward" for n in PAYLOAD)] if backward else PAYLOAD
        return sum(self.bytes.get(name, 0) for name in names)


class Stopwatch:
    """Times a region, waiting for the device first on CUDA; does nothing when disabled."""

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.enabled, self.device = enabled, device
        self.seconds: float | None = None

    def __enter__(self) -> Stopwatch:
        if self.enabled:
            self._sync()
            self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._sync()
            self.seconds = time.perf_counter() - self._start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _exchange(
    rows: torch.Tensor,
    send_splits: list[int],
    recv_splits: list[int],
    group: dist.ProcessGroup | None,
    log: ExchangeLog,
    name: str,
    timed: bool,
) -> torch.Tensor:
    """One all_to_all_single over dim 0, recorded in ``log``."""
    rows = rows.contiguous()
    received = rows.new_empty((sum(recv_splits), *rows.shape[1:]))
    with Stopwatch(timed, rows.device) as watch:
        dist.all_to_all_single(received, rows, recv_splits, send_splits, group=group)
    row_bytes = rows.shape[1:].numel() * rows.element_size()  # one row (or one count)
    rank = dist.get_rank(group)
    log.record(name, (sum(send_splits) - send_splits[rank]) * row_bytes, watch.seconds)
    return received


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, send_splits, recv_splits, group, log, name, timed):
        ctx.splits = (send_splits, recv_splits)
        ctx.group, ctx.log, ctx.name, ctx.timed = group, log, name, timed
        return _exchange(rows, send_splits, recv_splits, group, log, name, timed)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_received):
        send_splits, recv_splits = ctx.splits
        grad_rows = _exchange(  # the reverse all-to-all: sizes swapped
            grad_received, recv_splits, send_splits, ctx.group, ctx.log, f"{ctx.name}.backward",
            ctx.timed,
        )  # fmt: skip
        return grad_rows, None, None, None, None, None, None


def all_to_all(
    rows: torch.Tensor,
    send_splits: list[int],
    recv_splits: list[int],
    group: dist.ProcessGroup | None,
    log: ExchangeLog,
    name: str,
    timed: bool = False,
) -> torch.Tensor:
    """Send ``rows[offsets[s]:offsets[s+1]]`` to rank s; receive ``recv_splits[s]`` rows from s.

    Differentiable: the backward is the reverse all-to-all (recorded as ``name + ".backward"``).

    Shape: rows (sum(send_splits), ...) -> (sum(recv_splits), ...)
    """
    return _AllToAll.apply(rows, send_splits, recv_splits, group, log, name, timed)


def exchange_counts(
    counts: torch.Tensor, group: dist.ProcessGroup | None, log: ExchangeLog, timed: bool = False
) -> torch.Tensor:
    """Equal-sized all-to-all of integer counts (not differentiable).

    Shape: counts (W * c,) -> (W * c,): block s of the result is what rank s sent here.
    """
    world_size = dist.get_world_size(group)
    splits = [counts.numel() // world_size] * world_size
    return _exchange(counts, splits, splits, group, log, "counts", timed)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        grad = grad_total.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks of ``group``, on every rank; differentiable."""
    return _AllReduceSum.apply(tensor, group)
