"""Deployment, one job per module, each importing only those before it: ``names`` (backends, precisions,
formats), ``options`` (:class:`~leanvit.deploy.options.ExportOptions`), ``capabilities`` (optional
packages, precisions the hardware has, threads), ``writers`` (ONNX / OpenVINO / TorchScript files),
``runtime`` (PyTorch eager / jit / compile, ONNX Runtime, OpenVINO with explicit threads and precision),
``verify`` (logits vs PyTorch, relative to their spread) and ``export`` (``export_model``: write, verify,
keep failures). BN folding is ``leanvit.fuse``; the ``leanvit export`` command lives in ``cli``."""
