"""The batching engine: jobs of rows, per-variant schedulers, runners on onnxruntime sessions."""
