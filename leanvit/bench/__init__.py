"""Benchmarking: ``runner.benchmark`` (throughput / latency / memory / train), ``report`` (tables, files,
speed-accuracy plot), ``flops`` (params / MACs), ``models`` (name resolution, building, fusing),
``timing``, ``memory`` and ``env`` helpers. The ``leanvit bench`` / ``leanvit demo`` commands live in ``cli``."""
