"""The average-pooling bridge (MM1's "average pooling"): pooling arithmetic, equality with the MLP bridge at full
token count, token-count validation, invariants, FLOPs, presets, config and learning through MultimodalLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

import bridges  # noqa: F401  (registers the built-in bridges)
from bridges.avgpool import AvgPoolBridge, AvgPoolBridgeConfig
from bridges.base import BRIDGES, BridgeIO, EncoderInfo, LMInfo
from bridges.presets import get_preset
from encoders.base import VisionFeatures
from encoders.registry import ConfigError

REPO = Path(__file__).resolve().parents[1]
WIDTH, GRID, LAYERS, LM = 16, (4, 4), 3, 24


def io(grid: tuple[int, int] = GRID) -> BridgeIO:
    return BridgeIO((EncoderInfo("enc", WIDTH, grid, LAYERS),), LMInfo(LM))


def features(n: int, grid: tuple[int, int] = GRID, seed: int = 0, with_cls: bool = True) -> VisionFeatures:
    g = torch.Generator().manual_seed(seed)
    p = grid[0] * grid[1] + int(with_cls)
    hidden = tuple(torch.randn(n, p, WIDTH, generator=g) for _ in range(LAYERS))
    return VisionFeatures(hidden, tuple(range(LAYERS)), grid, WIDTH, int(with_cls))


def build(grid: tuple[int, int] = GRID, **overrides) -> AvgPoolBridge:
    return BRIDGES.build({"name": "avgpool", **overrides}, io(grid)).eval()


def test_pooling_is_the_mean_of_each_window_in_row_major_order() -> None:
    bridge = build(num_tokens=4)
    feats = features(2)
    patches = feats.hidden[1][:, 1:].reshape(2, 4, 4, WIDTH)  # layer -2, CLS dropped
    expected = torch.stack(
        [patches[:, r : r + 2, c : c + 2].mean((1, 2)) for r in (0, 2) for c in (0, 2)], dim=1
    )  # (2, 4, Dv): cells (0,0), (0,1), (1,0), (1,1)
    torch.testing.assert_close(bridge.pool({"enc": feats}), expected)
    out = bridge({"enc": feats})
    assert out.shape == (2, 4, LM) == (2, bridge.num_visual_tokens(), LM)
    torch.testing.assert_close(out, bridge.projector(expected))


def test_full_token_count_is_the_mlp_bridge() -> None:
    ours = build(num_tokens=16)
    mlp = BRIDGES.build({"name": "mlp"}, io()).eval()
    mlp.projector.load_state_dict(ours.projector.state_dict())
    feats = features(3)
    torch.testing.assert_close(ours({"enc": feats}), mlp({"enc": feats}))


def test_one_token_is_the_global_mean_and_rectangular_grids_pool() -> None:
    feats = features(2, grid=(4, 6))
    bridge = build(grid=(4, 6), num_tokens=1, projector="linear")
    torch.testing.assert_close(bridge.pool({"enc": feats})[:, 0], feats.hidden[1][:, 1:].mean(1))
    assert build(grid=(4, 6), num_tokens=16)({"enc": feats}).shape == (2, 16, LM)


@pytest.mark.parametrize("bad", [2, 5, 25])
def test_token_count_checked_against_the_grid(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"avgpool: num_tokens={bad}.*4 x 4 encoder grid.*\[1, 4, 9, 16\]"):
        build(num_tokens=bad)


def test_other_errors_name_the_problem() -> None:
    for bad in (0, -4):
        with pytest.raises(ConfigError, match=rf"'bridge.num_tokens' = {bad} is out of range .*allowed >= 1"):
            build(num_tokens=bad)
    with pytest.raises(ValueError, match="mlp2x_gelu"):
        build(num_tokens=4, projector="mlp2x_relu")
    with pytest.raises(ValueError, match="out of range"):
        build(num_tokens=4, layer=9)
    with pytest.raises(ValueError, match="multiple of num_frames"):
        build(num_tokens=4)({"enc": features(3)}, num_frames=2)
    with pytest.raises(ValueError, match="4 x 4 = 16 patch tokens"):
        build(num_tokens=4)({"enc": features(1, grid=(3, 3))})


def test_frames_laid_end_to_end_and_zero_media() -> None:
    bridge = build(num_tokens=4)
    feats = features(6)
    out = bridge({"enc": feats}, num_frames=3)
    assert out.shape == (2, bridge.num_visual_tokens(3), LM) == (2, 12, LM)
    torch.testing.assert_close(out, bridge({"enc": feats}).reshape(2, 12, LM))
    assert bridge({"enc": features(0)}, num_frames=2).shape == (0, 8, LM)


def test_samples_independent_permutation_equivariant_and_locality() -> None:
    bridge = build(num_tokens=4)
    feats = features(4)
    out = bridge({"enc": feats})
    perm = torch.tensor([3, 1, 0, 2])
    permuted = VisionFeatures(tuple(h[perm] for h in feats.hidden), feats.layers, GRID, WIDTH, 1)
    torch.testing.assert_close(bridge({"enc": permuted}), out[perm])
    alone = VisionFeatures(tuple(h[2:3] for h in feats.hidden), feats.layers, GRID, WIDTH, 1)
    torch.testing.assert_close(bridge({"enc": alone})[0], out[2])
    hidden = [h.clone() for h in feats.hidden]
    hidden[1][:, 1] += 10.0  # patch (0, 0) of layer -2
    changed = (bridge({"enc": VisionFeatures(tuple(hidden), feats.layers, GRID, WIDTH, 1)}) - out).abs().amax((0, 2))
    assert changed[0] > 1e-3 and torch.all(changed[1:] == 0)


def test_bf16_features_cast_to_the_bridge_dtype() -> None:
    feats = features(2)
    half = VisionFeatures(tuple(h.bfloat16() for h in feats.hidden), feats.layers, GRID, WIDTH, 1)
    assert build(num_tokens=4)({"enc": half}).dtype == torch.float32


@pytest.mark.parametrize(
    ("overrides", "frames"),
    [
        ({"num_tokens": 4}, 1),
        ({"num_tokens": 1, "projector": "linear"}, 2),
        ({"num_tokens": 9, "projector": "mlp3x_gelu"}, 1),
    ],
)
def test_flops_match_counter(overrides: dict, frames: int) -> None:
    bridge = build(**overrides)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        bridge({"enc": features(frames)}, num_frames=frames)
    assert counter.get_total_flops() == pytest.approx(bridge.flops_per_media(frames), rel=0.1)


def test_presets() -> None:
    paper = get_preset("avgpool", "llava15_7b_144")
    with torch.device("meta"):
        bridge = BRIDGES.build({"name": "avgpool", **paper.overrides}, paper.io)
        mlp = BRIDGES.build({"name": "mlp"}, paper.io)
    count = sum(p.numel() for p in bridge.parameters())
    assert count == sum(p.numel() for p in mlp.parameters())  # pooling adds no parameters
    assert count == pytest.approx(paper.expected_params, rel=0.01) and bridge.num_visual_tokens() == 144
    tiny = get_preset("avgpool", "tiny")
    small = BRIDGES.build({"name": "avgpool", **tiny.overrides}, tiny.io)
    enc = tiny.io.encoder
    hidden = tuple(torch.randn(2, enc.grid[0] * enc.grid[1], enc.width) for _ in range(enc.num_layers))
    out = small({enc.name: VisionFeatures(hidden, tuple(range(enc.num_layers)), enc.grid, enc.width)})
    assert out.shape == (2, 4, tiny.io.lm.hidden_size)


def test_yaml_matches_dataclass_defaults() -> None:
    entry, config = BRIDGES.make_config(OmegaConf.load(REPO / "experiments/configs/bridge/avgpool.yaml"))
    assert entry.cls is AvgPoolBridge and config == AvgPoolBridgeConfig()


def test_learns_through_multimodal_lm() -> None:
    from test_llm_fakes import fake_encoders, make_batch, train_losses

    from llm_adapters.multimodal_lm import build_multimodal_lm

    model = build_multimodal_lm(fake_encoders(), {"name": "avgpool", "num_tokens": 1}, "tiny_llama")
    assert model.bridge.num_visual_tokens() == 1
    batch = make_batch(model.lm, ["a <image> red square", "<image> two <image> blue circles"])
    losses = train_losses(model, batch)
    assert losses[-1] < losses[0] - 0.05, losses
