"""MMFuser bridge: identity at init, batch independence, FLOPs, paper-scale size, config and checkpoint import."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import bridges  # noqa: F401  (registers the built-in bridges)
from bridges.base import BRIDGES, BridgeIO, EncoderInfo, LMInfo
from bridges.common.deformable import grid_sample_flop_mapping
from bridges.mmfuser import DenseAttn, MMFuserBridge, convert_reference_state_dict, spread_layers
from bridges.presets import get_preset
from encoders import build_encoder_set
from encoders.base import VisionFeatures
from encoders.registry import ConfigError
from llm_adapters.batch import MultimodalBatch
from llm_adapters.multimodal_lm import build_multimodal_lm

WIDTH, LM, GRID, DEPTH = 32, 48, (3, 4), 6
IO = BridgeIO(encoders=(EncoderInfo("vit", WIDTH, GRID, DEPTH),), lm=LMInfo(hidden_size=LM))
ROOT = Path(__file__).resolve().parents[1]


def _bridge(**overrides: object) -> MMFuserBridge:
    spec = {"name": "mmfuser", "num_heads": 4, "num_points": 2, **overrides}
    return BRIDGES.build(spec, IO).eval()


def _features(bridge: MMFuserBridge, n: int, num_prefix: int = 0) -> dict[str, VisionFeatures]:
    layers = bridge.needs.layers
    tokens = GRID[0] * GRID[1] + num_prefix
    hidden = tuple(torch.randn(n, tokens, WIDTH) for _ in layers)
    return {"vit": VisionFeatures(hidden=hidden, layers=layers, grid=GRID, width=WIDTH, num_prefix=num_prefix)}


def _randomise_gammas(bridge: MMFuserBridge) -> None:
    with torch.no_grad():
        bridge.fuser.gamma1.normal_()
        bridge.fuser.gamma2.normal_()


@pytest.mark.parametrize("attention", ["deformable", "dense"])
def test_gammas_at_zero_give_the_deep_layer_exactly(attention: str) -> None:
    bridge = _bridge(attention=attention)
    feats = _features(bridge, 3, num_prefix=1)
    vf = feats["vit"]
    deep = vf.layer(bridge.layers[-1])[:, 1:]
    levels = torch.cat([vf.layer(i)[:, 1:] for i in bridge.layers[:-1]], 1)
    with torch.no_grad():
        assert torch.equal(bridge.fuser(deep, levels, GRID), deep)
        assert torch.equal(bridge(feats), bridge.projector(deep))
        _randomise_gammas(bridge)  # the check above is not vacuous: non-zero gammas change the output
        assert not torch.allclose(bridge.fuser(deep, levels, GRID), deep, atol=1e-3)


@pytest.mark.parametrize("attention", ["deformable", "dense"])
def test_samples_are_independent_and_media_permute(attention: str) -> None:
    bridge = _bridge(attention=attention)
    _randomise_gammas(bridge)
    feats = _features(bridge, 4)
    with torch.no_grad():
        out = bridge(feats)
        assert out.shape == (4, bridge.num_visual_tokens(), LM)
        vf = feats["vit"]
        alone = bridge({"vit": VisionFeatures(tuple(h[2:3] for h in vf.hidden), vf.layers, GRID, WIDTH)})
        torch.testing.assert_close(alone, out[2:3], atol=1e-5, rtol=0)
        perm = torch.tensor([3, 1, 0, 2])
        permuted = bridge({"vit": VisionFeatures(tuple(h[perm] for h in vf.hidden), vf.layers, GRID, WIDTH)})
        torch.testing.assert_close(permuted, out[perm], atol=1e-5, rtol=0)


def test_zero_media_and_half_precision_features() -> None:
    bridge = _bridge()
    with torch.no_grad():
        assert bridge(_features(bridge, 0)).shape == (0, bridge.num_visual_tokens(), LM)
        feats = _features(bridge, 2, num_prefix=1)
        half = {
            "vit": VisionFeatures(tuple(h.bfloat16() for h in feats["vit"].hidden), feats["vit"].layers, GRID, WIDTH, 1)
        }
        assert bridge(half).dtype == torch.float32  # features are cast to the bridge's precision


def test_frames_are_treated_as_images() -> None:
    bridge = _bridge()
    _randomise_gammas(bridge)
    feats = _features(bridge, 6)
    with torch.no_grad():
        per_image = bridge(feats)  # (6, T, D)
        video = bridge(feats, num_frames=3)
    t = bridge.num_visual_tokens()
    assert video.shape == (2, 3 * t, LM) and bridge.num_visual_tokens(3) == 3 * t
    torch.testing.assert_close(video, per_image.reshape(2, 3 * t, LM), atol=0, rtol=0)
    with pytest.raises(ValueError, match="num_frames"):
        bridge(feats, num_frames=4)


@pytest.mark.parametrize(("attention", "self_step"), [("deformable", True), ("deformable", False), ("dense", True)])
def test_flops_per_media_match_the_flop_counter(attention: str, self_step: bool) -> None:
    # The counter counts matmuls and, with grid_sample_flop_mapping, bilinear sampling (8 per sampled value);
    # the declared count uses the same convention. SDPA is forced to the math kernel, whose matmuls it sees.
    bridge = _bridge(attention=attention, self_step=self_step)
    feats = _features(bridge, 2)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False, custom_mapping=grid_sample_flop_mapping()) as counter:
            bridge(feats)
    counted = counter.get_total_flops() / 2
    assert counted > 0
    assert abs(bridge.flops_per_media() - counted) <= 0.1 * counted
    assert bridge.flops_per_media(num_frames=3) == 3 * bridge.flops_per_media()


def test_pooled_queries_give_the_token_count_and_reduce_to_the_paper_at_the_full_grid() -> None:
    # GRID (3, 4) admits 1, 4 and 9 tokens; num_tokens = None is the paper, every patch
    full = _bridge()
    _randomise_gammas(full)
    feats = _features(full, 2, num_prefix=1)
    for tokens in (9, 4, 1):
        pooled = _bridge(num_tokens=tokens)
        pooled.load_state_dict(full.state_dict())
        with torch.no_grad():
            out = pooled(feats)
            assert out.shape == (2, tokens, LM) and pooled.num_visual_tokens(2) == 2 * tokens
            # at gamma = 0 the fuser is the identity: the bridge is the projector on the average-pooled deep layer
            nn.init.zeros_(pooled.fuser.gamma1)
            deep = feats["vit"].layer(pooled.layers[-1])[:, 1:].transpose(1, 2).reshape(2, WIDTH, *GRID)
            side = int(tokens**0.5)
            mean = torch.nn.functional.adaptive_avg_pool2d(deep, side).flatten(2).transpose(1, 2)
            torch.testing.assert_close(pooled(feats), pooled.projector(mean), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"mmfuser: num_tokens=16 .*3 x 4 encoder grid.*\[1, 4, 9\]"):
        _bridge(num_tokens=16)
    # on a square grid, every patch as the token count is the paper's bridge exactly
    square = BridgeIO(encoders=(EncoderInfo("vit", WIDTH, (3, 3), DEPTH),), lm=LMInfo(hidden_size=LM))
    paper = BRIDGES.build({"name": "mmfuser", "num_heads": 4, "num_points": 2}, square).eval()
    _randomise_gammas(paper)
    nine = BRIDGES.build({"name": "mmfuser", "num_heads": 4, "num_points": 2, "num_tokens": 9}, square).eval()
    nine.load_state_dict(paper.state_dict())
    hidden = tuple(torch.randn(2, 9, WIDTH) for _ in paper.needs.layers)
    feats = {"vit": VisionFeatures(hidden=hidden, layers=paper.needs.layers, grid=(3, 3), width=WIDTH)}
    with torch.no_grad():
        assert torch.equal(nine(feats), paper(feats))


@pytest.mark.parametrize("attention", ["deformable", "dense"])
def test_flops_with_pooled_queries_match_the_flop_counter(attention: str) -> None:
    bridge = _bridge(attention=attention, num_tokens=4)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False, custom_mapping=grid_sample_flop_mapping()) as counter:
            bridge(_features(bridge, 2))
    counted = counter.get_total_flops() / 2
    assert abs(bridge.flops_per_media() - counted) <= 0.1 * counted
    assert bridge.flops_per_media() < _bridge(attention=attention).flops_per_media()


def test_gradients_reach_the_gammas_and_the_fuser_learns() -> None:
    bridge = _bridge().train()
    feats = _features(bridge, 2)
    target = torch.randn(2, bridge.num_visual_tokens(), LM)
    opt = torch.optim.AdamW(bridge.parameters(), lr=1e-2)
    cross_before = bridge.fuser.cross_attn.value_proj.weight.detach().clone()
    losses = []
    for _ in range(3):
        loss = nn.functional.mse_loss(bridge(feats), target)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        if len(losses) == 1:  # at init only gamma1 (and the projector) get a gradient: the rest is scaled by 0
            assert bridge.fuser.gamma1.grad.abs().sum() > 0
        opt.step()
    assert bridge.fuser.gamma1.abs().sum() > 0 and bridge.fuser.gamma2.abs().sum() > 0
    assert not torch.equal(bridge.fuser.cross_attn.value_proj.weight, cross_before)
    assert losses[-1] < losses[0]


def test_dense_attention_matches_torch_multihead_attention() -> None:
    dense = DenseAttn(WIDTH, 4).eval()
    with torch.no_grad():
        for p in dense.parameters():
            p.normal_(0, 0.2)
    mha = nn.MultiheadAttention(WIDTH, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([dense.q_proj.weight, dense.kv_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([dense.q_proj.bias, dense.kv_proj.bias]))
        mha.out_proj.load_state_dict(dense.out_proj.state_dict())
        q, ctx = torch.randn(2, 5, WIDTH), torch.randn(2, 9, WIDTH)
        torch.testing.assert_close(dense(q, ctx), mha(q, ctx, ctx, need_weights=False)[0], atol=1e-5, rtol=0)


def test_layer_spread_and_needs() -> None:
    assert spread_layers(24) == (2, 7, 12, 17, 22)  # the paper's blocks 3/8/13/18 -> 23, 1-indexed
    assert spread_layers(4) == (0, 0, 1, 2, 3)
    bridge = _bridge()
    assert bridge.layers == spread_layers(DEPTH)
    assert bridge.needs.layers == tuple(sorted(set(bridge.layers)))
    assert bridge.needs.needs_grid and not bridge.needs.with_cls
    assert len(bridge.fuser.cross_attn.attention_weights.bias) == 4 * 4 * 2  # heads x levels x points
    explicit = _bridge(layers=[0, -1, -2])
    assert explicit.layers == (0, DEPTH - 1, DEPTH - 2) and explicit.fuser.n_levels == 2


def test_paper_preset_sizes() -> None:
    for name in ("mmfuser_7b", "mmfuser_7b_total"):
        preset = get_preset("mmfuser", name)
        with torch.device("meta"):
            bridge = BRIDGES.build({"name": "mmfuser", **preset.overrides}, preset.io)
        assert bridge.layers == (2, 7, 12, 17, 22) and bridge.num_visual_tokens() == 576
        groups = {name: sum(p.numel() for p in params) for name, params in bridge.param_groups().items()}
        assert sum(groups.values()) == sum(p.numel() for p in bridge.parameters())
        built = sum(groups.values()) if preset.count == "bridge" else groups[preset.count]
        assert abs(built - preset.expected_params) <= 0.01 * preset.expected_params, (name, built)
    assert abs(groups["bridge.projector"] - 20_980_000) <= 0.01 * 20_980_000  # LLaVA-1.5 7B mlp2x_gelu
    tiny = get_preset("mmfuser", "tiny")
    assert BRIDGES.build({"name": "mmfuser", **tiny.overrides}, tiny.io).num_visual_tokens() == 16


def test_hydra_yaml_builds_and_bad_configs_fail_clearly() -> None:
    spec = OmegaConf.load(ROOT / "experiments/configs/bridge/mmfuser.yaml")
    assert isinstance(BRIDGES.build(spec, IO), MMFuserBridge)
    with pytest.raises(ConfigError, match="num_point"):
        BRIDGES.build({"name": "mmfuser", "num_point": 3}, IO)
    with pytest.raises(ValueError, match="deformable' or 'dense"):
        _bridge(attention="sparse")
    with pytest.raises(ValueError, match="does not divide"):
        _bridge(num_heads=5)
    with pytest.raises(ValueError, match="at least one key/value"):
        _bridge(layers=[-2])


def test_reference_checkpoint_names_load() -> None:
    bridge = _bridge()
    ours = bridge.state_dict()
    reference = {}  # MMFuser's mm_projector = Sequential(MSCrossAttnBlock, Linear, GELU, Linear)
    for key, tensor in ours.items():
        head, _, rest = key.partition(".")
        index = "0" if head == "fuser" else str(int(rest.split(".")[0]) + 1)
        rest = rest if head == "fuser" else rest.split(".", 1)[1]
        reference[f"model.mm_projector.{index}.{rest}"] = torch.randn_like(tensor)
    reference["model.layers.0.weight"] = torch.zeros(1)  # unrelated entries are ignored
    fresh = _bridge()
    fresh.load_state_dict(convert_reference_state_dict(reference), strict=True)
    assert torch.equal(
        fresh.fuser.cross_attn.sampling_offsets.weight,
        reference["model.mm_projector.0.cross_attn.sampling_offsets.weight"],
    )
    assert torch.equal(fresh.projector[2].bias, reference["model.mm_projector.3.bias"])


def test_learns_through_multimodal_lm() -> None:
    encoders = build_encoder_set({"preset": "tiny_clip", "architecture": {"num_hidden_layers": 4}})  # 4x4 grid
    bridge_spec = {"name": "mmfuser", "num_heads": 4, "num_points": 2}
    model = build_multimodal_lm(encoders, bridge_spec, "tiny_llama").train()
    bridge = model.bridge
    assert isinstance(bridge, MMFuserBridge) and bridge.layers == (0, 0, 1, 2, 3)
    tok = model.lm.tokenizer(
        ["a red square <image> on the left", "<image> two blue circles"], return_tensors="pt", padding=True
    )
    ids, mask = tok["input_ids"], tok["attention_mask"]
    is_image = ids == model.lm.image_token_id
    batch = MultimodalBatch(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=torch.rand(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
        media_to_sample=torch.tensor([0, 1]),
        labels=torch.where((mask == 1) & ~is_image, ids, -100),
    )
    opt = torch.optim.AdamW(bridge.parameters(), lr=3e-3)
    cross_before = bridge.fuser.cross_attn.sampling_offsets.weight.detach().clone()
    losses = []
    for step in range(8):
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        if step == 0:  # gamma1 starts at 0 but its gradient does not: the fuser can leave the identity
            assert bridge.fuser.gamma1.grad.abs().sum() > 0
            assert all(p.grad.abs().sum() > 0 for p in bridge.projector.parameters())
        opt.step()
        losses.append(loss.item())
    # a frozen random LM: the bridge only moves the text loss through the visual tokens, so the drop is modest
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)) and losses[-1] < losses[0] - 0.1, losses
    assert bridge.fuser.gamma1.abs().sum() > 0 and bridge.fuser.gamma2.abs().sum() > 0
    assert not torch.equal(bridge.fuser.cross_attn.sampling_offsets.weight, cross_before)
