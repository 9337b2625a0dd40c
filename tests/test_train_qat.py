"""Quantisation-aware fine-tuning (``finetune.qat``) through the ordinary trainer.

Starts from the digits model of conftest ``digits_run`` (efficientvit_m0, 32 px): a few fake-quantised
steps, then the checkpoint is a float checkpoint for every deploy path (its fake-quant state is skipped)
and the fake-quant state survives a save / load.
"""
from __future__ import annotations

import pytest
import torch

import leanvit
from leanvit.models import create_model
from leanvit.models.checkpoint import QAT_STATE_PREFIX, read_qat_state, read_state_dict
from leanvit.deploy.images import load_image_folder, model_eval_transform
from leanvit.deploy.pt2e import converted_qat
from leanvit.train import ConfigError, Trainer, load_config
from leanvit.train.qat import FakeQuantModel
from leanvit.zoo import fuse_model

SIDE = 32  # conftest.DIGITS_SIDE


def _cfg(tmp_path, **extra):
    return load_config("quick", {"model.name": "efficientvit_m0", "model.img_size": SIDE, "data.path": "digits",
                                 "train.epochs": 1, "output": str(tmp_path / "qat"), "log.progress": False,
                                 "log.tensorboard": False, "optim.lr": 1e-4, "sched.warmup_epochs": 0, **extra})


def test_qat_config_refusals(tmp_path) -> None:
    with pytest.raises(ConfigError, match="finetune.checkpoint unset"):
        _cfg(tmp_path, **{"finetune.qat": "xnnpack"})
    with pytest.raises(ConfigError, match="ema.enable"):
        _cfg(tmp_path, **{"finetune.qat": "xnnpack", "finetune.checkpoint": "w.ckpt", "ema.enable": True})
    with pytest.raises(ConfigError, match="not valid"):
        _cfg(tmp_path, **{"finetune.qat": "int4"})
    untrained = leanvit.create_model("efficientvit_m0", num_classes=10, img_size=SIDE)
    with pytest.raises(ValueError, match="zero gamma"):
        FakeQuantModel(untrained, SIDE, "xnnpack")


@pytest.mark.slow
def test_qat_fine_tunes_and_deploys(digits_run, tmp_path) -> None:
    cfg = _cfg(tmp_path, **{"finetune.qat": "xnnpack", "finetune.checkpoint": str(digits_run["ckpt"]),
                            "train.max_steps": 6})
    trainer = Trainer(cfg)
    assert isinstance(trainer.model, FakeQuantModel)
    summary = trainer.fit()
    assert summary["best_top1"] > 80, summary  # the fake-quantised model still reads the digits

    state, _ = read_state_dict(tmp_path / "qat" / "last.ckpt")  # float loads skip the fake-quant state
    assert state and not any(k.startswith(QAT_STATE_PREFIX) for k in state)
    raw = torch.load(tmp_path / "qat" / "last.ckpt", weights_only=True)["model"]
    assert any(k.startswith(QAT_STATE_PREFIX) for k in raw)
    model = create_model("efficientvit_m0", img_size=SIDE, checkpoint=tmp_path / "qat" / "last.ckpt")
    assert model.num_classes == 10

    with pytest.raises(RuntimeError, match="does not fit"):
        trainer.model.load_state_dict({k: v for k, v in raw.items() if not k.startswith(QAT_STATE_PREFIX)})

    # the learned int8 graph (what `leanvit quantize --runtime executorch` lowers; lowering takes ~2 min, so
    # it runs in benchmarks/int8_protocol.py): the fake-quant state, loaded into a freshly prepared graph,
    # has to be right for this accuracy
    scheme, qat_state = read_qat_state(tmp_path / "qat" / "last.ckpt")
    assert scheme == "xnnpack"
    graph = converted_qat(model, SIDE, scheme, qat_state)
    assert sum("quantize_per" in str(n.target) for n in graph.graph.nodes) > 100  # conv-BN pairs in int8
    fused = fuse_model(model, target="executorch")
    images, labels, _ = load_image_folder(digits_run["val"], model_eval_transform(model, SIDE), labelled=True, limit=120)
    with torch.no_grad():
        int8, fp32 = graph(images), fused(images)
    assert float((int8.argmax(-1) == labels).float().mean()) > 0.8
    assert float((int8.argmax(-1) == fp32.argmax(-1)).float().mean()) >= 0.9
