"""The Perceiver Resampler core (shared with Flamingo) and the ``perceiver`` prefix bridge."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import bridges  # registers the built-in bridges
from bridges.base import BRIDGES, BridgeIO, EncoderInfo, LMInfo
from bridges.common.resampler import PerceiverResampler
from bridges.perceiver import PerceiverBridge, PerceiverBridgeConfig
from bridges.presets import get_preset
from encoders.base import VisionFeatures


def _randomize(module: torch.nn.Module) -> None:
    """Give every parameter (LayerNorms included) non-default values so parity tests can fail."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 else 0.0) * 0.5)


def _idefics(dim: int, depth: int, heads: int, dim_head: int, latents: int, qk_norm: bool) -> torch.nn.Module:
    from transformers import IdeficsConfig
    from transformers.models.idefics.perceiver import IdeficsPerceiverResampler

    config = IdeficsConfig(vision_config={"embed_dim": dim}, perceiver_config={"qk_layer_norms_perceiver": qk_norm})
    return IdeficsPerceiverResampler(config, dim, depth, heads, dim_head, latents).eval()


# ---- resampler ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("fused_kv", [False, True])
def test_resampler_matches_idefics(qk_norm: bool, fused_kv: bool) -> None:
    ref = _idefics(dim=32, depth=2, heads=4, dim_head=8, latents=5, qk_norm=qk_norm)
    _randomize(ref)
    ours = PerceiverResampler(
        32, depth=2, heads=4, dim_head=8, num_latents=5, activation="relu", fused_kv=fused_kv, qk_norm=qk_norm
    ).eval()
    ours.load_idefics_state_dict(ref.state_dict())
    for batch, tokens in [(1, 1), (3, 7), (2, 49)]:
        context = torch.randn(batch, tokens, 32)
        with torch.no_grad():
            expected = ref(context)
            got = ours(context[:, None, None])[:, 0]
        assert got.shape == (batch, 5, 32)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_from_idefics_builds_equal_module() -> None:
    ref = _idefics(dim=16, depth=3, heads=2, dim_head=4, latents=3, qk_norm=True)
    _randomize(ref)
    ours = PerceiverResampler.from_idefics(ref).eval()
    assert ours.depth == 3 and ours.num_latents == 3 and ours.qk_norm
    context = torch.randn(2, 11, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(context[:, None, None])[:, 0], ref(context), atol=1e-5, rtol=1e-5)


def test_idefics_load_rejects_mismatched_depth() -> None:
    ref = _idefics(dim=16, depth=2, heads=2, dim_head=4, latents=3, qk_norm=False)
    ours = PerceiverResampler(16, depth=1, heads=2, dim_head=4, num_latents=3, activation="relu", fused_kv=False)
    with pytest.raises(ValueError, match="do not fit"):
        ours.load_idefics_state_dict(ref.state_dict())


def test_resampler_matches_openflamingo_equations() -> None:
    """Hand-written OpenFlamingo forward (fused K/V, GELU, frame and media-time embeddings) on our weights."""
    r = PerceiverResampler(16, depth=2, heads=2, dim_head=8, num_latents=4, max_num_frames=3, max_num_media=2).eval()
    _randomize(r)
    x = torch.randn(2, 2, 3, 5, 16)
    with torch.no_grad():
        h = x + r.frame_embs[None, None, :, None, :]
        h = h.flatten(2, 3) + r.media_time_embs[None]
        lat = r.latents.expand(2, 2, 4, 16)
        for attn, ff in r.layers:
            xn, ln = attn.norm_media(h), attn.norm_latents(lat)
            q = attn.to_q(ln).unflatten(-1, (2, 8)).transpose(-2, -3) * 8**-0.5
            k, v = attn.to_kv(torch.cat((xn, ln), -2)).chunk(2, -1)
            k, v = (t.unflatten(-1, (2, 8)).transpose(-2, -3) for t in (k, v))
            out = (q @ k.transpose(-1, -2)).softmax(-1) @ v
            lat = attn.to_out(out.transpose(-2, -3).flatten(-2)) + lat
            lat = ff(lat) + lat
        expected = r.norm(lat)
        torch.testing.assert_close(r(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ["gelu", "squared_relu", "relu"])
def test_resampler_output_length_is_latent_count(activation: str) -> None:
    r = PerceiverResampler(16, depth=1, heads=2, dim_head=8, num_latents=6, activation=activation)
    for frames, patches in [(1, 1), (1, 30), (4, 9)]:
        assert r(torch.randn(2, 3, frames, patches, 16)).shape == (2, 3, 6, 16)


def test_squared_relu_differs_from_relu() -> None:
    r = PerceiverResampler(16, depth=1, heads=2, dim_head=8, num_latents=4, activation="squared_relu").eval()
    x = torch.randn(1, 1, 1, 5, 16)
    before = r(x)
    r.layers[0][1][2] = torch.nn.ReLU()
    assert not torch.allclose(before, r(x))


def test_resampler_media_items_are_independent_and_permute() -> None:
    r = PerceiverResampler(16, depth=2, heads=2, dim_head=8, num_latents=4).eval()
    x = torch.randn(3, 2, 1, 7, 16)
    with torch.no_grad():
        full = r(x)
        torch.testing.assert_close(r(x[1:2]), full[1:2], atol=1e-5, rtol=1e-5)
        perm = torch.tensor([2, 0, 1])
        torch.testing.assert_close(r(x[perm]), full[perm], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r(x[:, [1, 0]]), full[:, [1, 0]], atol=1e-5, rtol=1e-5)


def test_frame_embeddings_make_frame_order_matter() -> None:
    with_embs = PerceiverResampler(16, depth=1, heads=2, dim_head=8, num_latents=4, max_num_frames=3).eval()
    x = torch.randn(1, 1, 3, 5, 16)
    swapped = x[:, :, [2, 1, 0]]
    assert not torch.allclose(with_embs(x), with_embs(swapped), atol=1e-4)
    without = PerceiverResampler(16, depth=1, heads=2, dim_head=8, num_latents=4).eval()
    torch.testing.assert_close(without(x), without(swapped), atol=1e-5, rtol=1e-5)  # a set: order-free
    with pytest.raises(ValueError, match="max_num_frames"):
        with_embs(torch.randn(1, 1, 4, 5, 16))


def test_resampler_rejects_bad_shape() -> None:
    r = PerceiverResampler(16, depth=1, heads=2, dim_head=8, num_latents=4)
    with pytest.raises(ValueError, match=r"\(B, M, F, P, 16\)"):
        r(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="activation"):
        PerceiverResampler(16, activation="swish")  # type: ignore[arg-type]


@pytest.mark.parametrize("qk_norm", [False, True])
def test_resampler_flops_match_counter(qk_norm: bool) -> None:
    r = PerceiverResampler(32, depth=2, heads=4, dim_head=8, num_latents=8, qk_norm=qk_norm)
    x = torch.randn(1, 1, 2, 20, 32)
    # the MATH backend: FlopCounterMode does not count CPU flash attention, only its decomposition
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        r(x)
    measured = counter.get_total_flops()
    assert abs(r.flops(40) - measured) <= 0.1 * measured


def test_openflamingo_paper_width_params() -> None:
    with torch.device("meta"):
        r = PerceiverResampler(1024, depth=6, heads=8, dim_head=64, num_latents=64)
    total = sum(p.numel() for p in r.parameters())
    assert abs(total - 63.0e6) <= 0.01 * 63.0e6


# ---- the perceiver prefix bridge ---------------------------------------------------------------------------------


def _tiny(**overrides) -> PerceiverBridge:
    preset = get_preset("perceiver", "tiny")
    return BRIDGES.build({"name": "perceiver", **preset.overrides, **overrides}, preset.io).eval()


def _features(n: int, grid: tuple[int, int] = (4, 4), width: int = 32, cls: bool = False) -> dict:
    tokens = torch.randn(n, grid[0] * grid[1] + int(cls), width)
    return {"tiny": VisionFeatures((tokens,), (1,), grid, width, num_prefix=int(cls))}


def test_bridge_is_registered_with_its_yaml() -> None:
    from pathlib import Path

    from omegaconf import OmegaConf

    assert "perceiver" in bridges.list_bridges()
    yaml = OmegaConf.load(Path(__file__).parents[1] / "experiments/configs/bridge/perceiver.yaml")
    entry, config = BRIDGES.make_config(yaml)
    assert entry.cls is PerceiverBridge
    assert config == PerceiverBridgeConfig()  # the YAML lists the dataclass defaults
    from encoders.registry import ConfigError

    with pytest.raises(ConfigError, match="num_latent"):
        BRIDGES.make_config({"name": "perceiver", "num_latent": 3})


@pytest.mark.parametrize("grid", [(1, 1), (4, 4), (7, 5)])
def test_bridge_output_length_is_latent_count(grid: tuple[int, int]) -> None:
    bridge = _tiny()
    out = bridge(_features(3, grid))
    assert out.shape == (3, bridge.num_visual_tokens(), 64) and bridge.num_visual_tokens() == 8


def test_bridge_video_gives_one_latent_set_per_video() -> None:
    bridge = _tiny()
    feats = _features(2 * 3)
    out = bridge(feats, num_frames=3)
    assert out.shape == (2, 8, 64) and bridge.num_visual_tokens(3) == 8
    # video 1 only depends on its own frames, and frame order matters (frame embeddings)
    torch.testing.assert_close(bridge(_features_slice(feats, slice(3, 6)), num_frames=3), out[1:], atol=1e-5, rtol=0)
    reordered = _features_slice(feats, [2, 1, 0, 3, 4, 5])
    assert not torch.allclose(bridge(reordered, num_frames=3)[0], out[0], atol=1e-4)
    with pytest.raises(ValueError, match="multiple of num_frames"):
        bridge(_features(5), num_frames=3)


def _features_slice(feats: dict, index) -> dict:
    f = feats["tiny"]
    return {"tiny": VisionFeatures((f.hidden[0][index],), f.layers, f.grid, f.width, f.num_prefix)}


def test_bridge_samples_independent_and_permutation_equivariant() -> None:
    bridge = _tiny()
    feats = _features(4)
    with torch.no_grad():
        out = bridge(feats)
        perm = [3, 1, 0, 2]
        torch.testing.assert_close(bridge(_features_slice(feats, perm)), out[perm], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bridge(_features_slice(feats, slice(2, 3))), out[2:3], atol=1e-5, rtol=1e-5)


def test_bridge_with_cls_uses_the_cls_token() -> None:
    bridge = _tiny(with_cls=True)
    assert bridge.needs.with_cls
    feats = _features(2, cls=True)
    changed = _features_slice(feats, slice(None))
    changed["tiny"].hidden = (changed["tiny"].hidden[0].clone(),)
    changed["tiny"].hidden[0][:, 0] += 1.0  # the CLS row only
    with torch.no_grad():
        assert not torch.allclose(bridge(feats), bridge(changed))
    with pytest.raises(ValueError, match="CLS"):
        bridge(_features(2))


@pytest.mark.parametrize("num_frames", [1, 2])
def test_bridge_flops_match_counter(num_frames: int) -> None:
    bridge = _tiny(projector="mlp2x_gelu")
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        bridge(_features(num_frames), num_frames=num_frames)
    measured = counter.get_total_flops()
    assert abs(bridge.flops_per_media(num_frames) - measured) <= 0.1 * measured


def test_paper_preset_params() -> None:
    preset = get_preset("perceiver", "openflamingo")
    with torch.device("meta"):
        bridge = BRIDGES.build({"name": "perceiver", **preset.overrides}, preset.io)
    groups = bridge.param_groups()
    assert sum(len(g) for g in groups.values()) == len(list(bridge.parameters()))
    counted = sum(p.numel() for p in groups[preset.count])
    assert abs(counted - preset.expected_params) <= 0.01 * preset.expected_params
    with torch.device("meta"):
        paper = get_preset("perceiver", "flamingo_paper")
        big = BRIDGES.build({"name": "perceiver", **paper.overrides}, paper.io)
    assert (
        abs(sum(p.numel() for p in big.param_groups()["bridge.resampler"]) - 188.9e6) <= 0.01 * 188.9e6
    )  # BRIDGES 1.7


def test_from_reference_idefics() -> None:
    ref = _idefics(dim=32, depth=2, heads=4, dim_head=8, latents=6, qk_norm=False)
    _randomize(ref)
    io = BridgeIO((EncoderInfo("tiny", 32, (4, 4), 2),), LMInfo(48))
    bridge = PerceiverBridge.from_reference(ref, io).eval()
    assert bridge.config.activation == "relu" and not bridge.config.fused_kv and bridge.config.heads == 4
    feats = _features(3)
    with torch.no_grad():
        expected = bridge.projector(ref(feats["tiny"].hidden[0]))
        torch.testing.assert_close(bridge(feats), expected, atol=1e-5, rtol=1e-5)


def test_from_reference_openflamingo_layout_roundtrip() -> None:
    src = PerceiverResampler(32, depth=2, heads=4, dim_head=8, num_latents=6, ff_mult=2, max_num_frames=3)
    _randomize(src)
    bridge = PerceiverBridge.from_reference(src, BridgeIO((EncoderInfo("tiny", 32, (4, 4), 2),), LMInfo(48)))
    assert bridge.config.ff_mult == 2 and bridge.config.max_num_frames == 3 and bridge.config.dim_head == 8
    for k, v in src.state_dict().items():
        torch.testing.assert_close(bridge.resampler.state_dict()[k], v, atol=0, rtol=0)


def test_bridge_registers_dropped_dtype_cast_and_zero_media() -> None:
    bridge = _tiny(with_cls=True)
    feats = _features(2, cls=True)
    tokens = feats["tiny"].hidden[0]
    registers = torch.randn(2, 2, 32)
    with_regs = torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)
    regs = {"tiny": VisionFeatures((with_regs,), (1,), (4, 4), 32, num_prefix=3)}
    with torch.no_grad():
        torch.testing.assert_close(bridge(regs), bridge(feats), atol=1e-6, rtol=1e-6)
        half = {"tiny": VisionFeatures((tokens.bfloat16(),), (1,), (4, 4), 32, num_prefix=1)}
        assert bridge(half).dtype == torch.float32
        assert _tiny()(_features(0), num_frames=2).shape == (0, 8, 64)


# ---- learning through MultimodalLM ------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 2])
def test_learns_through_multimodal_lm(frames: int) -> None:
    from test_llm_fakes import fake_encoders, make_batch, train_losses

    from llm_adapters.multimodal_lm import build_multimodal_lm

    spec = {"name": "perceiver", "depth": 1, "heads": 2, "dim_head": 16, "num_latents": 4, "max_num_frames": 2}
    model = build_multimodal_lm(fake_encoders(), spec, "tiny_llama")
    batch = make_batch(model.lm, ["a <image> red square", "<image> two <image> blue circles"], frames=frames)
    losses = train_losses(model, batch)
    assert losses[-1] < losses[0] - 0.05, losses
