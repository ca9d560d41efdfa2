"""Flamingo's Table 3 switches: ``gate: none`` (no tanh gating) and ``resampler: perceiver | mlp | transformer``."""

from __future__ import annotations

import pytest
import torch
from test_bridge_flamingo import ENC, SMALL, _bridge, _context, _lm, _logits, _prompt
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bridges.common.gates import TanhGate
from bridges.common.resampler import PerceiverResampler
from bridges.flamingo import FlamingoConfig
from bridges.flamingo_resamplers import MLPResampler, TransformerResampler
from encoders.base import VisionFeatures
from encoders.registry import ConfigError
from experiments.harness.config import load_config

P = ENC.grid[0] * ENC.grid[1]  # 6 visual tokens per frame


def _features(n: int) -> dict[str, VisionFeatures]:
    torch.manual_seed(3)
    return {"tiny": VisionFeatures((torch.randn(n, P, 32),), (1,), ENC.grid, 32)}


# ---- gate: none ---------------------------------------------------------------------------------------------------


def test_gate_none_adds_both_residuals_ungated() -> None:
    lm = _lm()
    bridge = _bridge(lm, attach=False, gate="none")
    block = bridge.xattn["0"]
    assert not any(isinstance(m, TanhGate) for m in bridge.modules())
    assert "bridge.gates" not in bridge.param_groups() and bridge.tanh_gates() == {} and bridge.gate_values() == {}
    groups = bridge.param_groups()
    assert sorted(id(p) for ps in groups.values() for p in ps) == sorted(id(p) for p in bridge.parameters())
    y, media = torch.randn(2, 5, 64), torch.randn(2, 4, 32)
    mask = torch.ones(2, 5, 4, dtype=torch.bool)
    with torch.no_grad():
        kv = block.attn.kv(media)
        got = block.gated(y, kv, mask)
        mid = y + block.attn(y, kv, mask)
        expected = mid + block.ff(mid)
    torch.testing.assert_close(got, expected)


def test_gate_none_changes_the_lm_at_init_where_tanh_gates_do_not() -> None:
    ids, ctx = _prompt()
    logits = {}
    for gate in ("scalar", "none"):
        lm = _lm()
        bridge = _bridge(lm, gate=gate)
        logits[gate] = _logits(lm, bridge, ids, ctx)
        lm.detach()
        with torch.no_grad():
            logits[f"bare_{gate}"] = lm.model(input_ids=ids).logits
    assert torch.equal(logits["scalar"], logits["bare_scalar"])
    assert not torch.allclose(logits["none"], logits["bare_none"])


@pytest.mark.parametrize("key, value", [("gate", "tanh"), ("resampler", "qformer")])
def test_unknown_option_names_key_value_and_choices(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"'bridge.{key}' = '{value}'.*allowed .*none|'bridge.{key}' = '{value}'.*"
                                          r"perceiver, mlp, transformer"):
        FlamingoConfig(**{key: value})


def test_options_reach_the_bridge_from_the_command_line_config() -> None:
    run = load_config(["experiment=smoke", "bridge=flamingo", "bridge.gate=none", "bridge.resampler=transformer"])
    assert run.bridge["gate"] == "none" and run.bridge["resampler"] == "transformer"
    default = load_config(["experiment=smoke", "bridge=flamingo"])
    assert default.bridge["gate"] == "scalar" and default.bridge["resampler"] == "perceiver"


# ---- resampler: perceiver | mlp | transformer -----------------------------------------------------------------------


def test_default_resampler_is_the_perceiver_with_its_openflamingo_names() -> None:
    bridge = _bridge(_lm(), attach=False)
    assert isinstance(bridge.perceiver, PerceiverResampler) and bridge.config.resampler == "perceiver"
    assert "latents" in dict(bridge.perceiver.named_parameters())
    assert bridge.num_visual_tokens(3) == SMALL["num_latents"]


@pytest.mark.parametrize("kind, cls", [("mlp", MLPResampler), ("transformer", TransformerResampler)])
def test_alternatives_keep_every_visual_token(kind: str, cls: type) -> None:
    bridge = _bridge(_lm(), attach=False, resampler=kind)
    assert isinstance(bridge.perceiver, cls)
    assert "bridge.perceiver" in bridge.param_groups()
    memory = bridge.encode(_features(2))
    assert memory.shape == (2, P, 32) and bridge.num_visual_tokens() == P
    video = bridge.encode(_features(2 * 3), num_frames=3)  # 2 videos x 3 frames: all 18 tokens per video
    assert video.shape == (2, 3 * P, 32) and bridge.num_visual_tokens(3) == 3 * P


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_mlp_is_per_token_and_the_transformer_mixes_tokens(kind: str) -> None:
    bridge = _bridge(_lm(), attach=False, resampler=kind)
    feats = _features(1)
    base = bridge.encode(feats)
    changed = feats["tiny"].hidden[0].clone()
    changed[0, 0, 0] += 1.0  # perturb one channel of visual token 0 only (a LayerNorm ignores a uniform shift)
    with torch.no_grad():
        other = bridge.encode({"tiny": VisionFeatures((changed,), (1,), ENC.grid, 32)})
    moved = (other - base).abs().amax(-1)[0] > 1e-6
    assert moved[0]
    assert moved[1:].any() == (kind == "transformer")


def test_transformer_has_the_perceivers_layer_sizes() -> None:
    perceiver, transformer = (_bridge(_lm(), attach=False, resampler=k).perceiver for k in ("perceiver", "transformer"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    depth, width, latents = SMALL["perceiver_depth"], 32, SMALL["num_latents"] * 32
    # the Perceiver has a second LayerNorm per attention (latents and media) and its latents; nothing else differs
    assert count(perceiver) - count(transformer) == latents + depth * 2 * width


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_resampler_flops_match_torch_flop_counter(kind: str) -> None:
    bridge = _bridge(_lm(), attach=False, resampler=kind, max_num_frames=None)
    x = torch.randn(1, 1, 2, P, 32)
    # the MATH backend: FlopCounterMode does not count CPU flash attention, only its decomposition
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        bridge.perceiver(x)
    assert bridge.perceiver.flops(2 * P) == counter.get_total_flops()
    kv = 2 * (2 * P) * 32 * 2 * SMALL["xattn_heads"] * SMALL["xattn_dim_head"] * len(bridge.layer_indices)
    assert bridge.flops_per_media(num_frames=2) == bridge.perceiver.flops(2 * P) + kv


@pytest.mark.parametrize("overrides", [{"resampler": "mlp"}, {"resampler": "transformer"}, {"gate": "none"}])
def test_each_variant_learns_through_the_frozen_lm(overrides: dict) -> None:
    lm = _lm()
    bridge = _bridge(lm, **overrides)
    bridge.train()
    ids, _ = _prompt()
    targets = torch.randint(0, 300, (2, 10))
    opt = torch.optim.Adam(bridge.parameters(), lr=3e-2)
    losses = []
    for _ in range(8):
        with bridge.slot.use(_context(bridge.encode(_features(3)), [0, 0, 1], [2, 6, 4])):
            logits = lm.model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


def test_the_new_option_at_its_default_keeps_the_config_hash_of_earlier_runs() -> None:
    from experiments.harness.config import config_dict, config_hash

    run = config_dict(load_config(["experiment=smoke", "bridge=flamingo", "world=tiny"]))
    before = {**run, "bridge": {k: v for k, v in run["bridge"].items() if k != "resampler"}}  # a run made before
    assert config_hash(run) == config_hash(before)
    assert config_hash({**run, "bridge": {**run["bridge"], "resampler": "mlp"}}) != config_hash(run)


def test_tables_count_a_run_made_before_the_options_as_one_at_their_defaults(tmp_path) -> None:
    from experiments.analysis.load import load_runs
    from experiments.analysis.tables import NEUTRAL_DEFAULTS, summarize
    from experiments.harness.config import HASH_NEUTRAL_DEFAULTS
    from experiments.harness.rundir import RunDir

    assert set(NEUTRAL_DEFAULTS) == {(k, d) for k, d in HASH_NEUTRAL_DEFAULTS if not isinstance(d, dict)}
    runs = [({}, None, 0.5), ({"resampler": "perceiver"}, "lm", 0.7), ({"resampler": "mlp"}, "lm", 0.2)]
    for seed, (extra, objective, em) in enumerate(runs):
        stage = {"max_steps": 5, **({"objective": objective} if objective else {})}
        rd = RunDir(tmp_path / f"run{seed}")
        rd.update(name="f", status="finished", seed=seed % 2,
                  config={"bridge": {"name": "flamingo", **extra}, "seed": seed % 2, "stages": {"align": stage}})
        rd.write_scores("attribute", {"task": "attribute", "n": 10, "exact_match": em})
    table = summarize(load_runs(tmp_path))
    assert table["bridge.resampler"].tolist() == ["mlp", "perceiver"] and table["seeds"].tolist() == [1, 2]
    assert "stages.align.objective" not in table
