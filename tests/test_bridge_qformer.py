"""The Q-Former bridge: parity with transformers' BLIP-2 / InstructBLIP Q-Formers, invariants, FLOPs, sizes, and the
stage-1 objectives (masks and learning)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bridges import BRIDGES
from bridges.base import BridgeIO, EncoderInfo, LMInfo
from bridges.presets import get_preset, paper_presets
from bridges.qformer import QFormerBridge, QFormerConfig
from bridges.qformer_pretrain import QFormerPretrainConfig, QFormerPretrainer, itg_mask, itm_mask
from encoders.base import VisionFeatures

REPO = Path(__file__).resolve().parents[1]
DV, GRID, LM, VOCAB = 48, (4, 4), 40, 100
TINY = {
    "num_query_tokens": 6,
    "hidden_size": 32,
    "num_layers": 3,
    "num_heads": 4,
    "intermediate_size": 64,
    "vocab_size": VOCAB,
    "max_position_embeddings": 16,
    "dropout": 0.0,
    "attention_dropout": 0.0,
}


def io() -> BridgeIO:
    return BridgeIO((EncoderInfo("enc", DV, GRID, 2),), LMInfo(LM))


def build(**overrides) -> QFormerBridge:
    return BRIDGES.build({"name": "qformer", **TINY, **overrides}, io()).eval()


def features(n: int, patches: int = 16, with_cls: bool = True, seed: int = 0) -> VisionFeatures:
    g = torch.Generator().manual_seed(seed)
    hidden = tuple(torch.randn(n, patches + int(with_cls), DV, generator=g) for _ in range(2))
    return VisionFeatures(hidden, (0, 1), GRID, DV, int(with_cls))


def instruction(n: int, length: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return ids.masked_fill(mask == 0, 0), mask


# ---------------------------------------------------------------- parity with transformers


def hf_config(cls, freq: int):
    config = cls(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        encoder_hidden_size=DV,
        cross_attention_frequency=freq,
        vocab_size=VOCAB,
        max_position_embeddings=16,
    )
    config._attn_implementation = "eager"  # a different attention path from ours
    return config


def randomize(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)


@pytest.mark.parametrize("freq", [1, 2])
def test_matches_blip2_qformer(freq: int) -> None:
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    ref = Blip2QFormerModel(hf_config(Blip2QFormerConfig, freq)).eval()
    randomize(ref)
    query_tokens = torch.randn(1, 6, 32)
    post_ln, proj = nn.LayerNorm(DV, eps=1e-6), nn.Linear(32, LM)
    randomize(post_ln)
    bridge = QFormerBridge.from_reference(ref, query_tokens, proj, ln_vision=post_ln, io=io()).eval()
    assert not bridge.config.instruction_aware and bridge.qformer.word_embeddings is None
    for n, patches in ((1, 16), (3, 16), (2, 5)):
        feats = features(n, patches, seed=n)
        image = post_ln(feats.hidden[-1])
        with torch.no_grad():
            hf = ref(query_embeds=query_tokens.expand(n, -1, -1), encoder_hidden_states=image).last_hidden_state
            ours = bridge.query_outputs(bridge.image_embeds({"enc": feats}))
            out = bridge({"enc": feats})
        torch.testing.assert_close(ours, hf, atol=1e-5, rtol=0)
        torch.testing.assert_close(out, proj(hf), atol=1e-5, rtol=0)


@pytest.mark.parametrize("freq", [1, 2])
def test_matches_instructblip_qformer(freq: int) -> None:
    from transformers import InstructBlipQFormerConfig, InstructBlipQFormerModel

    ref = InstructBlipQFormerModel(hf_config(InstructBlipQFormerConfig, freq)).eval()
    randomize(ref)
    query_tokens = torch.randn(1, 6, 32)
    bridge = QFormerBridge.from_reference(ref, query_tokens, io=io()).eval()
    assert bridge.config.instruction_aware and bridge.uses_instruction
    for n, patches, length in ((1, 16, 3), (4, 16, 7), (2, 9, 1)):
        feats = features(n, patches, seed=n)
        ids, mask = instruction(n, length, seed=n)
        image = feats.hidden[-1]
        full_mask = torch.cat([torch.ones(n, 6, dtype=torch.long), mask], dim=1)
        with torch.no_grad():
            hf = ref(
                input_ids=ids,
                attention_mask=full_mask,
                query_embeds=query_tokens.expand(n, -1, -1),
                encoder_hidden_states=image,
            ).last_hidden_state
            ours = bridge.qformer(image, ids, mask)
        torch.testing.assert_close(ours[:, :6], hf[:, :6], atol=1e-5, rtol=0)
        valid = full_mask.bool()  # padded instruction rows are never used downstream
        torch.testing.assert_close(ours[valid], hf[valid], atol=1e-5, rtol=0)
        with torch.no_grad():
            out = bridge({"enc": feats}, instruction=(ids, mask))
        torch.testing.assert_close(out, bridge.language_projection(hf[:, :6]), atol=1e-5, rtol=0)


def test_from_reference_rejects_unsupported_activation() -> None:
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    config = hf_config(Blip2QFormerConfig, 2)
    config.hidden_act = "relu"
    with pytest.raises(ValueError, match="GELU"):
        QFormerBridge.from_reference(Blip2QFormerModel(config), torch.zeros(1, 6, 32))


# ---------------------------------------------------------------- invariants


@pytest.mark.parametrize("patches", [1, 4, 16, 33])
def test_output_length_is_query_count_whatever_the_patch_count(patches: int) -> None:
    bridge = build()
    out = bridge({"enc": features(2, patches)})
    assert out.shape == (2, bridge.num_visual_tokens(), LM) == (2, 6, LM)


@pytest.mark.parametrize("instruct", [False, True])
def test_samples_independent_and_permutation_equivariant(instruct: bool) -> None:
    bridge = build(instruction_aware=instruct)
    feats = features(4)
    ins = instruction(4) if instruct else None
    with torch.no_grad():
        out = bridge({"enc": feats}, instruction=ins)
        one = VisionFeatures(tuple(h[2:3] for h in feats.hidden), feats.layers, GRID, DV, 1)
        alone = bridge({"enc": one}, instruction=None if ins is None else (ins[0][2:3], ins[1][2:3]))
        perm = torch.tensor([3, 1, 0, 2])
        permuted = VisionFeatures(tuple(h[perm] for h in feats.hidden), feats.layers, GRID, DV, 1)
        out_perm = bridge({"enc": permuted}, instruction=None if ins is None else (ins[0][perm], ins[1][perm]))
    torch.testing.assert_close(alone[0], out[2], atol=1e-6, rtol=0)
    torch.testing.assert_close(out_perm, out[perm], atol=1e-6, rtol=0)


def test_instruction_changes_queries_and_padding_does_not() -> None:
    bridge = build(instruction_aware=True)
    feats = features(1)
    ids, mask = torch.tensor([[5, 6, 7, 0, 0]]), torch.tensor([[1, 1, 1, 0, 0]])
    with torch.no_grad():
        base = bridge({"enc": feats}, instruction=(ids, mask))
        other = bridge({"enc": feats}, instruction=(torch.tensor([[5, 9, 7, 0, 0]]), mask))
        shorter = bridge({"enc": feats}, instruction=(ids[:, :3], mask[:, :3]))
        junk_pad = bridge({"enc": feats}, instruction=(torch.tensor([[5, 6, 7, 42, 17]]), mask))
    assert not torch.allclose(base, other)
    torch.testing.assert_close(base, shorter, atol=1e-6, rtol=0)
    torch.testing.assert_close(base, junk_pad, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="instruction"):
        bridge({"enc": feats})


@pytest.mark.parametrize("instruct", [False, True])
def test_video_concatenates_per_frame_outputs(instruct: bool) -> None:
    bridge = build(instruction_aware=instruct)
    feats = features(6)  # 2 media x 3 frames
    ins = instruction(2) if instruct else None
    with torch.no_grad():
        video = bridge({"enc": feats}, num_frames=3, instruction=ins)
        per_frame = bridge(
            {"enc": feats}, instruction=None if ins is None else tuple(t.repeat_interleave(3, dim=0) for t in ins)
        )
    assert video.shape == (2, bridge.num_visual_tokens(3), LM) == (2, 18, LM)
    torch.testing.assert_close(video, per_frame.reshape(2, 18, LM))


def test_queries_pass_through_the_embedding_layernorm_and_ln_vision_is_used() -> None:
    bridge = build()
    feats = features(1)
    with torch.no_grad():
        base = bridge({"enc": feats})
        bridge.qformer.embed_norm.bias.add_(1.0)
        assert not torch.allclose(bridge({"enc": feats}), base)
        bridge.qformer.embed_norm.bias.sub_(1.0)
        bridge.ln_vision.weight.mul_(2.0)
        assert not torch.allclose(bridge({"enc": feats}), base)
    assert isinstance(build(ln_vision=False).ln_vision, nn.Identity)


def test_cls_and_layer_selection() -> None:
    feats = features(1)
    no_cls = build(with_cls=False, ln_vision=False)
    assert not no_cls.needs.with_cls and build().needs.with_cls
    torch.testing.assert_close(no_cls.image_embeds({"enc": feats}), feats.hidden[1][:, 1:])
    first = build(select_layer=0, ln_vision=False)
    torch.testing.assert_close(first.image_embeds({"enc": feats}), feats.hidden[0])
    with pytest.raises(ValueError, match="with_cls"):
        build()({"enc": features(1, with_cls=False)})


def test_register_tokens_dropped_dtype_cast_and_zero_media() -> None:
    bridge = build(ln_vision=False)
    feats = features(2)
    h = feats.hidden[1]
    regs = VisionFeatures(
        tuple(torch.cat([x[:, :1], torch.randn(2, 2, DV), x[:, 1:]], 1) for x in feats.hidden),
        feats.layers,
        GRID,
        DV,
        num_prefix=3,
    )
    torch.testing.assert_close(bridge.image_embeds({"enc": regs}), h)
    half = VisionFeatures(tuple(x.bfloat16() for x in feats.hidden), feats.layers, GRID, DV, 1)
    assert bridge({"enc": half}).dtype == torch.float32
    for instruct in (False, True):
        empty = build(instruction_aware=instruct)
        ins = (torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 4, dtype=torch.long)) if instruct else None
        assert empty({"enc": features(0)}, num_frames=2, instruction=ins).shape == (0, 12, LM)


def test_cross_attention_every_freq_layers_and_query_init() -> None:
    bridge = BRIDGES.build({"name": "qformer", **TINY, "num_layers": 6, "cross_attention_freq": 3}, io())
    assert [i for i, layer in enumerate(bridge.qformer.layers) if layer.cross_attn is not None] == [0, 3]
    big = BRIDGES.build({"name": "qformer", **TINY, "num_query_tokens": 256, "hidden_size": 64}, io())
    assert big.qformer.query_tokens.std().item() == pytest.approx(0.02, rel=0.05)
    text = build(text_layers=True)
    layer = text.qformer.layers[0]
    torch.testing.assert_close(layer.ffn_query.fc1.weight, layer.ffn_text.fc1.weight)  # LAVIS copy init
    fresh = build(text_layers=True, query_ffn_init="fresh").qformer.layers[0]
    assert not torch.equal(fresh.ffn_query.fc1.weight, fresh.ffn_text.fc1.weight)


@pytest.mark.parametrize(
    ("overrides", "frames", "length"),
    [({}, 1, 0), ({"cross_attention_freq": 1, "with_cls": False}, 2, 0), ({"instruction_aware": True}, 1, 5)],
)
def test_flops_match_counter(overrides: dict, frames: int, length: int) -> None:
    bridge = build(**overrides)
    feats = features(frames, with_cls=bridge.config.with_cls)
    ins = instruction(1, length) if length else None
    # the MATH backend: FlopCounterMode does not count CPU flash attention, only its decomposition
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        bridge({"enc": feats}, num_frames=frames, instruction=ins)
    expected = bridge.flops_per_media(frames, instruction_len=length)
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.1)


# ---------------------------------------------------------------- sizes and config


def test_paper_presets_within_one_percent_on_meta() -> None:
    presets = {p.name: p for p in paper_presets() if p.bridge == "qformer"}
    assert set(presets) >= {"blip2_opt2.7b", "blip2_stage1", "instructblip_vicuna7b"}
    for preset in presets.values():
        with torch.device("meta"):
            bridge = BRIDGES.build({"name": "qformer", **preset.overrides}, preset.io)
        groups = bridge.param_groups()
        assert sum(len(g) for g in groups.values()) == len(list(bridge.parameters()))
        params = list(bridge.parameters()) if preset.count == "bridge" else groups[preset.count]
        assert sum(p.numel() for p in params) == pytest.approx(preset.expected_params, rel=0.01), preset.name
    assert presets["blip2_opt2.7b"].expected_params == 105_160_000


def test_stage1_model_is_about_186m_on_meta() -> None:
    """Q-Former core with text parts + ITC/ITM/ITG heads (BRIDGES.md 2.6: ~186.7M; the brief's 'about 186M')."""
    preset = get_preset("qformer", "blip2_stage1")
    with torch.device("meta"):
        bridge = BRIDGES.build({"name": "qformer", **preset.overrides}, preset.io)
        model = QFormerPretrainer(bridge)
    heads = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("bridge."))
    core = sum(p.numel() for p in bridge.param_groups()["bridge.qformer"])
    assert core + heads == pytest.approx(186_000_000, rel=0.01)


def test_yaml_matches_dataclass_defaults() -> None:
    spec = OmegaConf.load(REPO / "experiments/configs/bridge/qformer.yaml")
    entry, config = BRIDGES.make_config(spec)
    assert entry.cls is QFormerBridge and config == QFormerConfig()


@pytest.mark.parametrize("name", ["tiny", "tiny_instruct"])
def test_tiny_presets_run(name: str) -> None:
    preset = get_preset("qformer", name)
    bridge = BRIDGES.build({"name": "qformer", **preset.overrides}, preset.io)
    enc = preset.io.encoder
    hidden = tuple(torch.randn(2, enc.grid[0] * enc.grid[1] + 1, enc.width) for _ in range(enc.num_layers))
    feats = {enc.name: VisionFeatures(hidden, tuple(range(enc.num_layers)), enc.grid, enc.width, 1)}
    ins = (torch.randint(1, 50, (2, 4)), torch.ones(2, 4, dtype=torch.long)) if bridge.uses_instruction else None
    assert bridge(feats, instruction=ins).shape == (2, bridge.num_visual_tokens(), preset.io.lm.hidden_size)


# ---------------------------------------------------------------- stage 1: masks and losses


def test_itg_and_itm_mask_structure() -> None:
    text_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    q = 2
    itg, itm = itg_mask(q, text_mask), itm_mask(q, text_mask)
    assert itg.shape == itm.shape == (2, 6, 6)
    assert itg[:, :q, :q].all() and not itg[:, :q, q:].any()  # queries see queries, never text
    assert itg[:, q:, :q].all()  # text sees every query
    text = itg[1, q:, q:]
    assert torch.equal(text, torch.ones(4, 4, dtype=torch.bool).tril())  # causal among text tokens
    assert not itg[0, :, q + 3].any() and not itm[0, :, q + 3].any()  # padded key hidden from all
    assert itm[1].all() and itm[0, :, : q + 3].all()


def pretrainer(**overrides) -> QFormerPretrainer:
    bridge = build(text_layers=True, **overrides)
    return QFormerPretrainer(bridge, QFormerPretrainConfig(embed_dim=16, bos_token_id=VOCAB - 1)).eval()


def test_attention_rules_hold_in_the_forward_passes() -> None:
    model = pretrainer()
    qf, q = model.bridge.qformer, model.num_queries
    image = features(2).hidden[-1]
    ids, mask = torch.randint(1, VOCAB, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    later = ids.clone()
    later[:, 3] = (later[:, 3] + 1) % VOCAB
    with torch.no_grad():
        a, b = qf(image, ids, itg_mask(q, mask)), qf(image, later, itg_mask(q, mask))
        torch.testing.assert_close(a[:, : q + 3], b[:, : q + 3])  # ITG: queries and earlier text blind to token 3
        assert not torch.allclose(a[:, q + 3 :], b[:, q + 3 :])
        a, b = qf(image, ids, itm_mask(q, mask)), qf(image, later, itm_mask(q, mask))
        assert not torch.allclose(a[:, :q], b[:, :q])  # ITM: queries do see the text
        # ITC is uni-modal: its two separate forwards equal one joint forward under a block-diagonal mask
        unimodal = torch.block_diag(torch.ones(q, q), torch.ones(5, 5)).bool().expand(2, -1, -1)
        joint = qf(image, ids, unimodal)
        torch.testing.assert_close(joint[:, :q], qf(image), atol=1e-6, rtol=0)
        torch.testing.assert_close(joint[:, q:], qf(None, ids, mask, use_queries=False), atol=1e-6, rtol=0)
        text_feat = F.normalize(model.text_proj(joint[:, q]), dim=-1)  # [CLS] of the text
        torch.testing.assert_close(model.text_features(ids, mask), text_feat, atol=1e-6, rtol=0)
        image_feats = F.normalize(model.vision_proj(joint[:, :q]), dim=-1)
        torch.testing.assert_close(model.image_features(image), image_feats, atol=1e-6, rtol=0)
        assert model.text_features(ids, mask).shape == (2, 16) and model.image_features(image).shape == (2, q, 16)


def test_stage1_losses_decrease_on_a_tiny_batch() -> None:
    model = pretrainer().train()
    image = features(4).hidden[-1]
    ids, mask = instruction(4, length=6, seed=3)
    ids[:, 0] = 1  # [CLS]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        losses = model(image, ids, mask)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    first, last = history[0], history[-1]
    for key in ("loss", "itc", "itg"):
        assert last[key] < 0.7 * first[key], (key, first[key], last[key])
    assert sum(h["itm"] for h in history[-5:]) < sum(h["itm"] for h in history[:5])
    assert set(first) == {"loss", "itc", "itm", "itg"}


def test_pretrainer_needs_text_layers_and_two_pairs() -> None:
    with pytest.raises(ValueError, match="text_layers"):
        QFormerPretrainer(build())
    with pytest.raises(ValueError, match="bos_token_id"):
        QFormerPretrainer(build(text_layers=True))  # default [DEC] 30522 is outside a 100-token vocabulary
    model = pretrainer()
    with pytest.raises(ValueError, match="at least 2"):
        model(features(1).hidden[-1], torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


# ---------------------------------------------------------------- learning through MultimodalLM


@pytest.mark.parametrize("instruct", [False, True])
def test_learns_through_multimodal_lm(instruct: bool) -> None:
    from test_llm_fakes import fake_encoders, make_batch, train_losses

    from llm_adapters.multimodal_lm import build_multimodal_lm

    spec = {"name": "qformer", **TINY, "with_cls": False, "instruction_aware": instruct}
    model = build_multimodal_lm(fake_encoders(), spec, "tiny_llama")
    batch = make_batch(model.lm, ["a <image> red square", "<image> two <image> blue circles"])
    if instruct:
        batch.instruction_ids, batch.instruction_mask = instruction(2, length=4)
    losses = train_losses(model, batch)
    assert losses[-1] < losses[0] - 0.05, losses
    if instruct:  # the batch's instruction reaches the Q-Former
        batch.instruction_ids = batch.instruction_ids.flip(0)
        with torch.no_grad():
            assert abs(model(batch).loss.item() - losses[-1]) > 1e-4
