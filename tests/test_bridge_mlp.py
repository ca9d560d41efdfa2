"""The LLaVA MLP bridge: parity with transformers' LLaVA feature path, variants, invariants, FLOPs and sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bridges import BRIDGES
from bridges.base import BridgeIO, EncoderInfo, LMInfo
from bridges.common.projector import build_projector
from bridges.mlp import MLPBridge, MLPBridgeConfig
from bridges.presets import get_preset, paper_presets
from encoders.base import VisionFeatures

REPO = Path(__file__).resolve().parents[1]
WIDTH, GRID, LAYERS, LM = 32, (4, 4), 3, 64


def io(width: int = WIDTH) -> BridgeIO:
    return BridgeIO((EncoderInfo("enc", width, GRID, LAYERS),), LMInfo(LM))


def features(n: int, with_cls: bool = True, seed: int = 0) -> VisionFeatures:
    g = torch.Generator().manual_seed(seed)
    p = GRID[0] * GRID[1] + int(with_cls)
    hidden = tuple(torch.randn(n, p, WIDTH, generator=g) for _ in range(LAYERS))
    return VisionFeatures(hidden, tuple(range(LAYERS)), GRID, WIDTH, int(with_cls))


def build(**overrides) -> MLPBridge:
    return BRIDGES.build({"name": "mlp", **overrides}, io()).eval()


# ---------------------------------------------------------------- parity with transformers' LLaVA


def tiny_llava(layer, strategy: str):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaModel

    vision = CLIPVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        image_size=16,
        patch_size=4,
    )
    text = LlamaConfig(
        hidden_size=LM,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=64,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        image_token_id=63,
    )
    model = LlavaModel(config).eval()
    with torch.no_grad():
        for p in model.multi_modal_projector.parameters():
            p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize(
    ("hf_layer", "strategy", "ours"),
    [
        (-2, "default", {}),
        ([-3, -1], "default", {"select_layer": [-3, -1]}),
        ([1, -2], "full", {"select_layer": [0, -2], "select_feature": "cls_patch"}),
    ],
)
def test_matches_llava_image_features(hf_layer, strategy: str, ours: dict) -> None:
    """Same tower, same projector weights: our layer selection, CLS handling, concat and projector equal HF's."""
    model = tiny_llava(hf_layer, strategy)
    bridge = MLPBridge.from_reference(model.multi_modal_projector, io=io(), **ours).eval()
    for n in (1, 3):
        pixels = torch.randn(n, 3, 16, 16)
        with torch.no_grad():
            expected = torch.stack(list(model.get_image_features(pixels).pooler_output))
            hs = model.vision_tower(pixels, output_hidden_states=True).hidden_states[1:]  # block outputs
            feats = VisionFeatures(tuple(hs), tuple(range(LAYERS)), GRID, WIDTH, num_prefix=1)
            got = bridge({"enc": feats})
        assert got.shape == expected.shape == (n, bridge.num_visual_tokens(), LM)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_projector_module_parity() -> None:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=WIDTH, num_attention_heads=4),
        text_config=LlamaConfig(hidden_size=LM, num_attention_heads=4),
        vision_feature_layer=[-2, -1],
    )
    ref = LlavaMultiModalProjector(config).eval()
    bridge = MLPBridge.from_reference(ref, io=io(), select_layer=[-2, -1])
    assert dict(bridge.projector.named_parameters()).keys() == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for shape in ((2, 16, 2 * WIDTH), (1, 5, 2 * WIDTH)):
        x = torch.randn(shape)
        torch.testing.assert_close(bridge.projector(x), ref(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["linear", "mlp3x_gelu"])
def test_linear_and_deeper_projectors_match_llava_builder(kind: str) -> None:
    """``linear`` vs a bare nn.Linear; ``mlp3x_gelu`` vs LLaVA's builder layout (Linear, GELU, Linear, GELU, Linear)."""
    ref = (
        nn.Linear(WIDTH, LM)
        if kind == "linear"
        else nn.Sequential(nn.Linear(WIDTH, LM), nn.GELU(), nn.Linear(LM, LM), nn.GELU(), nn.Linear(LM, LM))
    )
    bridge = MLPBridge.from_reference(ref, io=io())
    assert bridge.config.projector == kind
    feats = features(2, with_cls=False)
    torch.testing.assert_close(bridge({"enc": feats}), ref(feats.hidden[-2]), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- variants and errors


def test_cls_switch_and_layer_choice() -> None:
    feats = features(2)
    patch = build()({"enc": feats})
    assert patch.shape == (2, 16, LM)
    bridge = build(select_feature="cls_patch")
    assert bridge.needs.with_cls and bridge.num_visual_tokens() == 17
    with_cls = bridge({"enc": feats})
    torch.testing.assert_close(with_cls[:, 1:], bridge.projector(feats.hidden[1][:, 1:]))
    torch.testing.assert_close(with_cls[:, :1], bridge.projector(feats.hidden[1][:, :1]))
    last = build(select_layer=-1)
    torch.testing.assert_close(last({"enc": feats}), last.projector(feats.hidden[2][:, 1:]))


def test_multi_layer_concat_order() -> None:
    bridge = build(select_layer=[0, 2])
    assert bridge.needs.layers == (0, 2) and bridge.projector[0].in_features == 2 * WIDTH
    feats = features(2, with_cls=False)
    expected = bridge.projector(torch.cat([feats.hidden[0], feats.hidden[2]], dim=-1))
    torch.testing.assert_close(bridge({"enc": feats}), expected)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="mlp2x_gelu"):
        build(projector="mlp2x_relu")
    with pytest.raises(ValueError, match="select_feature"):
        build(select_feature="cls")
    with pytest.raises(ValueError, match="out of range"):
        build(select_layer=7)
    with pytest.raises(ValueError, match="with_cls=True"):
        build(select_feature="cls_patch")({"enc": features(1, with_cls=False)})
    with pytest.raises(KeyError, match="enc"):
        build()({"other": features(1)})


def test_frames_are_images_laid_end_to_end() -> None:
    bridge = build()
    feats = features(6)  # 3 media x 2 frames
    out = bridge({"enc": feats}, num_frames=2)
    assert out.shape == (3, bridge.num_visual_tokens(2), LM) == (3, 32, LM)
    per_image = bridge({"enc": feats})  # (6, 16, D)
    torch.testing.assert_close(out, per_image.reshape(3, 32, LM))


def test_register_tokens_dropped_cls_kept_and_encoder_dtype_cast() -> None:
    feats = features(2)
    cls, patches = feats.hidden[1][:, :1], feats.hidden[1][:, 1:]
    registers = torch.randn(2, 2, WIDTH)
    with_regs = VisionFeatures(
        tuple(torch.cat([h[:, :1], registers, h[:, 1:]], 1) for h in feats.hidden),
        feats.layers,
        GRID,
        WIDTH,
        num_prefix=3,
    )
    bridge = build(select_feature="cls_patch")
    torch.testing.assert_close(bridge({"enc": with_regs}), bridge.projector(torch.cat([cls, patches], 1)))
    plain = build()
    torch.testing.assert_close(plain({"enc": with_regs}), plain.projector(patches))
    half = VisionFeatures(tuple(h.bfloat16() for h in feats.hidden), feats.layers, GRID, WIDTH, 1)
    assert build()({"enc": half}).dtype == torch.float32


def test_zero_media() -> None:
    out = build()({"enc": features(0)}, num_frames=2)
    assert out.shape == (0, 32, LM)


# ---------------------------------------------------------------- invariants


def test_samples_independent_and_permutation_equivariant() -> None:
    bridge = build(select_layer=[-3, -1])
    feats = features(4)
    out = bridge({"enc": feats})
    alone = bridge({"enc": VisionFeatures(tuple(h[1:2] for h in feats.hidden), feats.layers, GRID, WIDTH, 1)})
    torch.testing.assert_close(alone[0], out[1])
    perm = torch.tensor([2, 0, 3, 1])
    permuted = VisionFeatures(tuple(h[perm] for h in feats.hidden), feats.layers, GRID, WIDTH, 1)
    torch.testing.assert_close(bridge({"enc": permuted}), out[perm])


@pytest.mark.parametrize(
    ("overrides", "frames"),
    [
        ({}, 1),
        ({"projector": "linear", "select_layer": [0, 1]}, 2),
        ({"projector": "mlp3x_gelu", "select_feature": "cls_patch"}, 1),
    ],
)
def test_flops_match_counter(overrides: dict, frames: int) -> None:
    bridge = build(**overrides)
    feats = features(frames)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        bridge({"enc": feats}, num_frames=frames)
    assert counter.get_total_flops() == pytest.approx(bridge.flops_per_media(frames), rel=0.1)


# ---------------------------------------------------------------- sizes and config


def test_paper_presets_within_one_percent_on_meta() -> None:
    presets = [p for p in paper_presets() if p.bridge == "mlp"]
    assert {p.name for p in presets} >= {"llava15_7b", "llava15_13b"}
    for preset in presets:
        with torch.device("meta"):
            bridge = BRIDGES.build({"name": "mlp", **preset.overrides}, preset.io)
        count = sum(p.numel() for p in bridge.parameters() if p.requires_grad)
        assert count == pytest.approx(preset.expected_params, rel=0.01), preset.name
    assert get_preset("mlp", "llava15_7b").expected_params == 20_980_000


def test_tiny_preset_builds_and_runs() -> None:
    preset = get_preset("mlp", "tiny")
    bridge = BRIDGES.build({"name": "mlp", **preset.overrides}, preset.io)
    enc = preset.io.encoder
    hidden = tuple(torch.randn(2, enc.grid[0] * enc.grid[1], enc.width) for _ in range(enc.num_layers))
    out = bridge({enc.name: VisionFeatures(hidden, tuple(range(enc.num_layers)), enc.grid, enc.width)})
    assert out.shape == (2, bridge.num_visual_tokens(), preset.io.lm.hidden_size)


def test_yaml_matches_dataclass_defaults() -> None:
    spec = OmegaConf.load(REPO / "experiments/configs/bridge/mlp.yaml")
    entry, config = BRIDGES.make_config(spec)
    assert entry.cls is MLPBridge and config == MLPBridgeConfig()
    _, listed = BRIDGES.make_config({"name": "mlp", "select_layer": [-2, -1]})
    assert listed.select_layer == [-2, -1]


def test_build_projector_layout_is_reused() -> None:
    assert [type(m) for m in build().projector] == [type(m) for m in build_projector("mlp2x_gelu", WIDTH, LM)]


# ---------------------------------------------------------------- learning through MultimodalLM


@pytest.mark.parametrize("bridge", [{"name": "mlp"}, {"name": "mlp", "projector": "linear", "select_layer": [-2, -1]}])
def test_learns_through_multimodal_lm(bridge: dict) -> None:
    from test_llm_fakes import fake_encoders, make_batch, train_losses

    from llm_adapters.multimodal_lm import build_multimodal_lm

    model = build_multimodal_lm(fake_encoders(), bridge, "tiny_llama")
    batch = make_batch(model.lm, ["a <image> red square", "<image> two <image> blue circles"])
    losses = train_losses(model, batch)
    assert losses[-1] < losses[0] - 0.05, losses
