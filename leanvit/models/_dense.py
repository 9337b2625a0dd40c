"""What a family's official dense (detection / segmentation) code changes in its backbone: family data that
``leanvit.dense.create_backbone`` reads, declared by each family as its ``dense_settings`` class attribute."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["DenseSettings"]


@dataclass(frozen=True)
class DenseSettings:
    """How the official dense code builds a family's backbone from its classifier.

    ``model_kwargs``: ``create_model`` keyword arguments for every variant; ``variant_kwargs``: per variant
    name, arguments that override them. ``fresh_parameters``: a regular expression matching the parameter
    names the dense settings add to the classifier; ImageNet checkpoints lack them and they start fresh, as in
    the official dense code (mmdet loads backbone weights non-strictly). ``unused_modules``: top-level modules
    of the classifier that feed no dense output; the backbone replaces them by ``nn.Identity`` and dense
    checkpoints drop their keys.
    """

    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    variant_kwargs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    fresh_parameters: str = ""
    unused_modules: tuple[str, ...] = ()

    def kwargs_for(self, name: str) -> dict[str, Any]:
        """The ``create_model`` keyword arguments of variant ``name``'s dense backbone."""
        return {**self.model_kwargs, **self.variant_kwargs.get(name, {})}

    def is_fresh(self, key: str) -> bool:
        """True for a parameter the dense settings add (absent from classification checkpoints)."""
        return bool(self.fresh_parameters) and re.search(self.fresh_parameters, key) is not None

    def is_unused(self, key: str) -> bool:
        """True for a state-dict key of a module the dense backbone does not use."""
        return key.split(".", 1)[0] in self.unused_modules
