"""The ``eagle`` bridge: experts on a common grid, channel concatenation, projector; its three variants."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

import bridges  # noqa: F401  (registers the built-in bridges)
from bridges.base import BRIDGES, BridgeIO, EncoderInfo, LMInfo
from bridges.eagle import EagleBridge, EagleBridgeConfig
from bridges.presets import get_preset
from encoders.base import VisionFeatures
from encoders.registry import ConfigError

# three experts with different widths and grids: native 4x4, 8x8 unshuffled by 2, 3x3 resized up
EXPERTS = (EncoderInfo("a", 12, (4, 4), 2), EncoderInfo("b", 4, (8, 8), 2), EncoderInfo("c", 6, (3, 3), 2))
LM = LMInfo(24)
UNSHUFFLE = {"b": 2}


def _bridge(experts=EXPERTS, **overrides) -> EagleBridge:
    overrides.setdefault("pixel_unshuffle", {k: v for k, v in UNSHUFFLE.items() if k in {e.name for e in experts}})
    return BRIDGES.build({"name": "eagle", **overrides}, BridgeIO(tuple(experts), LM)).eval()


def _features(n: int, experts=EXPERTS) -> dict[str, VisionFeatures]:
    return {
        e.name: VisionFeatures((torch.randn(n, e.grid[0] * e.grid[1], e.width),), (1,), e.grid, e.width)
        for e in experts
    }


def _index(features: dict[str, VisionFeatures], index) -> dict[str, VisionFeatures]:
    return {k: VisionFeatures((f.hidden[0][index],), f.layers, f.grid, f.width) for k, f in features.items()}


def _eagle_reference_tokens(features: dict[str, VisionFeatures], grid_size: int) -> torch.Tensor:
    """The released code's fusion, written as EG does it (transpose + reshape, SAM-style unshuffle, resize on width)."""
    out = []
    for e in EXPERTS:
        feature = features[e.name].hidden[0]
        b, n, c = feature.shape
        if e.name in UNSHUFFLE:
            h = w = int(n**0.5)
            feature = F.pixel_unshuffle(feature.transpose(1, 2).reshape(b, c, h, w), UNSHUFFLE[e.name])
        else:
            if n == grid_size**2:
                out.append(feature)
                continue
            h = w = int(n**0.5)
            feature = feature.transpose(1, 2).reshape(b, c, h, w)
        if feature.shape[-1] != grid_size:
            feature = F.interpolate(feature.float(), size=(grid_size, grid_size), mode="bilinear", align_corners=True)
        out.append(feature.flatten(2, 3).transpose(1, 2))
    return torch.cat(out, dim=-1)


def test_registered_with_yaml_and_strict_config() -> None:
    yaml = OmegaConf.load(Path(__file__).parents[1] / "experiments/configs/bridge/eagle.yaml")
    entry, config = BRIDGES.make_config(yaml)
    assert entry.cls is EagleBridge and config == EagleBridgeConfig()
    with pytest.raises(ConfigError, match="grid_sise"):
        BRIDGES.make_config({"name": "eagle", "grid_sise": 3})


def test_matches_released_code_and_llava_projector() -> None:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    sum_c = 12 + 4 * 4 + 6
    ref = LlavaMultiModalProjector(
        LlavaConfig(
            vision_config=CLIPVisionConfig(hidden_size=sum_c, num_attention_heads=1),
            text_config=LlamaConfig(hidden_size=24, num_attention_heads=2),
        )
    ).eval()
    bridge = EagleBridge.from_reference(ref, BridgeIO(EXPERTS, LM), pixel_unshuffle=UNSHUFFLE).eval()
    assert bridge.grid == (4, 4)
    for n in (1, 3):
        features = _features(n)
        with torch.no_grad():
            expected = ref(_eagle_reference_tokens(features, 4))
            torch.testing.assert_close(bridge(features), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_tokens_per_image_do_not_depend_on_expert_count(count: int) -> None:
    experts = EXPERTS[:count]
    bridge = _bridge(experts)
    out = bridge(_features(2, experts))
    assert out.shape == (2, 16, 24) and bridge.num_visual_tokens() == 16


def test_grid_size_override_and_errors() -> None:
    bridge = _bridge(grid_size=6)
    assert bridge(_features(1)).shape == (1, 36, 24)
    with pytest.raises(ValueError, match="unknown experts"):
        _bridge(pixel_unshuffle={"zz": 2})
    with pytest.raises(ValueError, match="not divisible"):
        _bridge(pixel_unshuffle={"c": 2})
    with pytest.raises(ValueError, match="variant"):
        _bridge(variant="mixture")
    with pytest.raises(KeyError, match="No features for experts"):
        _bridge()({"a": _features(1)["a"]})


@pytest.mark.parametrize("grid_size", [2, 1])
def test_area_downsample_averages_every_patch_and_grows_bilinearly(grid_size: int) -> None:
    # a (4x4), b (8x8 -> 4x4 after unshuffle) shrink by average pooling; c (3x3) shrinks too at 2 and 1
    features = _features(2)
    bridge = _bridge(grid_size=grid_size, downsample="area")
    expected = []
    for e in EXPERTS:
        x = rearrange_grid(features[e.name].hidden[0], e.grid)
        if e.name in UNSHUFFLE:
            x = F.pixel_unshuffle(x, UNSHUFFLE[e.name])
        expected.append(F.adaptive_avg_pool2d(x, grid_size).flatten(2).transpose(1, 2))
    with torch.no_grad():
        assert torch.allclose(torch.cat(bridge.expert_grids(features), -1), torch.cat(expected, -1), atol=1e-6)
        # the released bilinear resize keeps only corner patches here: the two differ
        corners = torch.cat(_bridge(grid_size=grid_size).expert_grids(features), -1)
        assert not torch.allclose(corners, torch.cat(expected, -1), atol=1e-3)
    assert bridge.num_visual_tokens() == grid_size**2
    # a grid that grows (c at 3x3 -> 4x4) is resized bilinearly either way
    grown = _bridge(downsample="area").expert_grids(features)[2]
    torch.testing.assert_close(grown, _bridge().expert_grids(features)[2], atol=0, rtol=0)
    with pytest.raises(ValueError, match="downsample"):
        _bridge(downsample="nearest")


def rearrange_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(N, h*w, C)`` -> ``(N, C, h, w)``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def test_samples_independent_permutation_and_frames() -> None:
    bridge = _bridge()
    features = _features(6)
    with torch.no_grad():
        out = bridge(features)
        perm = [5, 2, 0, 1, 4, 3]
        torch.testing.assert_close(bridge(_index(features, perm)), out[perm], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bridge(_index(features, slice(4, 5))), out[4:5], atol=1e-5, rtol=1e-5)
        video = bridge(features, num_frames=3)  # 2 videos of 3 frames: frames as images, frame-major
    assert video.shape == (2, 3 * 16, 24) and bridge.num_visual_tokens(3) == 48
    torch.testing.assert_close(video.reshape(6, 16, 24), out, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of num_frames"):
        bridge(features, num_frames=4)


def test_sequence_append_appends_per_expert_projections() -> None:
    bridge = _bridge(variant="sequence_append", expert_projector="linear")
    features = _features(2)
    with torch.no_grad():
        out = bridge(features)
        grids = bridge.expert_grids(features)
        expected = torch.cat([proj(g) for proj, g in zip(bridge.expert_projectors, grids)], dim=1)
    assert out.shape == (2, 3 * 16, 24) and bridge.num_visual_tokens() == 48
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    assert set(bridge.param_groups()) == {"bridge.projector"}


def test_pre_alignment_stage_uses_one_expert_and_its_projector() -> None:
    bridge = _bridge(variant="pre_alignment", pre_align_expert="b")
    groups = bridge.param_groups()
    assert set(groups) == {"bridge.projector", "bridge.pre_alignment"}
    assert sum(len(g) for g in groups.values()) == len(list(bridge.parameters()))
    features = _features(2)
    other = dict(features, a=_features(2)["a"])  # changing another expert changes nothing in this stage
    with torch.no_grad():
        out = bridge(features)
        torch.testing.assert_close(bridge(other), out, atol=0, rtol=0)
        expected = bridge.expert_projectors[1](bridge.expert_grids(features, only=1)[0])
    assert out.shape == (2, 16, 24)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    bridge.pre_align(None)  # joint stage: the concatenated-channel projector, as released
    with torch.no_grad():
        joint = bridge(features)
        torch.testing.assert_close(joint, bridge.projector(torch.cat(bridge.expert_grids(features), -1)))
    with pytest.raises(ValueError, match="Unknown expert"):
        bridge.pre_align("zz")
    with pytest.raises(ValueError, match="pre_alignment"):
        _bridge(pre_align_expert="a")


def test_pre_alignment_gradients_reach_only_the_active_projector() -> None:
    bridge = _bridge(variant="pre_alignment", pre_align_expert="c").train()
    bridge(_features(2)).square().mean().backward()
    grads = {name: p.grad is not None for name, p in bridge.named_parameters()}
    assert all(v for k, v in grads.items() if k.startswith("expert_projectors.2."))
    assert not any(v for k, v in grads.items() if not k.startswith("expert_projectors.2."))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"variant": "sequence_append"},
        {"variant": "pre_alignment", "pre_align_expert": "a"},
        {"projector": "linear"},
    ],
)
def test_flops_match_counter(overrides: dict) -> None:
    bridge = _bridge(**overrides)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        bridge(_features(2), num_frames=2)
    measured = counter.get_total_flops()
    assert abs(bridge.flops_per_media(2) - measured) <= 0.1 * measured


@pytest.mark.parametrize("name", ["eagle_x5_7b", "eagle_x4_7b"])
def test_paper_preset_params(name: str) -> None:
    preset = get_preset("eagle", name)
    with torch.device("meta"):
        bridge = BRIDGES.build({"name": "eagle", **preset.overrides}, preset.io)
    assert preset.count == "bridge" and set(bridge.param_groups()) == {"bridge.projector"}
    counted = sum(p.numel() for p in bridge.parameters())
    assert abs(counted - preset.expected_params) <= 0.01 * preset.expected_params
    assert bridge.num_visual_tokens() == 1024 and sum(bridge.widths) == (7680 if "x5" in name else 6656)


def test_tiny_preset_builds_and_runs() -> None:
    preset = get_preset("eagle", "tiny")
    bridge = BRIDGES.build({"name": "eagle", **preset.overrides}, preset.io)
    assert bridge(_features(2, preset.io.encoders)).shape == (2, 16, 64)


@pytest.mark.parametrize("variant", ["released", "sequence_append"])
def test_zero_media_dtype_cast_and_registers(variant: str) -> None:
    bridge = _bridge(variant=variant)
    tokens = bridge.num_visual_tokens(2)
    assert bridge(_features(0), num_frames=2).shape == (0, tokens, 24)
    features = _features(2)
    with torch.no_grad():
        out = bridge(features)
        half = {k: VisionFeatures((f.hidden[0].bfloat16(),), f.layers, f.grid, f.width) for k, f in features.items()}
        assert bridge(half).dtype == torch.float32
        # prefix tokens (CLS, registers) are not part of the grid
        a = features["a"].hidden[0]
        with_prefix = dict(features, a=VisionFeatures((torch.cat((torch.randn(2, 3, 12), a), 1),), (1,), (4, 4), 12, 3))
        torch.testing.assert_close(bridge(with_prefix), out, atol=0, rtol=0)


# ---- learning through MultimodalLM ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"variant": "sequence_append"},
        {"variant": "pre_alignment", "pre_align_expert": "conv"},
        {"pixel_unshuffle": {"conv": 2}, "projector": "linear"},
    ],
)
def test_learns_through_multimodal_lm(overrides: dict) -> None:
    from test_llm_fakes import TinyConvEncoder, make_batch, train_losses

    from encoders.encoder_set import EncoderSet
    from llm_adapters.multimodal_lm import build_multimodal_lm

    # a 2x2-grid expert and a 4x4-grid one: resized (or unshuffled) to the first expert's grid
    encoders = EncoderSet({"vit": TinyConvEncoder(32), "conv": TinyConvEncoder(16, patch=4)})
    model = build_multimodal_lm(encoders, {"name": "eagle", **overrides}, "tiny_llama")
    assert model.bridge.num_visual_tokens() == (8 if overrides.get("variant") == "sequence_append" else 4)
    batch = make_batch(model.lm, ["a <image> red square", "<image> two <image> blue circles"], frames=2)
    losses = train_losses(model, batch)
    assert losses[-1] < losses[0] - 0.05, losses
