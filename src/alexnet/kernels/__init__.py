"""Triton kernels for the layers torch computes slowly, and `ops`: each kernel as one torch operator
with its autograd formula and a CPU fallback (the reference in `alexnet.layers`).

* `response_norm`: cross-channel response normalisation, optionally fused with the ReLU before it.
* `max_pool`: overlapping max-pooling that keeps each window's argmax for the backward pass.
* `paper_update`: the paper's SGD update in one pass per parameter (`alexnet.optim.paper_update`).

`HAVE_TRITON` is False where Triton does not import; the operators then always run the reference.
"""

try:
    import triton  # noqa: F401
except ImportError:  # no Triton on this platform
    HAVE_TRITON = False
else:
    HAVE_TRITON = True

__all__ = ["HAVE_TRITON"]
