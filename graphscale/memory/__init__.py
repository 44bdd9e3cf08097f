"""Activation compression: ActNN (Chen et al., ICML 2021) / EXACT (Liu et al., ICLR 2022) storage of what
autograd saves, compressed layers and hooks, and memory accounting.

Modules: ``compression_options`` (accepted values, validators) -> ``random_streams`` (seeds, counter
hash, noise, seed masks) and ``bitpack`` (code packing) -> ``quantize`` (containers, quantize /
dequantize) -> ``compression_config`` (``CompressionConfig``) -> ``hooks`` -> ``compressed_layers`` ->
``functional`` (the rule for ``F.relu`` / ``F.dropout`` / ... calls in module forwards, and the recorder
behind ``find_uncompressed(model, example_inputs)``) -> ``compress`` (``compress_model``); ``accounting``
counts bytes.
"""
from graphscale.memory.accounting import (count_saved_bytes, peak_rss_subprocess, profiled_forward_bytes,
                                          report_ctx, state_bytes, tensor_bytes)
from graphscale.memory.compress import (PRESETS, UncompressedLayersError, compress_model, find_uncompressed,
                                        hook_compression, register_compressed)
from graphscale.memory.compression_config import CompressionConfig
from graphscale.memory.hooks import compressed_activations
from graphscale.memory.quantize import QuantizedTensor, dequantize, project_quantize, quantize

__all__ = ["count_saved_bytes", "peak_rss_subprocess", "profiled_forward_bytes", "report_ctx", "state_bytes",
           "tensor_bytes", "PRESETS", "UncompressedLayersError", "compress_model", "find_uncompressed",
           "hook_compression", "register_compressed", "CompressionConfig", "compressed_activations",
           "QuantizedTensor", "dequantize", "project_quantize", "quantize"]
