from graphscale.memory.accounting import (count_saved_bytes, peak_rss_subprocess, profiled_forward_bytes,
                                          report_ctx, state_bytes, tensor_bytes)
from graphscale.memory.compress import (PRESETS, UncompressedLayersError, compress_model, find_uncompressed,
                                        hook_compression, register_compressed)
from graphscale.memory.hooks import compressed_activations
from graphscale.memory.quantize import CompressionConfig, QuantizedTensor, dequantize, project_quantize, quantize
