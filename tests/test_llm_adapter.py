"""LMAdapter: family facts, presets, save/load round trip, new-token-only training, config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from encoders.registry import ConfigError, RegistryError
from llm_adapters import LLMS, LMConfig, build_lm
from llm_adapters.families import get_family
from llm_adapters.new_tokens import TokenRowsEmbedding, TokenRowsHead
from llm_adapters.presets import PRESETS

FAMILIES = ["tiny_llama", "tiny_qwen2", "tiny_mistral", "tiny_gpt2", "tiny_opt", "tiny_mpt"]
CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "llm"


@pytest.mark.parametrize("preset", FAMILIES)
def test_family_facts(preset: str) -> None:
    lm = build_lm(preset)
    info = lm.info
    assert (info.hidden_size, info.num_layers, info.num_heads) == (64, 2, 4)
    assert info.head_dim == 16 and info.vocab_size == len(lm.tokenizer)
    assert len(lm.decoder_layers()) == 2
    assert all(not p.requires_grad for p in lm.parameters())
    tok = lm.tokenizer
    assert tok.bos_token_id < info.vocab_size and tok.eos_token_id < info.vocab_size
    if preset in ("tiny_gpt2", "tiny_mpt"):  # fused q/k/v, no RoPE
        assert info.num_kv_heads == 4 and lm.rotary_embedding() is None and not lm.supports_attention_extension
        with pytest.raises(NotImplementedError, match="fused"):
            lm.qkvo(0)
        layer = lm.model.transformer.h[1] if preset == "tiny_gpt2" else lm.model.transformer.blocks[1]
        assert lm.input_norm(1) is (layer.ln_1 if preset == "tiny_gpt2" else layer.norm_1)
    elif preset == "tiny_opt":  # separate projections but learned absolute positions
        assert not lm.supports_attention_extension and lm.rotary_embedding() is None
        assert lm.qkvo(0)[3] is lm.model.model.decoder.layers[0].self_attn.out_proj
        assert lm.input_norm(0) is lm.model.model.decoder.layers[0].self_attn_layer_norm
    else:
        assert info.num_kv_heads == 2 and lm.supports_attention_extension
        q, k, v, o = lm.qkvo(1)
        assert q.out_features == 64 and k.out_features == v.out_features == 32 and o.in_features == 64
        assert lm.input_norm(0) is lm.model.model.layers[0].input_layernorm
        assert lm.rotary_embedding() is lm.model.model.rotary_emb


@pytest.mark.parametrize("preset", FAMILIES)
def test_save_pretrained_round_trip(preset: str, tmp_path: Path) -> None:
    lm = build_lm({"name": preset, "freeze": False}).eval()
    lm.add_special_tokens(["<image>"])
    with torch.no_grad():
        lm.new_token_parameters()[0].add_(1.0)  # trained rows must survive the round trip
    text = ["a red <image> square", "two cats"]
    ids = lm.tokenizer(text, return_tensors="pt", padding=True)
    before = lm(**ids).logits
    lm.save_pretrained(tmp_path)

    loaded = build_lm({"name": "hf", "pretrained": str(tmp_path)}).eval()
    assert loaded.add_special_tokens(["<image>"]) == {"<image>": lm.image_token_id}
    ids2 = loaded.tokenizer(text, return_tensors="pt", padding=True)
    assert torch.equal(ids2["input_ids"], ids["input_ids"])
    assert torch.equal(loaded(**ids2).logits, before)
    assert loaded.template.name == lm.template.name
    assert len(loaded.new_token_parameters()) == len(lm.new_token_parameters())  # rows decoupled again


@pytest.mark.parametrize("preset", ["tiny_llama", "tiny_gpt2"])
def test_new_token_rows_train_while_old_vocabulary_stays(preset: str) -> None:
    lm = build_lm(preset)
    ids = lm.add_special_tokens(["<image>", "<|endofchunk|>"])
    embedding, head = lm.model.get_input_embeddings(), lm.model.get_output_embeddings()
    assert isinstance(embedding, TokenRowsEmbedding) and isinstance(head, TokenRowsHead)
    assert head.tied == (preset == "tiny_gpt2")
    base_embed, base_head = embedding.base.weight.clone(), head.base.weight.clone()
    trainable = [p for p in lm.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lm.new_token_parameters()}

    batch = torch.tensor([[5, ids["<image>"], 7, ids["<|endofchunk|>"], 9, 10]])
    optim = torch.optim.SGD(trainable, lr=1.0)
    rows_before = [p.detach().clone() for p in trainable]
    lm(input_ids=batch, labels=batch).loss.backward()
    optim.step()
    assert torch.equal(embedding.base.weight, base_embed) and torch.equal(head.base.weight, base_head)
    assert all(not torch.equal(p, q) for p, q in zip(trainable, rows_before, strict=True))
    # the effective matrices carry the trained rows; the others are untouched
    new = torch.tensor(list(ids.values()))
    assert torch.equal(embedding.weight[new], embedding.rows)
    old = torch.ones(embedding.num_embeddings, dtype=torch.bool)
    old[new] = False
    assert torch.equal(embedding.weight[old], base_embed[old])


def test_plain_resize_without_decoupling() -> None:
    lm = build_lm({"name": "tiny_qwen2", "train_new_tokens": False})
    lm.add_special_tokens(["<image>"])
    assert lm.new_token_parameters() == [] and lm.model.get_input_embeddings().num_embeddings == 385
    assert type(lm.model.get_input_embeddings()) is torch.nn.Embedding


def test_add_special_tokens_is_idempotent() -> None:
    lm = build_lm("tiny_llama")
    first = lm.add_special_tokens(["<image>"])
    again = lm.add_special_tokens(["<image>", "<|endofchunk|>"])
    assert again["<image>"] == first["<image>"] and again["<|endofchunk|>"] == first["<image>"] + 1
    assert lm.model.get_input_embeddings().rows.shape == (2, 64)
    assert lm.tokenizer.decode([first["<image>"]]) == "<image>"


def test_paper_presets_on_meta_have_published_sizes() -> None:
    qwen = build_lm("qwen2_7b")
    assert qwen.info.num_kv_heads == 4 and qwen.info.head_dim == 128 and qwen.info.hidden_size == 3584
    assert abs(sum(p.numel() for p in qwen.parameters()) - 7.62e9) / 7.62e9 < 0.01
    vicuna = build_lm("vicuna_7b")
    assert next(vicuna.parameters()).is_meta and vicuna.tokenizer is None
    assert abs(sum(p.numel() for p in vicuna.parameters()) - 6.74e9) / 6.74e9 < 0.01
    opt = build_lm("opt_2_7b")  # BLIP-2's OPT-2.7B: 2.65B parameters
    assert abs(sum(p.numel() for p in opt.parameters()) - 2.65e9) / 2.65e9 < 0.01
    mpt = build_lm("mpt_1b")  # OpenFlamingo-3B's MPT-1B: D 2048, 24 layers, about 1.3B
    assert (mpt.info.hidden_size, mpt.info.num_layers) == (2048, 24)
    assert abs(sum(p.numel() for p in mpt.parameters()) - 1.31e9) / 1.31e9 < 0.01
    assert vicuna.add_special_tokens(["<image>"]) == {"<image>": 32000}
    assert vicuna.template.name == "vicuna"


def test_unknown_key_wrong_type_unknown_name() -> None:
    with pytest.raises(ConfigError, match=r"Unknown config key 'llm.frezee'.*Did you mean 'freeze'.*Valid keys"):
        build_lm({"name": "tiny_llama", "frezee": True})
    with pytest.raises(ConfigError, match=r"Wrong type for config key 'llm.meta_device'"):
        build_lm({"name": "tiny_llama", "meta_device": "sometimes"})
    with pytest.raises(RegistryError, match=r"Unknown llm 'tiny_lama'.*Did you mean 'tiny_llama'.*tiny_gpt2"):
        build_lm("tiny_lama")
    with pytest.raises(
        ValueError, match=r"model_type 'falcon' is not supported.*gpt2, llama, mistral, mpt, opt, qwen2"
    ):
        build_lm({"name": "hf", "model_type": "falcon"})
    with pytest.raises(ConfigError, match="set 'pretrained'"):
        build_lm("hf")
    with pytest.raises(ConfigError, match="dtype"):
        build_lm({"name": "tiny_llama", "dtype": "float8"})
    with pytest.raises(ValueError, match="Supported model types"):
        get_family("falcon")


def test_config_dataclass_instance_builds() -> None:
    lm = build_lm(
        LMConfig(
            model_type="llama",
            config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
        )
    )
    assert lm.info.hidden_size == 32 and lm.info.num_layers == 1


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_hydra_yaml_selects_the_preset(name: str) -> None:
    spec = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"))
    assert spec["name"] == name
    _entry, config = LLMS.make_config(spec)
    assert config == LLMS.make_config(name)[1]


@pytest.mark.parametrize("preset", ["tiny_llama", "tiny_gpt2", "tiny_mpt"])
def test_lora_adapters_are_their_own_trainable_group(preset: str) -> None:
    torch.manual_seed(0)
    plain = build_lm(preset).eval()
    torch.manual_seed(0)  # same base weights; the adapters are drawn after them
    lm = build_lm({"name": preset, "lora_rank": 4}).eval()
    ids = torch.randint(3, 300, (2, 7))
    assert torch.equal(lm(input_ids=ids).logits, plain(input_ids=ids).logits)  # LoRA B starts at zero
    lm.add_special_tokens(["<image>"])
    lora = lm.lora_parameters()
    assert len(lora) == 2 * len(lm._family.lora_targets) * 2  # (A, B) x targets x 2 layers
    trainable = {id(p) for p in lm.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in lora + lm.new_token_parameters()}
    with pytest.raises(RuntimeError, match="LoRA"):
        lm.save_pretrained("/nonexistent")
