"""Deployment: ``fuse`` (BN folding), ``export`` (ONNX / OpenVINO / TorchScript, verified against PyTorch) and
``runtime`` (PyTorch eager / jit / compile, ONNX Runtime, OpenVINO with explicit threads and precision).
The ``leanvit export`` command lives in ``cli``."""
