"""The pixel-shuffle bridge: parity with transformers' Idefics3Connector, the space-to-depth layout, token-count
validation, invariants, FLOPs, presets, config and learning through MultimodalLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

import bridges  # noqa: F401  (registers the built-in bridges)
from bridges.base import BRIDGES, BridgeIO, EncoderInfo, LMInfo
from bridges.common.token_grid import shuffle_factors
from bridges.pixel_shuffle import PixelShuffleBridge, PixelShuffleBridgeConfig, pixel_shuffle
from bridges.presets import get_preset
from encoders.base import VisionFeatures
from encoders.registry import ConfigError

REPO = Path(__file__).resolve().parents[1]
WIDTH, GRID, LAYERS, LM = 8, (4, 4), 2, 24


def io(grid: tuple[int, int] = GRID, width: int = WIDTH) -> BridgeIO:
    return BridgeIO((EncoderInfo("enc", width, grid, LAYERS),), LMInfo(LM))


def features(n: int, grid: tuple[int, int] = GRID, width: int = WIDTH, seed: int = 0) -> VisionFeatures:
    g = torch.Generator().manual_seed(seed)
    hidden = tuple(torch.randn(n, grid[0] * grid[1], width, generator=g) for _ in range(LAYERS))
    return VisionFeatures(hidden, tuple(range(LAYERS)), grid, width, 0)


def build(grid: tuple[int, int] = GRID, **overrides) -> PixelShuffleBridge:
    return BRIDGES.build({"name": "pixel_shuffle", **overrides}, io(grid)).eval()


def idefics3_connector(scale: int, width: int, lm: int):
    from transformers import Idefics3Config
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

    vision = {"hidden_size": width, "num_attention_heads": 4}
    config = Idefics3Config(
        scale_factor=scale, vision_config=vision, text_config={"hidden_size": lm, "num_attention_heads": 4}
    )
    connector = Idefics3Connector(config).eval()
    with torch.no_grad():
        connector.modality_projection.proj.weight.normal_(0.0, 0.2)
    return connector


@pytest.mark.parametrize(("scale", "side", "n"), [(2, 4, 1), (2, 6, 3), (3, 6, 2), (4, 8, 2)])
def test_matches_idefics3_connector(scale: int, side: int, n: int) -> None:
    """Same weights, same patch tokens: our shuffle order and projection equal transformers' Idefics3Connector."""
    ref = idefics3_connector(scale, WIDTH, LM)
    bridge = PixelShuffleBridge.from_reference(ref, io=io((side, side))).eval()
    assert bridge.factor == scale and bridge.config.bias is False and bridge.config.projector == "linear"
    feats = features(n, grid=(side, side))
    with torch.no_grad():
        expected = ref(feats.hidden[-1])
        got = bridge({"enc": feats})
    assert got.shape == expected.shape == (n, (side // scale) ** 2, LM) == (n, bridge.num_visual_tokens(), LM)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_from_reference_default_io_is_idefics3s_grid_and_rejects_other_modules() -> None:
    bridge = PixelShuffleBridge.from_reference(idefics3_connector(2, WIDTH, LM))
    assert bridge.io.encoder.grid == (26, 26) and bridge.io.encoder.width == WIDTH and bridge.num_visual_tokens() == 169
    with pytest.raises(TypeError, match="Linear"):
        PixelShuffleBridge.from_reference(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="scale_factor is 2"):
        PixelShuffleBridge.from_reference(idefics3_connector(2, WIDTH, LM), io=io(), num_tokens=1)


def test_shuffle_layout_channels_are_row_column_channel() -> None:
    """Token (i, j) holds patches (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1) in that channel order."""
    grid = (4, 6)
    x = torch.arange(24, dtype=torch.float32).reshape(1, 24, 1).expand(1, 24, 2) * torch.tensor([1.0, -1.0])
    out = pixel_shuffle(x, grid, 2)
    assert out.shape == (1, 6, 8)
    cols = 6
    for i in range(2):
        for j in range(3):
            patches = [(2 * i + dy) * cols + 2 * j + dx for dy in (0, 1) for dx in (0, 1)]
            expected = torch.tensor([[p, -p] for p in patches], dtype=torch.float32).reshape(-1)
            torch.testing.assert_close(out[0, i * 3 + j], expected)


def test_default_is_factor_two_and_factor_one_is_the_mlp_bridge() -> None:
    assert build().factor == 2 and build().num_visual_tokens() == 4
    ours = build(num_tokens=16, projector="mlp2x_gelu", bias=True, layer=-2)
    mlp = BRIDGES.build({"name": "mlp"}, io()).eval()
    mlp.projector.load_state_dict(ours.projector.state_dict())
    feats = features(2)
    torch.testing.assert_close(ours({"enc": feats}), mlp({"enc": feats}))


def test_pre_norm_normalises_the_shuffled_channels() -> None:
    bridge = build(num_tokens=1, pre_norm=True)
    assert bridge.norm.normalized_shape == (16 * WIDTH,)
    feats = features(2)
    x = pixel_shuffle(feats.hidden[-1], GRID, 4)
    torch.testing.assert_close(bridge({"enc": feats}), bridge.projector(torch.nn.functional.layer_norm(x, (128,))))


def test_token_counts_checked_against_the_grid() -> None:
    assert shuffle_factors((4, 6)) == {24: 1, 6: 2}
    with pytest.raises(ValueError, match=r"pixel_shuffle: num_tokens=8 .*4 x 4 encoder grid.*\[16, 4, 1\]"):
        build(num_tokens=8)
    with pytest.raises(ValueError, match=r"default factor 2 does not divide the 3 x 5"):
        build(grid=(3, 5))
    assert build(grid=(3, 5), num_tokens=15).factor == 1
    with pytest.raises(ConfigError, match=r"'bridge.num_tokens' = 0 is out of range .*\(or null\)"):
        build(num_tokens=0)
    with pytest.raises(ValueError, match="multiple of num_frames"):
        build()({"enc": features(3)}, num_frames=2)
    with pytest.raises(ValueError, match="4 x 4 = 16 patch tokens"):
        build()({"enc": features(1, grid=(2, 2))})


def test_invariants_frames_batch_permutation_locality() -> None:
    bridge = build(num_tokens=4)
    feats = features(4)
    out = bridge({"enc": feats})
    perm = torch.tensor([2, 3, 1, 0])
    permuted = VisionFeatures(tuple(h[perm] for h in feats.hidden), feats.layers, GRID, WIDTH, 0)
    torch.testing.assert_close(bridge({"enc": permuted}), out[perm])
    video = bridge({"enc": feats}, num_frames=2)
    assert video.shape == (2, bridge.num_visual_tokens(2), LM)
    torch.testing.assert_close(video, out.reshape(2, 8, LM))
    hidden = [h.clone() for h in feats.hidden]
    hidden[-1][:, 15] += 5.0  # bottom-right patch -> only the bottom-right token
    changed = (bridge({"enc": VisionFeatures(tuple(hidden), feats.layers, GRID, WIDTH, 0)}) - out).abs().amax((0, 2))
    assert changed[3] > 1e-3 and torch.all(changed[:3] == 0)


@pytest.mark.parametrize(
    ("overrides", "frames"),
    [({}, 1), ({"num_tokens": 1, "projector": "mlp2x_gelu"}, 2), ({"num_tokens": 16, "bias": True}, 1)],
)
def test_flops_match_counter(overrides: dict, frames: int) -> None:
    bridge = build(**overrides)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        bridge({"enc": features(frames)}, num_frames=frames)
    assert counter.get_total_flops() == pytest.approx(bridge.flops_per_media(frames), rel=0.1)


def test_presets() -> None:
    paper = get_preset("pixel_shuffle", "idefics3_8b")
    with torch.device("meta"):
        bridge = BRIDGES.build({"name": "pixel_shuffle", **paper.overrides}, paper.io)
        ref = idefics3_connector(2, 1152, 4096)  # transformers' module at Idefics3Config defaults
    assert bridge.num_visual_tokens() == 169 and bridge.factor == 2
    count = sum(p.numel() for p in bridge.parameters())
    assert count == sum(p.numel() for p in ref.parameters()) == paper.expected_params
    tiny = get_preset("pixel_shuffle", "tiny")
    small = BRIDGES.build({"name": "pixel_shuffle", **tiny.overrides}, tiny.io)
    enc = tiny.io.encoder
    hidden = tuple(torch.randn(2, 16, enc.width) for _ in range(enc.num_layers))
    assert small({enc.name: VisionFeatures(hidden, (0, 1), enc.grid, enc.width)}).shape == (2, 4, 64)


def test_yaml_matches_dataclass_defaults() -> None:
    entry, config = BRIDGES.make_config(OmegaConf.load(REPO / "experiments/configs/bridge/pixel_shuffle.yaml"))
    assert entry.cls is PixelShuffleBridge and config == PixelShuffleBridgeConfig()


def test_learns_through_multimodal_lm() -> None:
    from test_llm_fakes import fake_encoders, make_batch, train_losses

    from llm_adapters.multimodal_lm import build_multimodal_lm

    model = build_multimodal_lm(fake_encoders(), {"name": "pixel_shuffle", "projector": "mlp2x_gelu"}, "tiny_llama")
    assert model.bridge.num_visual_tokens() == 1  # the fake encoder's 2 x 2 grid, factor 2
    batch = make_batch(model.lm, ["a <image> red square", "<image> two <image> blue circles"])
    losses = train_losses(model, batch)
    assert losses[-1] < losses[0] - 0.05, losses
