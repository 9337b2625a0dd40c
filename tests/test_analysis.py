"""leanvit.analysis on constructed modules with known answers (never on random models: their attention is
near-uniform, so similarities are trivially ~1)."""
from __future__ import annotations

import warnings

import pytest
import torch
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block
from conftest import assert_logits_close
from torch import nn

import leanvit
from leanvit.analysis import heads, optime, sepvit_complexity, taylor
from leanvit.analysis.design_space import STUDIES, build_point
from leanvit.analysis.taps import tapped
from leanvit.analysis.taxonomy import UnknownOpError, category_of
from leanvit.models.efficientvit_m import CascadedGroupAttention
from leanvit.models.shvit import SingleHeadAttention

N, D = 4, 4  # tokens, head dim


def _hard_attention(perms: list[list[int]], alpha: float = 10.0) -> Attention:
    """timm Attention over one-hot tokens: head i attends query n -> key m with perms[i][m] == n, hard
    (logit gap alpha^2 * scale = 50); values are the one-hot tokens, the projection is the identity."""
    h = len(perms)
    attn = Attention(h * D, num_heads=h, qkv_bias=False).eval()
    with torch.no_grad():
        w = torch.zeros(3 * h * D, h * D)
        for i, perm in enumerate(perms):
            sl = slice(i * D, (i + 1) * D)
            p = torch.zeros(D, D)
            p[perm, torch.arange(D)] = 1.0  # P e_m = e_perm[m]
            w[sl, sl] = alpha * torch.eye(D)  # q
            w[h * D + i * D: h * D + (i + 1) * D, sl] = alpha * p.T  # k_m = alpha P^T e_m: q_n . k_m = [perm[m] == n]
            w[2 * h * D + i * D: 2 * h * D + (i + 1) * D, sl] = torch.eye(D)  # v
        attn.qkv.weight.copy_(w)
        attn.proj.weight.copy_(torch.eye(h * D))
        attn.proj.bias.zero_()
    return attn


def _tokens(heads: int, batch: int = 2) -> torch.Tensor:
    """(batch, N, heads * D): token n is e_n in every head's slice."""
    return torch.eye(N).repeat(1, heads).unsqueeze(0).repeat(batch, 1, 1)


class _Wrap(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


IDENTITY, SHIFT, TWO_OF_FOUR = [0, 1, 2, 3], [1, 2, 3, 0], [0, 1, 3, 2]


@pytest.mark.parametrize("target", heads.TARGETS)
@pytest.mark.parametrize("granularity", heads.GRANULARITIES)
def test_similarity_known_answers(target: str, granularity: str) -> None:
    # heads 0 and 1 identical (cos 1), head 2 a cyclic shift that never agrees (cos 0)
    model = _Wrap(_hard_attention([IDENTITY, IDENTITY, SHIFT]))
    expected = {"mean_pairs": 1 / 3, "max_max": 1.0, "mean_of_max": 2 / 3}
    for reduce, value in expected.items():
        rows = heads.head_similarity(model, [(_tokens(3), None)], target=target, reduce=reduce,
                                    granularity=granularity)
        assert rows[0]["similarity"] == pytest.approx(value, abs=1e-6)
    # permutations agreeing on 2 of 4 queries: k / N
    model = _Wrap(_hard_attention([IDENTITY, TWO_OF_FOUR]))
    rows = heads.head_similarity(model, [(_tokens(2), None)], target=target, reduce="mean_pairs",
                                granularity=granularity)
    assert rows[0]["similarity"] == pytest.approx(0.5, abs=1e-6)


def test_captured_maps_match_the_explicit_path() -> None:
    torch.manual_seed(0)
    attn = Attention(12, num_heads=3).eval()
    x = torch.randn(2, 5, 12)
    with tapped(_Wrap(attn), maps=True) as taps:
        attn(x)
        recomputed = taps["attn"].maps
    seen = {}
    attn.fused_attn = False
    attn.attn_drop.register_forward_hook(lambda m, a, out: seen.setdefault("map", out))
    attn(x)
    torch.testing.assert_close(recomputed, seen["map"], atol=1e-6, rtol=0)
    torch.testing.assert_close(recomputed.sum(-1), torch.ones(2, 3, 5))


def test_head_mask_equals_zeroed_projection_columns() -> None:
    torch.manual_seed(0)
    attn = Attention(12, num_heads=3).eval()
    x = torch.randn(2, 5, 12)
    with tapped(_Wrap(attn)) as taps:
        taps["attn"].mask = torch.tensor([1.0, 0.0, 1.0])
        masked = attn(x)
    with torch.no_grad():
        attn.proj.weight[:, 4:8] = 0.0
    assert torch.equal(masked, attn(x))


def test_cga_head_mask_cuts_the_cascade() -> None:
    torch.manual_seed(0)
    cga = CascadedGroupAttention(32, 8, 4, 4, (3, 3, 3, 3)).eval()
    flat = CascadedGroupAttention(32, 8, 4, 4, (3, 3, 3, 3), cascade=False).eval()
    flat.load_state_dict(cga.state_dict())
    x = torch.randn(2, 32, 4, 4)
    with tapped(_Wrap(cga), outputs=True) as taps:
        ref = cga(x)
        taps["attn"].mask = torch.ones(4)
        assert torch.equal(cga(x), ref)  # all-ones mask changes nothing
        taps["attn"].mask = torch.tensor([0.0, 1.0, 1.0, 1.0])
        cga(x)
        outs = taps["attn"].outputs
    with tapped(_Wrap(flat), outputs=True) as taps:
        flat(x)
        head1_alone = taps["attn"].outputs[:, 1]
    assert outs[:, 0].abs().max() == 0
    torch.testing.assert_close(outs[:, 1], head1_alone)  # head 0 passed nothing on to head 1


class _TwoHeadClassifier(nn.Module):
    """Uniform attention (q = k = 0), identity values: each head outputs its channels' token mean; the
    classifier reads head 0's first channel only."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention(8, num_heads=2, qkv_bias=False)
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():
            self.attn.qkv.weight.zero_()
            self.attn.qkv.weight[16:] = torch.eye(8)
            self.attn.proj.weight.copy_(torch.eye(8))
            self.attn.proj.bias.zero_()
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.weight[1, 0] = 1.0
            self.fc.weight[0, 0] = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.attn(x).mean(1))


def test_ablation_logic() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1] * 8)
    x = torch.randn(16, 3, 8, generator=g)
    x[..., 0] = (y * 2 - 1).view(-1, 1).float()  # head 0 carries the label
    rows = heads.head_ablation(_TwoHeadClassifier().eval(), [(x, y)])
    r = rows[0]
    assert r["full_top1"] == 100.0
    assert r["remove1"][0] == -50.0 and r["remove1_head"] == 1 and r["remove1_delta"] == 0.0
    assert r["leave1_head"] == 0 and r["leave1_delta"] == 0.0


def _tiny_block_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Block(8, num_heads=2, mlp_ratio=2.0), nn.Flatten(), nn.Linear(8 * 3, 3)).eval()


def test_taylor_gate_gradient_and_zero_channel() -> None:
    model = _tiny_block_model()
    fc1 = model[0].mlp.fc1
    with torch.no_grad():  # hidden channel 3 is dead: its gate gradient and importance are exactly zero
        fc1.weight[3] = 0.0
        fc1.bias[3] = 0.0
    x, y = torch.randn(4, 3, 8), torch.tensor([0, 1, 2, 0])
    sites, imp, n = taylor.taylor_importance(model, [(x, y)])
    ffn = next(i for i, s in enumerate(sites) if s.layout[0][0] == "FFN")
    assert n == 1 and imp[(ffn, "ffn")][3] == 0
    # the gate gradient is sum_s w_s dL/dw_s over the producing weights, bias included
    loss = nn.functional.cross_entropy(model(x), y)
    gw, gb = torch.autograd.grad(loss, [fc1.weight, fc1.bias])
    expected = ((fc1.weight * gw).sum(1) + fc1.bias * gb).double() ** 2
    torch.testing.assert_close(imp[(ffn, "ffn")], expected, rtol=1e-5, atol=1e-12)  # fp32 sums in two orders


def test_taylor_budget_is_deterministic_and_joint_qk_counts_twice() -> None:
    sites, _, _ = taylor.taylor_importance(_tiny_block_model(), [(torch.randn(2, 3, 8), torch.tensor([0, 1]))])
    equal = {(i, k): torch.ones(n, dtype=torch.float64) for i, s in enumerate(sites) for k, n in s.sizes.items()}
    masks, rows = taylor.kept_channels(sites, equal, keep=0.25)
    flat = torch.cat(list(masks.values()))
    assert flat.sum() == round(0.25 * flat.numel()) and flat[: int(flat.sum())].all()  # ties: lowest index first
    by = {r["component"]: r for r in rows}
    assert by["Q"]["kept"] == by["K"]["kept"] and by["FFN"]["baseline"] == 2.0


PRUNE_MODELS = ["efficientvit_m0", "shvit_s1", "sepvit_lite"]
PART_SETS = [("q", "k"), ("v",), ("ffn",), taylor.PRUNABLE_PARTS]


def _signal_model(name: str) -> nn.Module:
    model = leanvit.create_model(name, img_size=64, num_classes=10).eval()
    return leanvit.models.signal_weights_(model, img_size=64).eval()


def _random_masks(sites: list, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {(i, key): torch.rand(n, generator=g) < 0.5 for i, s in enumerate(sites) for key, n in s.sizes.items()}


def _rows(layer: nn.Module) -> tuple[nn.Module, int]:
    """(the weight-holding layer, parameters per output row: weights + bias + BN scale and shift)."""
    if hasattr(layer, "conv"):  # ConvNorm: bias-free conv + BatchNorm
        return layer.conv, layer.conv.weight[0].numel() + 2
    return layer, layer.weight[0].numel() + (layer.bias is not None)


@torch.no_grad()
def _zero_and_count(model: nn.Module, sites: list, masks: dict, parts: tuple[str, ...]) -> int:
    """Zero every dropped channel of ``parts`` where it is produced; return the parameters pruning must remove
    (the known answer, from the shapes and the documented rules: Q/K per head, V of SHViT and of the last
    EfficientViT-M head only, none in SepViT, FFN everywhere)."""
    expected = 0
    cga_heads: dict[int, int] = {}
    for i, site in enumerate(sites):
        layer, per_row = _rows(site.module)
        offset = 0
        owner = next((m for m in model.modules() if isinstance(m, CascadedGroupAttention)
                      and any(q is site.module for q in m.qkvs)), None)
        head = cga_heads.setdefault(id(owner), -1) + 1 if owner is not None else 0
        if owner is not None:
            cga_heads[id(owner)] = head
        for component, key in site.layout:
            n = site.sizes[key]
            drop = (~masks[(i, key)]).nonzero().flatten()
            if component.lower() in ("q", "k") and not {"q", "k"} & set(parts) or \
                    component == "V" and "v" not in parts or component == "FFN" and "ffn" not in parts:
                offset += n
                continue
            rows = offset + drop
            layer.weight[rows] = 0
            if getattr(layer, "bias", None) is not None:
                layer.bias[rows] = 0
            if hasattr(site.module, "bn"):
                site.module.bn.weight[rows] = 0
                site.module.bn.bias[rows] = 0
            if component in ("Q", "K"):
                expected += len(drop) * per_row
                if owner is not None and component == "Q":  # the head's q depthwise conv goes with it
                    dw = owner.dws[head]
                    expected += len(drop) * (dw.conv.weight[0].numel() + 2)
                    for t in (dw.conv.weight, dw.bn.weight, dw.bn.bias):  # else q_c = its BN shift, not 0
                        t[drop] = 0
            elif component == "V":
                if isinstance(owner, CascadedGroupAttention) and head == owner.num_heads - 1:
                    expected += len(drop) * (per_row + owner.proj[1].conv.out_channels)
                elif isinstance(shsa := next((m for m in model.modules() if getattr(m, "qkv", None) is site.module),
                                             None), SingleHeadAttention):
                    expected += len(drop) * (per_row + shsa.proj[1].conv.out_channels)
            else:
                second = next(getattr(m, "pw2", None) or m.fc2 for m in model.modules()
                              if getattr(m, "pw1", None) is site.module or getattr(m, "fc1", None) is site.module)
                expected += len(drop) * (per_row + _rows(second)[0].weight.shape[0])
            offset += n
    return expected


@pytest.mark.parametrize("parts", PART_SETS, ids=lambda p: "+".join(p))
@pytest.mark.parametrize("name", PRUNE_MODELS)
def test_taylor_prune_zeroed_channels_is_exact(name: str, parts: tuple[str, ...]) -> None:
    model = _signal_model(name)
    sites = taylor.find_gate_sites(model)
    masks = _random_masks(sites)
    expected = _zero_and_count(model, sites, masks, parts)
    x = leanvit.models.signal_images(8, 64, seed=1)
    with torch.no_grad():
        reference = model(x)
    pruned, stats = taylor.prune_channels(model, sites, masks, parts, img_size=64)
    with torch.no_grad():
        output = pruned(x)
    assert_logits_close(reference, output, rel=1e-4)
    assert expected > 0 or (parts == ("v",) and name == "sepvit_lite")
    assert stats["params_before"] - stats["params_after"] == expected
    assert stats["macs_after"] < stats["macs_before"] or expected == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", PRUNE_MODELS)
def test_taylor_pruned_model_trains_and_traces(name: str) -> None:
    model = _signal_model(name)
    sites = taylor.find_gate_sites(model)
    pruned, _ = taylor.prune_channels(model, sites, _random_masks(sites), img_size=64)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 2])
    pruned.train()
    nn.functional.cross_entropy(pruned(x), y).backward()
    assert all(p.grad is not None for name_, p in pruned.named_parameters() if "qkv" in name_ or "pw1" in name_)
    pruned.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks frozen at this size: expected
        warnings.simplefilter("ignore", FutureWarning)  # jit.trace's deprecation notice: export still uses it
        traced = torch.jit.trace(pruned, x, check_trace=False)
        torch.testing.assert_close(traced(x), pruned(x))


@pytest.mark.parametrize("name", ["efficientvit_m0", "shvit_s1"])
def test_taylor_prune_separate_qk_keeps_the_pairs_both_keep(name: str) -> None:
    model = _signal_model(name)
    sites = taylor.find_gate_sites(model, qk="separate")
    masks = _random_masks(sites, seed=3)
    _zero_and_count(model, sites, masks, ("q", "k"))  # a dropped Q or a dropped K kills the term q_c k_c
    x = leanvit.models.signal_images(8, 64, seed=1)
    with torch.no_grad():
        reference = model(x)
    pruned, stats = taylor.prune_channels(model, sites, masks, ("q", "k"), img_size=64)
    with torch.no_grad():
        assert_logits_close(reference, pruned(x), rel=1e-4)
    alive = sum(int((masks[(i, p + "q")] & masks[(i, p + "k")]).sum()) for i, s in enumerate(sites)
                for p in ({k[:-1] for k in s.sizes if k.endswith("q")}))
    total = sum(n for s in sites for k, n in s.sizes.items() if k.endswith("q"))
    assert stats["removed_channels"]["q"] == stats["removed_channels"]["k"] == total - alive


def test_taylor_prune_timm_vit_ffn_only() -> None:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=5).eval()
    leanvit.models.signal_weights_(model, img_size=32)
    sites = taylor.find_gate_sites(model)
    masks = _random_masks(sites)
    expected = _zero_and_count(model, sites, masks, ("ffn",))
    x = leanvit.models.signal_images(8, 32, seed=1)
    with torch.no_grad():
        reference = model(x)
    pruned, stats = taylor.prune_channels(model, sites, masks, img_size=32)  # Q/K/V of timm attention: left
    with torch.no_grad():
        assert_logits_close(reference, pruned(x), rel=1e-4)
    assert stats["params_before"] - stats["params_after"] == expected
    assert stats["removed_channels"] == dict(q=0, k=0, v=0, ffn=stats["removed_channels"]["ffn"])


class _OpMix(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor, m: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        s = a + b
        return (m @ k).sum() + s.view(-1).sum()


def test_byte_counter_known_answers() -> None:
    n, (mm, kk, nn_) = 1000, (3, 5, 7)
    counter = optime._ByteCounter([])
    with counter:
        _OpMix()(torch.ones(n), torch.ones(n), torch.ones(mm, kk), torch.ones(kk, nn_))
    rows: dict = {}
    for r in counter.rows:
        rows.setdefault(r["op"], r)  # the first add is a + b
    assert rows["add"]["bytes"] == 12 * n and rows["add"]["flops"] == 0
    assert rows["matmul"]["bytes"] == 4 * (mm * kk + kk * nn_ + mm * nn_) and rows["matmul"]["flops"] == 2 * mm * kk * nn_
    assert rows["view"]["bytes"] == 0


def test_category_shares_sum_to_total_and_unknown_ops_fail() -> None:
    model = leanvit.fuse(leanvit.create_model("efficientvit_m0", img_size=64)).eval()
    result = optime.op_breakdown(model, torch.randn(1, 3, 64, 64), iters=1, warmup=1)
    tables = optime.summarize(result, iters=1)
    assert sum(c["share"] for c in tables["categories"]) == pytest.approx(100.0)
    assert sum(s["share"] for s in tables["stages"]) == pytest.approx(100.0)
    assert {"conv", "dwconv", "matmul", "softmax"} <= {c["category"] for c in tables["categories"]}
    assert {"stages.0", "stages.1", "stages.2", "patch_embed"} <= {s["stage"] for s in tables["stages"]}
    assert category_of("aten::convolution", groups=16, channels=16) == "dwconv"
    with pytest.raises(UnknownOpError, match="add it to a category"):
        category_of("aten::not_an_op")


@pytest.mark.slow
def test_taxonomy_covers_every_variant() -> None:
    # On the meta device: the same top-level ops are dispatched and profiled, nothing is computed.
    for name in leanvit.list_models():
        kwargs = {"window_token": "zero"} if name.startswith("sepvit") else {}
        with torch.device("meta"):
            model = leanvit.fuse(leanvit.create_model(name, img_size=64, **kwargs)).eval()
            x = torch.empty(1, 3, 64, 64)
        with torch.no_grad():
            ops = optime._profile(lambda: model(x), 1)  # raises UnknownOpError on a gap
            counted = optime.count_bytes_and_flops(model, x)
        assert {"conv", "matmul"} & {r["category"] for r in ops} and counted, name


@pytest.mark.parametrize("name", ["sepvit_lite", "sepvit_t", "sepvit_s", "sepvit_b"])
def test_sepvit_formulas_equal_counted_macs(name: str) -> None:
    rows = sepvit_complexity.sepvit_block_rows(name)
    assert {r["attention"] for r in rows} == {"DSSA", "MSA"} and {r["M"] for r in rows} == {7, 14}
    assert all(r["diff"] == 0 for r in rows), [r for r in rows if r["diff"]]


def test_sepvit_padding_difference_is_explained() -> None:
    row = sepvit_complexity.sepvit_block_rows("sepvit_t", img_size=240)[0]  # 60x60 map, 7x7 windows
    assert row["diff"] == 0 and row["note"] == "padding 60x60 -> 3969px"
    C, extra = 96, 3969 - 3600
    assert row["paper_diff"] == 3 * extra * C * C + row["windows"] * extra * C


def test_sepvit_block_vs_swin_and_twins_pairs() -> None:
    for r in sepvit_complexity.block_pair_rows("sepvit_t"):
        assert r["swin_pair_counted"] == r["swin_pair_formula"] and r["twins_pair_counted"] == r["twins_pair_formula"]
        assert r["dssa_counted"] == r["dssa_formula"] and 0.5 <= r["dssa_over_swin_pair"] < 0.6


@pytest.mark.slow
def test_design_points_build_and_switches_have_closed_forms() -> None:
    with torch.device("meta"):
        for _, points in STUDIES.values():
            for p in points:
                assert isinstance(build_point(p), nn.Module)
    a, b = (build_point(p) for p in STUDIES["shvit-macro"][1][:2])
    assert a.patch_embed(torch.zeros(1, 3, 224, 224)).shape[-2:] == (56, 56)  # 3136 stage-1 tokens
    assert b.patch_embed(torch.zeros(1, 3, 224, 224)).shape[-2:] == (14, 14)  # 196
    s3_eighth = build_point(STUDIES["shvit-tab6"][1][2])
    qkv = s3_eighth.stages[1].blocks[0].mixer.m.qkv.conv
    assert (qkv.in_channels, qkv.out_channels) == (44, 2 * 16 + 44)
    with pytest.raises(ValueError, match="cascade=False"):
        CascadedGroupAttention(32, 8, 4, 4, (3, 3, 3, 3), v_ratio=0.5)
    m = build_point(STUDIES["evit-tab6"][1][1]).eval()  # MHSA: every head sees all channels
    assert m.stages[0].blocks[0].mixer.m.attn.qkvs[0].conv.in_channels == 128
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(leanvit.fuse(m)(x), m(x), atol=1e-4, rtol=1e-4)
