from graphscale.memory.accounting import (count_saved_bytes, peak_rss_subprocess, profiled_forward_bytes,
                                          report_ctx, state_bytes, tensor_bytes)
