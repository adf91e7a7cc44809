"""Triton kernels of the fused combine. Importing this package imports ``triton``.

Set ``TRITON_INTERPRET=1`` before ``triton`` is first imported to run them on CPU tensors.
"""

from .launch import DEFAULT_CONFIG, LaunchConfig, chunk_plan, combine_triton, launch_config

__all__ = ["DEFAULT_CONFIG", "LaunchConfig", "chunk_plan", "combine_triton", "launch_config"]
