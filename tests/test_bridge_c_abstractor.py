"""Honeybee's C-Abstractor: Honeybee's module layout and weights, locality, token-count validation, invariants,
FLOPs, its size at Honeybee's configuration, config and learning through MultimodalLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from einops import rearrange
from omegaconf import OmegaConf
from timm.layers import LayerNorm2d
from timm.models.regnet import Bottleneck, RegStage
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import bridges  # noqa: F401  (registers the built-in bridges)
from bridges.base import BRIDGES, BridgeIO, EncoderInfo, LMInfo
from bridges.c_abstractor import CAbstractorBridge, CAbstractorConfig
from bridges.presets import get_preset
from encoders.base import VisionFeatures
from encoders.registry import ConfigError

REPO = Path(__file__).resolve().parents[1]
WIDTH, GRID, LAYERS, LM = 16, (8, 8), 2, 24
SMALL = {"num_tokens": 16, "depth": 1, "hidden_size": 24}


def io(grid: tuple[int, int] = GRID) -> BridgeIO:
    return BridgeIO((EncoderInfo("enc", WIDTH, grid, LAYERS),), LMInfo(LM))


def features(n: int, grid: tuple[int, int] = GRID, seed: int = 0) -> VisionFeatures:
    g = torch.Generator().manual_seed(seed)
    hidden = tuple(torch.randn(n, grid[0] * grid[1] + 1, WIDTH, generator=g) for _ in range(LAYERS))
    return VisionFeatures(hidden, tuple(range(LAYERS)), grid, WIDTH, 1)


def build(grid: tuple[int, int] = GRID, **overrides) -> CAbstractorBridge:
    torch.manual_seed(0)
    return BRIDGES.build({"name": "c_abstractor", **SMALL, **overrides}, io(grid)).eval()


def _randomize(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (0.5 if p.dim() == 1 else 0.0))


class HoneybeeLayout(nn.Module):
    """Honeybee's ``CAbstractor`` as its projectors.py builds it (RegStage blocks, pooling, RegStage blocks, SiLU
    readout), with an old-style position embedding holding a CLS row, and its forward on patch tokens."""

    def __init__(self, width: int, hidden: int, depth: int, side: int, patches: int, lm: int) -> None:
        super().__init__()
        stage = {"stride": 1, "dilation": 1, "act_layer": nn.SiLU, "norm_layer": LayerNorm2d}
        self.pos_emb = nn.Parameter(torch.randn(1, 1 + patches, width))
        self.net = nn.Sequential(
            RegStage(depth, width, hidden, **stage),
            nn.AdaptiveAvgPool2d((side, side)),
            RegStage(depth, hidden, hidden, **stage),
        )
        self.readout = nn.Sequential(nn.Linear(hidden, lm), nn.SiLU(), nn.Linear(lm, lm))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches + self.pos_emb[:, 1:]
        hw = int(x.shape[1] ** 0.5)
        x = self.net(rearrange(x, "b (h w) d -> b d h w", h=hw, w=hw))
        return self.readout(rearrange(x, "b d h w -> b (h w) d"))


def test_loads_honeybee_weights_and_matches_its_forward() -> None:
    ref = HoneybeeLayout(WIDTH, 24, 2, 4, 64, LM).eval()
    _randomize(ref)
    bridge = build(depth=2)
    bridge.load_honeybee_state_dict({f"abstractor.{k}": v for k, v in ref.state_dict().items()})
    feats = features(3)
    with torch.no_grad():
        torch.testing.assert_close(bridge({"enc": feats}), ref(feats.hidden[-1][:, 1:]), atol=1e-5, rtol=1e-5)
    blocks = [m for m in bridge.net.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 4 and all(isinstance(b.se, nn.Module) and hasattr(b.se, "fc1") for b in blocks)
    assert isinstance(bridge.readout[1], nn.SiLU)


def test_depth_zero_is_pooling_then_readout() -> None:
    bridge = build(depth=0, pos_emb=False, num_tokens=4)
    assert bridge.readout[0].in_features == WIDTH and len(bridge.net) == 1
    feats = features(2)
    pooled = nn.functional.adaptive_avg_pool2d(rearrange(feats.hidden[-1][:, 1:], "n (h w) c -> n c h w", h=8), 2)
    expected = bridge.readout(rearrange(pooled, "n c h w -> n (h w) c"))
    torch.testing.assert_close(bridge({"enc": feats}), expected)


def _changed_tokens(bridge: CAbstractorBridge, patch: int) -> torch.Tensor:
    feats = features(2)
    hidden = [h.clone() for h in feats.hidden]
    hidden[-1][:, 1 + patch] += 5.0
    with torch.no_grad():
        base = bridge({"enc": feats})
        moved = bridge({"enc": VisionFeatures(tuple(hidden), feats.layers, GRID, WIDTH, 1)})
    return (moved - base).abs().amax((0, 2)) > 1e-5


def test_locality_without_se() -> None:
    """8 x 8 patches pooled to 4 x 4: a corner patch reaches only its own cell with depth 0, and only the 2 x 2
    corner cells with one 3x3 block on each side of the pooling (SE off: SE gates channels from the image mean)."""
    changed = _changed_tokens(build(depth=0), patch=0)
    assert changed.nonzero().flatten().tolist() == [0]
    changed = _changed_tokens(build(depth=1, se_ratio=0.0), patch=0)
    assert changed.nonzero().flatten().tolist() == [0, 1, 4, 5]
    changed = _changed_tokens(build(depth=1, se_ratio=0.0), patch=63)  # bottom-right patch
    assert changed.nonzero().flatten().tolist() == [10, 11, 14, 15]
    assert bool(_changed_tokens(build(depth=1), patch=0).all())  # with SE (the default) the image mean reaches all


@pytest.mark.parametrize("bad", [8, 81])
def test_token_count_checked_against_the_grid(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"c_abstractor: num_tokens={bad} .*8 x 8 encoder grid.*64\]"):
        build(num_tokens=bad)


def test_other_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match=r"'bridge.mlp_depth' = 0 is out of range .*allowed >= 1"):
        build(mlp_depth=0)
    with pytest.raises(ConfigError, match=r"'bridge.depth' = -1 is out of range .*allowed >= 0"):
        build(depth=-1)
    with pytest.raises(ConfigError, match=r"'bridge.num_tokens' = 0 is out of range"):
        build(num_tokens=0)
    with pytest.raises(ValueError, match="multiple of num_frames"):
        build()({"enc": features(3)}, num_frames=2)
    with pytest.raises(ValueError, match="8 x 8 = 64 patch tokens"):
        build(pos_emb=False)({"enc": features(1, grid=(4, 4))})


def test_samples_independent_permutation_frames_and_rectangular_grid() -> None:
    bridge = build()
    feats = features(4)
    out = bridge({"enc": feats})
    assert out.shape == (4, 16, LM)
    perm = torch.tensor([1, 3, 0, 2])
    permuted = VisionFeatures(tuple(h[perm] for h in feats.hidden), feats.layers, GRID, WIDTH, 1)
    torch.testing.assert_close(bridge({"enc": permuted}), out[perm], atol=1e-5, rtol=1e-5)
    alone = VisionFeatures(tuple(h[1:2] for h in feats.hidden), feats.layers, GRID, WIDTH, 1)
    torch.testing.assert_close(bridge({"enc": alone})[0], out[1], atol=1e-5, rtol=1e-5)
    video = bridge({"enc": feats}, num_frames=2)
    assert video.shape == (2, bridge.num_visual_tokens(2), LM)
    torch.testing.assert_close(video, out.reshape(2, 32, LM))
    wide = build(grid=(4, 6), num_tokens=9)
    assert wide({"enc": features(2, grid=(4, 6))}).shape == (2, 9, LM)


@pytest.mark.parametrize(
    ("overrides", "frames"),
    [({}, 1), ({"depth": 2, "se_ratio": 0.0}, 2), ({"depth": 0, "num_tokens": 4}, 1), ({"hidden_size": WIDTH}, 1)],
)
def test_flops_match_counter(overrides: dict, frames: int) -> None:
    bridge = build(**overrides)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        bridge({"enc": features(frames)}, num_frames=frames)
    assert counter.get_total_flops() == pytest.approx(bridge.flops_per_media(frames), rel=0.1)


def _honeybee_params(dv: int, hidden: int, depth: int, patches: int, d_lm: int, se_ratio: float = 0.25) -> int:
    """Parameters by hand from projectors.py and timm's Bottleneck (bottle_ratio 1, depthwise 3x3, bias-free convs
    with LayerNorm2d, SE with biases, a 1x1 conv + norm shortcut when the width changes)."""

    def block(cin: int, cout: int) -> int:
        se = round(cin * se_ratio)
        convs = cin * cout + 9 * cout + cout * cout + 3 * 2 * cout
        shortcut = cin * cout + 2 * cout if cin != cout else 0
        return convs + (cout * se + se) + (se * cout + cout) + shortcut

    stages = block(dv, hidden) + (depth - 1) * block(hidden, hidden) + depth * block(hidden, hidden)
    readout = hidden * d_lm + d_lm + d_lm * d_lm + d_lm
    return stages + patches * dv + readout


def test_size_at_honeybees_configuration() -> None:
    preset = get_preset("c_abstractor", "honeybee_c_7b_m144")
    assert CAbstractorConfig() == CAbstractorConfig(**preset.overrides)  # the defaults are Honeybee's
    with torch.device("meta"):
        bridge = BRIDGES.build({"name": "c_abstractor", **preset.overrides}, preset.io)
    count = sum(p.numel() for p in bridge.parameters())
    assert count == _honeybee_params(1024, 1024, 3, 256, 4096) == preset.expected_params
    assert bridge.num_visual_tokens() == 144
    with torch.device("meta"):  # the formula also holds where the width changes (a shortcut conv)
        other = BRIDGES.build({"name": "c_abstractor", **SMALL}, io())
    assert sum(p.numel() for p in other.parameters()) == _honeybee_params(WIDTH, 24, 1, 64, LM)


def test_tiny_preset_and_yaml() -> None:
    tiny = get_preset("c_abstractor", "tiny")
    small = BRIDGES.build({"name": "c_abstractor", **tiny.overrides}, tiny.io)
    enc = tiny.io.encoder
    hidden = tuple(torch.randn(2, 16, enc.width) for _ in range(enc.num_layers))
    assert small({enc.name: VisionFeatures(hidden, (0, 1), enc.grid, enc.width)}).shape == (2, 4, 64)
    entry, config = BRIDGES.make_config(OmegaConf.load(REPO / "experiments/configs/bridge/c_abstractor.yaml"))
    assert entry.cls is CAbstractorBridge and config == CAbstractorConfig()
    groups = small.param_groups()
    assert set(groups) == {"bridge.abstractor", "bridge.projector"}
    assert sum(p.numel() for g in groups.values() for p in g) == sum(p.numel() for p in small.parameters())


def test_learns_through_multimodal_lm() -> None:
    from test_llm_fakes import fake_encoders, make_batch, train_losses

    from llm_adapters.multimodal_lm import build_multimodal_lm

    bridge = {"name": "c_abstractor", "num_tokens": 1, "depth": 1, "hidden_size": 32}
    model = build_multimodal_lm(fake_encoders(), bridge, "tiny_llama")
    batch = make_batch(model.lm, ["a <image> red square", "<image> two <image> blue circles"])
    losses = train_losses(model, batch)
    assert losses[-1] < losses[0] - 0.05, losses
