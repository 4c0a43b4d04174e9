"""Triton kernels of the engine's hot path (imported lazily, only on CUDA; needs ``triton``).

- :mod:`.bitmask`: applies a grammar's packed vocab bitmask to the logits in place.

NOTE: ``@triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is defined, so set it before the
first import of these modules to run them on CPU tensors in Triton's interpreter (tests do).
"""
