"""Benchmarking: ``runner.benchmark`` (throughput / latency / memory / train runs of ``options.BenchOptions``),
``report`` (tables, result files, speed-accuracy plot), ``timing``, ``memory``, ``roofline`` (matmul peaks),
``env`` (machine description) and ``demo``. Model names are resolved and built by ``leanvit.zoo``, params / MACs
counted by ``leanvit.models.counting``. The ``leanvit bench`` / ``leanvit demo`` commands live in ``cli``."""
