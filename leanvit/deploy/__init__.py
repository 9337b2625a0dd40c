"""Deployment, one job per module, each importing only those before it: ``names`` (backends, precisions,
formats), ``options`` (:class:`~leanvit.deploy.options.ExportOptions`), ``capabilities`` (optional packages,
precisions the hardware has, threads, the signal-stack guard around OpenVINO), ``mobile`` (ExecuTorch and
Core ML), ``writers`` (ONNX / OpenVINO / TorchScript files), ``pt2e`` (PyTorch int8: PT2E with the X86
inductor quantizer, its safetensors artifact), ``runtime`` (PyTorch eager / jit / compile, ONNX Runtime,
OpenVINO, ExecuTorch with explicit threads and precision), ``quantize`` (int8 per runtime, modules kept in
float, the paired accuracy report), ``tuning`` (the keep-float search for a top-1 bound), ``verify`` (logits
vs PyTorch, relative to their spread), ``int8`` (``quantize_model``: folders in, int8 artifacts and fp32 vs
int8 top-1 out) and ``export`` (``export_model``: write, verify, keep failures). BN folding is
``leanvit.fuse``; the ``leanvit export`` and ``leanvit quantize`` commands live in ``cli``."""
