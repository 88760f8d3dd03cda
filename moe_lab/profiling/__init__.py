"""What a forward (and backward) pass costs besides time: operators, host syncs, bytes, memory.

    audit_operators()   every aten operator a block of code calls, the ones that would stall a
                        GPU by reading a value back to the host, and the bytes of new tensors
    peak_rss_increase() the process's peak resident memory while a function runs (Linux)
    count_cuda_syncs()  host synchronizations on a GPU, by CUDA's sync debug mode
    count_full_size_slicing()  backward nodes that zero-fill a whole stacked weight's gradient
                        to return one expert's slice (per-expert indexing)

These are the deterministic quantities notebook 07 asserts on (operator counts, host syncs,
bytes), with timings shown beside them.

Taught in: notebooks/07_gpu_and_scaling.ipynb.
"""

from moe_lab.profiling.autograd import count_full_size_slicing
from moe_lab.profiling.cuda import count_cuda_syncs
from moe_lab.profiling.memory import peak_rss_increase
from moe_lab.profiling.operators import HOST_SYNC_OPS, OperatorAudit, audit_operators

__all__ = [
    "HOST_SYNC_OPS",
    "OperatorAudit",
    "audit_operators",
    "count_cuda_syncs",
    "count_full_size_slicing",
    "peak_rss_increase",
]
