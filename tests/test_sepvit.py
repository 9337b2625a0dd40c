"""SepViT: exact sizes, a slow reference of the block, checkpoints in the official layout, any-size
inference, training, export. Behaviour tests use sepvit_lite; the big variants only count."""
from __future__ import annotations

import io
import math
import warnings

import onnxruntime
import pytest
import torch
from torch.nn import functional as F
from torch.utils import flop_counter

import leanvit
from leanvit.layers import select_out_channels
from leanvit.models.sepvit import (
    SeparableAttention, SepViTBlock, adapt_window_tokens, looks_like_official_sepvit, sepvit_leanvit_to_official,
    sepvit_official_to_leanvit,
)
from leanvit.models.signal import signal_images, signal_weights_
from conftest import assert_logits_close

# name: (params, GMACs at 224) of liwei109/SepViT classification/sepvit.py (fvcore MACs).
TARGETS = {
    "sepvit_lite": (3_661_128, 0.57),
    "sepvit_t": (31_182_856, 4.52),
    "sepvit_s": (46_570_504, 7.46),
    "sepvit_b": (82_377_064, 13.05),
}
MODES = ("per_window", "shared", "zero")


def macs_at_224(model: torch.nn.Module) -> float:
    """fvcore-convention MACs (FLOPs / 2, batch 1). CPU SDPA runs as
    ``_scaled_dot_product_flash_attention_for_cpu``, which torch's counter does not know: count it here."""
    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu:
               lambda q, k, v, *a, out_shape=None, **kw: flop_counter.sdpa_flop_count(q, k, v)}
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=mapping)
    device = next(model.parameters()).device
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, 3, 224, 224, device=device))
    return counter.get_total_flops() / 2


@pytest.fixture(scope="module")
def lite() -> torch.nn.Module:
    return signal_weights_(leanvit.create_model("sepvit_lite")).eval()


# ------------------------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("name", list(TARGETS))
def test_params_and_macs_match_the_official_model(name: str) -> None:
    params, gmacs = TARGETS[name]
    with torch.device("meta"):  # shapes only: no weight init, no arithmetic (same ops as on CPU)
        model = leanvit.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    cfg = leanvit.get_config(name)
    assert cfg.params == params and cfg.family == "sepvit" and cfg.img_size == 224
    measured = macs_at_224(model) / 1e9
    assert measured == pytest.approx(gmacs, rel=0.01)


def test_count_macs_counts_cpu_attention() -> None:
    # leanvit.count_macs must see the SDPA calls (about 5% of SepViT-T's MACs).
    model = leanvit.create_model("sepvit_lite")
    assert leanvit.count_macs(model, 224) == pytest.approx(macs_at_224(model), rel=1e-6), (
        "count_macs misses aten._scaled_dot_product_flash_attention_for_cpu: register it with "
        "torch.utils.flop_counter (same formula as aten._scaled_dot_product_flash_attention)"
    )


@pytest.mark.parametrize("pointwise", [True, False])
def test_heads_of_their_own_qk_widths(pointwise: bool) -> None:
    # Per-head Q/K widths (what leanvit.analysis.taylor.prune_channels sets): removing Q/K channels whose q rows
    # are zero leaves every logit as it was (the scale stays head_dim ** -0.5), in the eager and the mobile form.
    torch.manual_seed(0)
    attn = SeparableAttention(32, 2, pointwise=pointwise).eval()
    kept = [torch.tensor([0, 3, 5, 9]), torch.arange(1, 16, 2)]
    C, d = 32, 16
    with torch.no_grad():
        for head, keep in enumerate(kept):
            dropped = torch.ones(d, dtype=torch.bool)
            dropped[keep] = False
            rows = head * d + dropped.nonzero().flatten()
            attn.qkv.weight[rows] = 0
            attn.qkv.bias[rows] = 0
    q_rows = torch.cat([head * d + keep for head, keep in enumerate(kept)])
    narrow = SeparableAttention(32, 2, pointwise=pointwise).eval()
    narrow.load_state_dict(attn.state_dict())
    narrow.qkv = select_out_channels(attn.qkv, torch.cat([q_rows, C + q_rows, torch.arange(2 * C, 3 * C)]))
    narrow.qk_dims = [len(keep) for keep in kept]
    if pointwise:  # 2 x 2 windows of 2 x 2 pixels, each with its token first
        seq, grid = torch.randn(2, 4, 5, C), (2, 2, 2, 4, 4)
    else:
        seq, grid = torch.randn(2, 1, 9, C), None
    with torch.no_grad():
        reference = attn(seq, grid)
        torch.testing.assert_close(narrow(seq, grid), reference, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(narrow.deploy_form("executorch")(seq, grid), reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(attn.deploy_form("executorch")(seq, grid), reference, atol=1e-5, rtol=1e-5)


def test_blocks_with_one_window_are_plain_attention() -> None:
    model = leanvit.create_model("sepvit_lite")
    # ws per block: [7] / [7, 14] / [7, 14] x 3 / [7, 7]; maps 56 / 28 / 14 / 7 at 224.
    grids = [[b.token_grid for b in s.blocks] for s in model.stages]
    assert grids == [[(8, 8)], [(4, 4), (2, 2)], [(2, 2), None] * 3, [None, None]]
    for stage in model.stages:
        for block in stage.blocks:
            has = block.token_grid is not None
            assert block.pointwise == has and hasattr(block.attn, "pw_qk") == has
            assert (block.window_token is not None) == has
    # The parameters do not depend on img_size; a larger pointwise_ref_size adds pointwise attention
    # to every block, as the official dense backbones have.
    big = leanvit.create_model("sepvit_lite", img_size=448)
    pointwise = lambda m: [[b.pointwise for b in s.blocks] for s in m.stages]  # noqa: E731
    assert pointwise(big) == pointwise(model)
    dense = leanvit.create_model("sepvit_lite", window_token="zero", pointwise_ref_size=448)
    assert all(b.pointwise for s in dense.stages for b in s.blocks)


# ------------------------------------------------------------------------------------------- reference
def _reference_block(block: SepViTBlock, x: torch.Tensor) -> torch.Tensor:
    """SepViT block from the paper's equations plus the official inner residuals, one window at a time."""
    B, H, W, C = x.shape
    ws, heads = block.window_size, block.attn.num_heads
    d = C // heads
    a = block.attn
    ln1 = lambda t: F.layer_norm(t, (C,), block.norm1.weight, block.norm1.bias, block.norm1.eps)  # noqa: E731
    res = 1.0 if a.inner_residuals else 0.0

    def mhsa(z: torch.Tensor) -> torch.Tensor:  # (L, C) -> (L, C), softmax written out
        qkv = z @ a.qkv.weight.T + a.qkv.bias
        out = torch.empty_like(z)
        for h in range(heads):
            q, k, v = (qkv[:, i * C + h * d: i * C + (h + 1) * d] for i in range(3))
            out[:, h * d:(h + 1) * d] = torch.softmax(q @ k.T / math.sqrt(d), dim=-1) @ v
        return out + res * z

    nh, nw = math.ceil(H / ws), math.ceil(W / ws)
    outs = []
    for b in range(B):
        if not block.pointwise or nh * nw == 1:
            z = ln1(x[b].reshape(H * W, C))
            y = mhsa(z).reshape(H, W, C)
        else:
            xp = torch.zeros(nh * ws, nw * ws, C)
            xp[:H, :W] = x[b]
            feats, toks = [], []
            for i in range(nh):
                for j in range(nw):
                    if block.window_token_mode == "zero":
                        tok = torch.zeros(C)
                    elif block.window_token_mode == "shared":
                        tok = block.window_token[0, 0, 0]
                    else:
                        tok = block.window_token[0, i * nw + j, 0]
                    win = xp[i * ws:(i + 1) * ws, j * ws:(j + 1) * ws].reshape(ws * ws, C)
                    z = mhsa(ln1(torch.cat([tok[None], win])))
                    toks.append(z[0])
                    feats.append(z[1:])
            wt = F.gelu(F.layer_norm(torch.stack(toks), (C,), a.token_norm.weight, a.token_norm.bias,
                                     a.token_norm.eps))
            qk = wt @ a.pw_qk.weight.T + a.pw_qk.bias
            n = nh * nw
            mixed = [res * f.clone() for f in feats]
            for h in range(heads):
                sl = slice(h * d, (h + 1) * d)
                attn = torch.softmax(qk[:, sl] @ qk[:, C:][:, sl].T / math.sqrt(d), dim=-1)
                for p in range(n):
                    for m in range(n):
                        mixed[p][:, sl] += attn[p, m] * feats[m][:, sl]
            y = torch.zeros(nh * ws, nw * ws, C)
            for i in range(nh):
                for j in range(nw):
                    y[i * ws:(i + 1) * ws, j * ws:(j + 1) * ws] = mixed[i * nw + j].reshape(ws, ws, C)
            y = y[:H, :W]
        y = y @ a.proj.weight.T + a.proj.bias
        x1 = x[b] + y
        h1 = F.gelu(F.layer_norm(x1, (C,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
                    @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
        outs.append(x1 + h1 @ block.mlp.fc2.weight.T + block.mlp.fc2.bias)
    return torch.stack(outs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("hw", [(14, 14), (10, 13), (7, 7)], ids=["windows", "padded", "one-window"])
@pytest.mark.parametrize("inner", [True, False], ids=["inner-res", "paper"])
def test_block_matches_slow_reference(mode: str, hw: tuple[int, int], inner: bool) -> None:
    torch.manual_seed(0)
    grid = (math.ceil(hw[0] / 7), math.ceil(hw[1] / 7))  # per_window tokens exist only for several windows
    block = SepViTBlock(64, 2, 7, True, grid if grid != (1, 1) else None, mode, inner_residuals=inner)
    block = signal_weights_(block, seed=3).eval()
    x = torch.randn(2, *hw, 64)
    with torch.no_grad():
        assert_logits_close(_reference_block(block, x), block(x), rel=1e-5)


def test_block_without_pointwise_attention_is_global_at_any_size() -> None:
    block = signal_weights_(SepViTBlock(64, 2, 14, False, window_token="zero"), seed=4).eval()
    x = torch.randn(2, 20, 17, 64)
    with torch.no_grad():
        assert_logits_close(_reference_block(block, x), block(x), rel=1e-5)


# ------------------------------------------------------------------------------------------- checkpoints
def _expected_official_keys(dims: tuple[int, ...], depths: tuple[int, ...]) -> set[str]:
    """Official key names written independently from liwei109/SepViT classification/sepvit.py (1000 classes, 224)."""
    keys = set()
    maps = [56, 28, 14, 7]
    for i in range(4):
        keys |= {f"patch_embeds.{i}.{m}.{p}" for m in ("proj", "norm") for p in ("weight", "bias")}
        keys |= {f"pos_block.{i}.proj.0.weight", f"pos_block.{i}.proj.0.bias"}
        for j in range(depths[i]):
            ws = 14 if i in (1, 2) and j % 2 else 7
            pre = f"blocks.{i}.{j}."
            mods = ["norm1", "norm2", "attn.DSA_qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
            if (maps[i] // ws) ** 2 > 1:
                mods += ["attn.win_tokens_norm", "attn.PSA_qk"]
                keys.add(pre + "win_tokens")
            keys |= {pre + m + "." + p for m in mods for p in ("weight", "bias")}
    return keys | {"norm.weight", "norm.bias", "head.weight", "head.bias"}


def test_official_layout_round_trip_and_logits(lite: torch.nn.Module, tmp_path) -> None:
    sd = lite.state_dict()
    official = sepvit_leanvit_to_official(sd)
    assert set(official) == _expected_official_keys((32, 64, 128, 256), (1, 2, 6, 2))
    assert official["blocks.0.0.win_tokens"].shape == (1, 64, 1, 32)
    assert official["blocks.2.0.attn.PSA_qk.weight"].shape == (256, 128)
    assert looks_like_official_sepvit(official) and not looks_like_official_sepvit(sd)
    back = sepvit_official_to_leanvit(official)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)

    saved = leanvit.save_checkpoint(lite, tmp_path / "saved.pth", layout="official")
    assert set(torch.load(saved, weights_only=True)["model"]) == set(official)

    path = tmp_path / "SepViT_Lite.pth"
    torch.save({"model": official, "epoch": 3}, path)  # what the official training script writes
    fresh = leanvit.create_model("sepvit_lite").eval()
    report = leanvit.load_checkpoint(fresh, path)
    assert report["layout"] == "official"
    x = signal_images(2, 224, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), lite(x), atol=0, rtol=0)


def test_official_dense_backbone_layout_loads() -> None:
    # The official dense backbone: PSA_qk in every block, no token parameters, extra norms norm_list.*,
    # an unused 1000-class head. It fits a zero-token model with pointwise attention everywhere.
    src = signal_weights_(leanvit.create_model("sepvit_lite", window_token="zero", pointwise_ref_size=448,
                                         feature_norms=True))
    official = sepvit_leanvit_to_official(src.state_dict())
    blocks = {k.rsplit(".attn.", 1)[0] for k in official if ".attn.DSA_qkv.weight" in k}
    assert len(blocks) == 11 and all(f"{b}.attn.PSA_qk.weight" in official for b in blocks)
    assert not any(k.endswith("win_tokens") for k in official)
    assert {f"norm_list.{i}.weight" for i in range(4)} <= set(official)
    dst = leanvit.create_model("sepvit_lite", window_token="zero", pointwise_ref_size=448, feature_norms=True,
                               num_classes=0)
    leanvit.load_checkpoint(dst, official)
    x = signal_images(2, (128, 96), seed=2)
    with torch.no_grad():
        for a, b in zip(dst.forward_intermediates(x, intermediates_only=True),
                        src.forward_intermediates(x, intermediates_only=True)):
            assert_logits_close(b, a, rel=1e-5)


def test_official_layout_epsilons(lite: torch.nn.Module) -> None:
    blk = lite.stages[0].blocks[0]
    assert blk.norm1.eps == blk.norm2.eps == lite.norm.eps == 1e-6
    assert blk.attn.token_norm.eps == lite.patch_embed.norm.eps == lite.stages[1].downsample.norm.eps == 1e-5


def test_zero_and_shared_checkpoints_load_exactly_into_per_window(lite: torch.nn.Module) -> None:
    x = signal_images(2, 224, seed=3)
    for mode in ("zero", "shared"):
        src = signal_weights_(leanvit.create_model("sepvit_lite", window_token=mode), seed=5).eval()
        dst = leanvit.create_model("sepvit_lite").eval()
        leanvit.load_checkpoint(dst, sepvit_leanvit_to_official(src.state_dict()))
        with torch.no_grad():
            assert_logits_close(src(x), dst(x), rel=1e-5)


def test_per_window_tokens_resized_averaged_or_dropped(lite: torch.nn.Module) -> None:
    sd = lite.state_dict()
    key = "stages.0.blocks.0.window_token"
    # Tokens with a known layout: window w = row * 8 + column of the 8x8 grid, channel c holds 100 c + 10 row + col.
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    grids = 100 * torch.arange(32.0)[:, None, None] + 10 * rows + cols  # (channel, row, col)
    sd[key] = grids.flatten(1).T.reshape(1, 64, 1, 32)
    big = leanvit.create_model("sepvit_lite", img_size=256)  # 64x64 map: 10x10 windows of 7
    with pytest.warns(UserWarning, match="token grid 8x8 -> 10x10"):
        leanvit.load_checkpoint(big, sd)
    got = big.state_dict()[key]
    assert got.shape == (1, 100, 1, 32)
    # Each channel's grid resized on its own (bicubic, as the checkpoint's 8x8 -> the model's 10x10), windows
    # row-major: a transposed or channel-mixing reshape fails this.
    want = torch.nn.functional.interpolate(grids[None], size=(10, 10), mode="bicubic", align_corners=False)[0]
    torch.testing.assert_close(got[0, :, 0].T.reshape(32, 10, 10), want)

    shared = leanvit.create_model("sepvit_lite", window_token="shared")
    with pytest.warns(UserWarning, match="averaged"):
        leanvit.load_checkpoint(shared, sd)
    torch.testing.assert_close(shared.state_dict()[key], sd[key].mean(1, keepdim=True))

    zero = leanvit.create_model("sepvit_lite", window_token="zero")
    with pytest.warns(UserWarning, match="dropped"):
        leanvit.load_checkpoint(zero, sd)
    assert not any("window_token" in k for k in zero.state_dict())


def test_adapter_is_a_pure_key_function() -> None:
    model = leanvit.create_model("sepvit_lite")
    sd = {"stages.0.blocks.0.window_token": torch.ones(1, 1, 1, 32)}
    out = adapt_window_tokens(dict(sd), model)
    assert torch.equal(out["stages.0.blocks.0.window_token"], torch.ones(1, 64, 1, 32))
    assert torch.equal(out["stages.1.blocks.1.window_token"], torch.zeros(1, 4, 1, 64))  # absent -> zeros


# ------------------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("mode", MODES)
def test_forward_at_224(mode: str) -> None:
    model = leanvit.create_model("sepvit_lite", window_token=mode, num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["shared", "zero"])
@pytest.mark.parametrize("hw", [(256, 256), (320, 240), (511, 383)])
def test_any_input_size(mode: str, hw: tuple[int, int]) -> None:
    model = signal_weights_(leanvit.create_model("sepvit_lite", window_token=mode, num_classes=10)).eval()
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_intermediates(x, intermediates_only=True)
    assert out.shape == (1, 10) and torch.isfinite(out).all()
    for i, f in enumerate(feats):
        stride = 4 * 2 ** i
        assert f.shape == (1, model.feature_info[i]["num_chs"], math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))
        # each level went through its own LayerNorm: zero mean over channels
        assert f.mean(1).abs().max() < 1e-4


def test_per_window_rejects_other_sizes_with_a_clear_error() -> None:
    model = leanvit.create_model("sepvit_lite")
    with pytest.raises(ValueError, match=r"224x224.*window_token='shared' or 'zero'"):
        model(torch.randn(1, 3, 256, 256))
    with pytest.raises(ValueError, match="window_token must be one of"):
        leanvit.create_model("sepvit_lite", window_token="learned")


def test_features_and_head_contract(lite: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = lite.forward_features(x)
        final, inter = lite.forward_intermediates(x)
        logits = lite(x)
    assert feats.shape == (2, 256, 7, 7) and len(inter) == 4
    torch.testing.assert_close(final, feats)
    torch.testing.assert_close(lite.forward_head(feats), logits)
    assert [i["reduction"] for i in lite.feature_info] == [4, 8, 16, 32]
    nwd = lite.no_weight_decay()
    assert "stages.0.blocks.0.window_token" in nwd and "stages.2.pos_block.proj.weight" in nwd
    assert not any("qkv" in n for n in nwd)


def test_timm_contract_checkpointing_pruning_and_layer_decay() -> None:
    torch.manual_seed(0)
    model = signal_weights_(leanvit.create_model("sepvit_lite", img_size=112, num_classes=3))
    x = torch.randn(2, 3, 112, 112)
    model.train()
    plain = model(x)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), plain)

    from timm.optim import create_optimizer_v2

    groups = model.group_matcher()["blocks"]
    assert any("pos_block" in g[0] for g in groups)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, layer_decay=0.8)
    assert len(opt.param_groups) > 4
    model.reset_classifier(0)
    assert model.eval()(x).shape == (2, 256)
    assert model.prune_intermediate_layers([0, 1]) == [0, 1] and len(model.stages) == 2
    feats = model.forward_intermediates(x, intermediates_only=True)
    assert [f.shape[1:] for f in feats] == [(32, 28, 28), (64, 14, 14)]


def test_distillation_and_fuse() -> None:
    model = signal_weights_(leanvit.create_model("sepvit_lite", distillation=True, num_classes=5))
    x = signal_images(2, 224, seed=4)
    model.train()
    assert isinstance(model(x), tuple)
    model.eval()
    fused = leanvit.fuse(model)
    with torch.no_grad():
        assert_logits_close(model(x), fused(x), rel=1e-5)


# ------------------------------------------------------------------------------------------- training
def test_five_steps_reduce_the_loss_and_train_the_tokens() -> None:
    torch.manual_seed(0)
    model = leanvit.create_model("sepvit_lite", img_size=112, num_classes=4, drop_path_rate=0.1)
    x, y = torch.randn(4, 3, 112, 112), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        token = model.stages[0].blocks[0].window_token
        assert token.grad is not None and token.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model.stages[0].blocks[0].window_token.abs().sum() > 0


# ------------------------------------------------------------------------------------------- export
@pytest.mark.slow
def test_trace_export_and_onnx(lite: torch.nn.Module) -> None:
    x = signal_images(2, 224, seed=5)
    with torch.no_grad():
        ref = lite(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent Python branches (static here)
        traced = torch.jit.trace(lite, x, check_trace=False)
        exported = torch.export.export(lite, (x,))
        buf = io.BytesIO()
        torch.onnx.export(lite, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    with torch.no_grad():
        assert_logits_close(ref, traced(x), rel=1e-5)
        assert_logits_close(ref, exported.module()(x), rel=1e-5)
    sess = onnxruntime.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
    assert_logits_close(ref, out, rel=1e-4)


def test_onnx_export_at_a_size_that_pads_the_windows() -> None:
    # 256 px: 64x64 tokens in windows of 7 are padded to 70x70. Traced for ONNX, the ceil division of the
    # window count must not truncate toward zero (it did: onnxruntime failed on every padded size).
    model = signal_weights_(leanvit.create_model("sepvit_lite", img_size=256), img_size=256).eval()
    x = signal_images(2, 256, seed=3)
    with torch.no_grad():
        ref = model(x)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    sess = onnxruntime.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    assert_logits_close(ref, torch.from_numpy(sess.run(None, {"x": x.numpy()})[0]), rel=1e-4)
