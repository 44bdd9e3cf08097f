"""Triton kernels for graphscale: plain launchers (tensors in, tensors out).

Depends on torch and triton only, never on graphscale. Autograd, fallbacks and dispatch live in
``graphscale.ops``. (The import name is not ``triton_kernels``: that belongs to a triton-lang package.)
"""
