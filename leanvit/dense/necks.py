"""The detection neck of the papers: mmdet 2.x's FPN plus the transposed-conv levels of ``EfficientViTFPN``.

One module, :class:`DenseFPN`, reproduces both official necks (mmdet 2.x ``FPN``; ``EfficientViTFPN`` of
ysj9909/SHViT downstream/efficientvit_fpn.py):

- with ``num_extra_trans_convs=0`` it is mmdet's ``FPN`` (SepViT's configs: start level, extra stride-2
  convs ``on_input`` / ``on_lateral`` / ``on_output`` or max-pooled levels);
- with ``num_extra_trans_convs=k`` it is SHViT's / EfficientViT's ``EfficientViTFPN``: k stride-2 transposed
  convs grow finer levels out of the *merged* finest lateral (before its 3x3 conv), each smoothed by an
  ``extra_fpn_convs`` conv paired as the official code pairs them (with two, index 0 smooths the finest map).

Parameter names are mmdet's without mmcv's ``.conv`` level (``lateral_convs.i``, ``fpn_convs.i``,
``extra_trans_convs.j``, ``extra_fpn_convs.j``), so official checkpoints load by renaming.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from ..errors import InvalidValueError

__all__ = ["DenseFPN", "EXTRA_CONV_SOURCES", "fpn_preset"]

EXTRA_CONV_SOURCES = ("on_input", "on_lateral", "on_output")


class DenseFPN(nn.Module):
    """FPN with optional transposed-conv finer levels; ``forward`` returns ``OrderedDict`` ``{"0": finest, ...}``.

    ``in_channels`` / ``in_strides`` describe the backbone levels; ``num_outs`` outputs are made in all:
    ``num_extra_trans_convs`` finer ones, one per used input level, and the rest coarser (stride-2 convs when
    ``add_extra_convs`` names their source, else max-pooling). ``strides`` lists the output strides.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        num_outs: int = 5,
        *,
        in_strides: Sequence[int] | None = None,
        start_level: int = 0,
        add_extra_convs: bool | str = False,
        relu_before_extra_convs: bool = False,
        num_extra_trans_convs: int = 0,
    ) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        used = len(in_channels) - start_level
        if not 0 <= start_level < len(in_channels):
            raise InvalidValueError(f"start_level {start_level} must index one of the {len(in_channels)} input levels")
        n_coarser = num_outs - used - num_extra_trans_convs
        # Fewer outputs than levels drops the coarsest ones (their laterals still feed the top-down path).
        n_smoothed = min(used, num_outs - num_extra_trans_convs)
        if num_extra_trans_convs < 0 or n_smoothed < 1:
            raise InvalidValueError(
                f"num_outs={num_outs} leaves no input level beside {num_extra_trans_convs} transposed-conv levels; "
                "raise num_outs or use fewer transposed convs"
            )
        if add_extra_convs is True:
            add_extra_convs = "on_input"  # mmdet's meaning of True
        if add_extra_convs not in (False, *EXTRA_CONV_SOURCES):
            raise InvalidValueError(f"add_extra_convs must be False or one of {EXTRA_CONV_SOURCES}, got {add_extra_convs!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.start_level = start_level
        self.add_extra_convs = add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.num_extra_trans_convs = num_extra_trans_convs
        self.num_coarser = max(n_coarser, 0)

        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels[start_level:])
        fpn_convs = [nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(n_smoothed)]
        if add_extra_convs:
            for i in range(self.num_coarser):
                source = in_channels[-1] if i == 0 and add_extra_convs == "on_input" else out_channels
                fpn_convs.append(nn.Conv2d(source, out_channels, 3, stride=2, padding=1))
        self.fpn_convs = nn.ModuleList(fpn_convs)
        self.extra_trans_convs = nn.ModuleList(
            nn.ConvTranspose2d(out_channels, out_channels, 2, stride=2) for _ in range(num_extra_trans_convs))
        self.extra_fpn_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(num_extra_trans_convs))

        base = list(in_strides)[start_level] if in_strides is not None else None
        self.strides = None if base is None else [
            base * 2 ** k if k >= 0 else base // 2 ** -k for k in range(-num_extra_trans_convs, num_outs - num_extra_trans_convs)]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmdet's init: Xavier-uniform convs; the transposed convs keep mmcv ConvModule's Kaiming-normal (fan_out)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        """Backbone maps (finest first, a list or the backbone's dict) -> the pyramid, finest first."""
        inputs = list(feats.values()) if isinstance(feats, Mapping) else list(feats)
        if len(inputs) != len(self.in_channels):
            raise InvalidValueError(f"DenseFPN was built for {len(self.in_channels)} input levels, got {len(inputs)}")
        inputs_used = inputs[self.start_level:]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs_used)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")

        finer: list[torch.Tensor] = []
        x = laterals[0]
        for trans in self.extra_trans_convs:
            x = trans(x)
            finer.insert(0, x)  # finest first, and the official extra_fpn_convs pairing follows this order
        outs = [conv(t) for conv, t in zip(self.extra_fpn_convs, finer)]
        smoothed = len(self.fpn_convs) - (self.num_coarser if self.add_extra_convs else 0)
        outs += [self.fpn_convs[i](laterals[i]) for i in range(smoothed)]

        used = smoothed
        for i in range(self.num_coarser):
            if not self.add_extra_convs:
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
                continue
            if i == 0:
                source = {"on_input": inputs[-1], "on_lateral": laterals[-1], "on_output": outs[-1]}[self.add_extra_convs]
            else:
                source = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
            outs.append(self.fpn_convs[used + i](source))
        return OrderedDict((str(i), o) for i, o in enumerate(outs))


def fpn_preset(arch: str, in_channels: Sequence[int], in_strides: Sequence[int], out_channels: int = 256) -> DenseFPN:
    """The official neck of ``arch`` for a backbone with these levels (the detection configs' ``neck``).

    ``arch``: "retinanet" (strides 8-128), "mask_rcnn" / "faster_rcnn" (strides 4-64), "semantic_fpn" (4-32).
    Stride-16/32/64 backbones (SHViT, EfficientViT-M) get EfficientViTFPN's transposed-conv levels; stride-4
    backbones (SepViT) mmdet's FPN as in SepViT's configs.
    """
    in_strides = [int(s) for s in in_strides]
    finest = in_strides[0]
    if arch == "retinanet":
        if finest >= 16:
            trans = (finest // 8).bit_length() - 1
            return DenseFPN(in_channels, out_channels, 5, in_strides=in_strides, add_extra_convs="on_input",
                            num_extra_trans_convs=trans)
        start = in_strides.index(8) if 8 in in_strides else 0
        return DenseFPN(in_channels, out_channels, 5, in_strides=in_strides, start_level=start,
                        add_extra_convs="on_input")
    if arch in ("mask_rcnn", "faster_rcnn", "semantic_fpn"):
        trans = max((finest // 4).bit_length() - 1, 0)
        num_outs = 4 if arch == "semantic_fpn" else 5
        return DenseFPN(in_channels, out_channels, num_outs, in_strides=in_strides, num_extra_trans_convs=trans)
    raise InvalidValueError(f"unknown architecture {arch!r} for fpn_preset; choose retinanet, mask_rcnn, faster_rcnn, semantic_fpn")
