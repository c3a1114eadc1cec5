"""Fused GPU kernels. Each has its reference in alexnet.layers.

`fused_response_norm(x, size, scale, beta, k, relu=False)` is the Triton response normalisation
(optionally fused with the ReLU before it), or None where Triton does not import.
"""

try:
    import triton  # noqa: F401
except ImportError:  # no Triton on this platform: callers use the reference
    fused_response_norm = None
else:
    from alexnet.kernels.response_norm import fused_response_norm

__all__ = ["fused_response_norm"]
