"""Latency runners: measure exported models on real hardware so a latency predictor can be fitted to it.

`host` times ONNX files with onnxruntime on this machine's CPU; `adb` on an Android phone. Every runner returns
`Timing`s (defined in `host`) from `measure(models, reference)` and describes itself with `settings()`.
Nothing is imported here, so importing one runner never pulls in another runner's dependencies.
"""
