"""Large CPU buffers reused across calls once nothing holds them (the `sorted` backend's scratch).

Why: glibc serves every allocation above 32 MB with its own ``mmap`` and unmaps it on free, so
the next tensor of that size page-faults all of its memory in again; smaller blocks go back to
the operating system too whenever the free space at the top of the heap passes the trim
threshold (dynamic, from 128 KB), which a layer freeing several megabyte-sized temporaries at
once does every call. On this course's 2-core machine a fault-in costs about 20 ms per 67 MB,
more than the matrix products at small N. An MoE layer's weight gradients are E times a dense
layer's: at E=32, D=512, F=1024 each of the three is 67 MB, and a training loop that sets
``.grad = None`` every step (``zero_grad``'s default) would fault in 200 MB per backward.

The pool keeps the last buffer of each name and hands it out again only when nothing else
references its memory, checked through the storage's reference count: a gradient the optimizer
still holds, a tensor a reader kept (``old = w.grad``), activations saved for a backward that
has not run yet, all make the pool allocate a fresh buffer instead. So reuse is never visible
as aliasing; it only saves the page faults. Small tensors (malloc already reuses them) and
non-CPU devices (the CUDA caching allocator already does this) bypass the pool.

The memory a pool holds while idle is what ``zero_grad(set_to_none=False)`` would hold;
``BufferPool.clear()`` releases it.
"""

from __future__ import annotations

import math

import torch

MIN_POOLED_BYTES = 128 * 2**10  # glibc's default mmap and trim threshold; smaller stays in malloc


def _storage_references(tensor: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


# References a buffer's storage has when only the pool's tensor holds it: that tensor plus the
# Python storage object the query itself creates (measured, not assumed, once at import).
_UNSHARED_REFERENCES = _storage_references(torch.empty(1))


class BufferPool:
    """Named scratch buffers, reused when no other tensor references them.

    Example:
        >>> pool = BufferPool()
        >>> a = pool.empty("grad", (1024, 1024), torch.float32)
        >>> ptr = a.data_ptr(); del a
        >>> pool.empty("grad", (1024, 1024), torch.float32).data_ptr() == ptr
        True
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def empty(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """An uninitialized contiguous tensor of ``shape``: the pooled one if it is free."""
        device = torch.device(device)
        numel = math.prod(shape)
        if device.type != "cpu" or numel * dtype.itemsize < MIN_POOLED_BYTES:
            return torch.empty(shape, dtype=dtype, device=device)
        buffer = self._buffers.get(name)
        if (
            buffer is None
            or buffer.dtype != dtype
            or buffer.numel() < numel
            or _storage_references(buffer) > _UNSHARED_REFERENCES
        ):
            buffer = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)  # a new tensor over the pooled memory

    def clear(self) -> None:
        """Release every idle buffer (tensors handed out stay valid)."""
        self._buffers.clear()

    def nbytes(self) -> int:
        """Bytes the pool holds."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    # A pool is scratch space: copies and pickles of its owner start with an empty one.
    def __deepcopy__(self, memo) -> BufferPool:
        return BufferPool()

    def __getstate__(self) -> dict:
        return {"_buffers": {}}
