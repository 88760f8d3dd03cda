"""Full-size gradient buffers that indexing one expert's weights costs in backward.

Indexing a slice of a stacked weight, ``w[e]`` for ``w`` of shape (E, D, F), records a backward
node (``SelectBackward0`` and its kin) whose backward allocates a zero-filled gradient of the
*whole* (E, D, F) tensor and writes the slice's gradient into it (``select_backward``,
``slice_backward`` ... in torch/csrc/autograd/FunctionsManual.cpp). A per-expert loop that indexes
each of E experts' three matrices therefore allocates 3·E full-size tensors per backward, E times
the memory traffic the expert gradients need; ``unbind`` or one batched product avoids it.

    count_full_size_slicing(output, shapes)   such nodes in ``output``'s autograd graph

Taught in: notebooks/07_gpu_and_scaling.ipynb (section 3); graded in the grill's
per-expert-indexing bug.
"""

from __future__ import annotations

import torch

# Backward nodes that materialize a zero-filled gradient the size of the tensor they index, then
# write one slice into it. The first four save the indexed tensor's sizes, the last two the
# tensor itself.
ZERO_FILLING_NODES = frozenset(
    {
        "SelectBackward0",
        "SliceBackward0",
        "IndexBackward0",
        "IndexSelectBackward0",
        "GatherBackward0",
        "TakeBackward0",
    }
)


def _indexed_shape(node) -> tuple[int, ...] | None:
    """The shape of the tensor a zero-filling backward node indexed."""
    sizes = getattr(node, "_saved_self_sym_sizes", None)
    if sizes is not None:
        return tuple(int(size) for size in sizes)
    saved = getattr(node, "_saved_self", None)
    return tuple(saved.shape) if saved is not None else None


def count_full_size_slicing(output: torch.Tensor, shapes: set[tuple[int, ...]]) -> int:
    """Backward nodes in ``output``'s graph that zero-fill a gradient of one of ``shapes``.

    Args:
        output: a tensor with a ``grad_fn`` (the graph is walked, not run).
        shapes: the shapes that count as "full size" (e.g. the stacked expert weights' shapes);
            a slice of any other tensor is not counted, even one with as many elements.

    Returns:
        How many such nodes the graph holds: each allocates a full-size tensor in backward to
        return one slice's gradient.
    """
    count, seen = 0, set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__ in ZERO_FILLING_NODES and _indexed_shape(node) in shapes:
            count += 1
        stack.extend(next_node for next_node, _ in node.next_functions)
    return count
