"""Count the aten operators a block of code calls, and the ones that synchronize with a GPU.

A GPU runs operators asynchronously: Python queues kernels and moves on, as long as it never
needs a value *computed* on the device. An operator whose result the host must read (a
``.item()``, a ``bool()`` of a tensor, ``nonzero`` and boolean indexing whose output size
depends on the data, ``tolist``) makes Python wait until everything queued before it has run:
a host synchronization, which empties the GPU's queue and exposes every kernel launch's latency.

``audit_operators`` records each operator through a ``TorchDispatchMode``, so it works on any
device: on the CPU it finds, structurally, the operators that *would* synchronize on CUDA (the
list below follows PyTorch's CUDA implementations), and counts the bytes of every new tensor.
``torch.cuda.set_sync_debug_mode`` is the ground truth on a GPU (tests/test_gpu.py uses it).

Taught in: notebooks/07_gpu_and_scaling.ipynb.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Operators whose CUDA implementation reads a device value on the host.
HOST_SYNC_OPS = {
    "aten._local_scalar_dense": "item(), bool(), int() or float() of a tensor",
    "aten.nonzero": "nonzero: the output size depends on the data",
    "aten.masked_select": "masked_select: the output size depends on the data",
    "aten.bincount": "bincount: sizes its output by reading the largest input",
    "aten._unique2": "unique: the output size depends on the data",
    "aten.unique_consecutive": "unique_consecutive: the output size depends on the data",
    "aten.unique_dim": "unique: the output size depends on the data",
    "aten.repeat_interleave": "repeat_interleave with tensor repeats reads their sum",
    "aten.equal": "equal: returns a Python bool",
    "aten.lift_fresh": "a tensor built from host data (torch.tensor): a host-to-device copy",
}
BOOLEAN_INDEXING_OPS = ("aten.index", "aten.index_put", "aten.index_put_")


@dataclass
class OperatorAudit:
    """What ``audit_operators`` saw.

    Attributes:
        counts: calls per aten operator (``"aten.mm"``: 12).
        host_syncs: calls per reason that would synchronize with a GPU.
        allocated_bytes: bytes of the new tensors the operators created (outputs that do not
            share memory with an input: views and in-place results are not new).
        largest_allocation: the largest of those tensors, in bytes.
    """

    counts: Counter = field(default_factory=Counter)
    host_syncs: Counter = field(default_factory=Counter)
    allocated_bytes: int = 0
    largest_allocation: int = 0

    @property
    def total(self) -> int:
        """Operator calls in all."""
        return sum(self.counts.values())

    @property
    def n_host_syncs(self) -> int:
        return sum(self.host_syncs.values())

    def summary(self) -> str:
        syncs = ", ".join(f"{n} x {why}" for why, n in self.host_syncs.items()) or "none"
        return (
            f"{self.total} operator calls, {self.allocated_bytes / 2**20:.2f} MiB allocated"
            f" (largest {self.largest_allocation / 2**20:.2f} MiB), host syncs: {syncs}"
        )


def _op_name(func) -> str:
    return str(func.overloadpacket)  # "aten.mm"


class _AuditMode(TorchDispatchMode):
    def __init__(self, audit: OperatorAudit) -> None:
        super().__init__()
        self.audit = audit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _op_name(func)
        self.audit.counts[name] += 1
        inputs, _ = tree_flatten((args, kwargs))
        if name in HOST_SYNC_OPS and (name != "aten.repeat_interleave" or _has_tensor(args[:1])):
            self.audit.host_syncs[HOST_SYNC_OPS[name]] += 1
        elif name in BOOLEAN_INDEXING_OPS and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in _index_args(args)
        ):
            self.audit.host_syncs["boolean-mask indexing (a nonzero inside)"] += 1
        out = func(*args, **kwargs)
        seen = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in seen and storage.nbytes() > 0:
                    seen.add(storage.data_ptr())
                    self.audit.allocated_bytes += storage.nbytes()
                    self.audit.largest_allocation = max(
                        self.audit.largest_allocation, storage.nbytes()
                    )
        return out


def _has_tensor(values) -> bool:
    return any(isinstance(v, torch.Tensor) for v in values)


def _index_args(args) -> list:
    """The index tensors of aten.index / aten.index_put (second argument, a list)."""
    return [t for t in (args[1] if len(args) > 1 else []) if t is not None]


@contextmanager
def audit_operators() -> Iterator[OperatorAudit]:
    """Record every aten operator called inside the block.

    ``Tensor.tolist()`` reads memory directly on the CPU without an operator call, so it is
    counted by wrapping the method for the duration of the block.

    Example:
        >>> with audit_operators() as audit:
        ...     x = torch.arange(6.0)
        ...     n = int((x > 2).sum())
        >>> audit.n_host_syncs
        1
    """
    audit = OperatorAudit()
    original_tolist = torch.Tensor.tolist

    def counted_tolist(tensor):
        audit.counts["Tensor.tolist"] += 1
        audit.host_syncs["tolist(): copies the tensor to the host"] += 1
        return original_tolist(tensor)

    torch.Tensor.tolist = counted_tolist
    try:
        with _AuditMode(audit):
            yield audit
    finally:
        torch.Tensor.tolist = original_tolist
