"""Deployment, one job per module, each importing only those before it: ``routes`` (the route table: one
record per runtime with its backend / format / int8 names, fuse target, files, precisions, writer, runtime,
quantiser and the export options it takes), ``options`` (:class:`~leanvit.deploy.options.ExportOptions`,
:class:`~leanvit.deploy.options.QuantizeOptions`, the route check of the options), ``images`` (the
evaluation transform, image folders), ``capabilities`` (optional packages, precisions the hardware has,
threads, the signal-stack guard around OpenVINO), ``mobile`` (ExecuTorch and Core ML), ``writers`` (ONNX /
OpenVINO / TorchScript files, ``write_artifact``), ``pt2e`` (PyTorch int8: PT2E with the X86 inductor
quantizer, its safetensors artifact), ``runtime`` (PyTorch eager / jit / compile, ONNX Runtime, OpenVINO,
ExecuTorch with explicit threads and precision; ``build_runtime``, ``load_artifact``), ``quantize`` (int8 per
runtime, modules kept in float, the paired accuracy report), ``tuning`` (the keep-float search for a top-1
bound), ``verify`` (logits vs PyTorch, relative to their spread), and two siblings: ``int8``
(``quantize_model``: folders in, int8 artifacts and fp32 vs int8 top-1 out) and ``export`` (the one
exporter: ``export_model`` for classifiers, ``export_segmentor`` for segmentors; write, verify, keep
failures as ``PATH.failed``). BN folding is ``leanvit.fuse``; the ``leanvit export`` and ``leanvit quantize``
commands live in ``cli``."""
