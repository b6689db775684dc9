"""Hardware-aware joint compression search: width, per-layer bits and per-layer sparsity."""
