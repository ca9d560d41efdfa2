"""Encoder backends (timm ViT/ConvNet, open_clip, HF CLIP/SigLIP): shapes, layer selection, freezing, resolution,
save/load, paper presets on the meta device, EncoderSet and config errors. Tiny, offline, deterministic."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

import encoders
from encoders import EncoderSet, build_encoder, build_encoder_set, list_encoders, list_presets, load_encoder
from encoders.registry import ConfigError, RegistryError

TINY = ["tiny_vit", "tiny_convnet", "tiny_clip", "tiny_siglip", "tiny_openclip"]
TINY_VITS = ["tiny_vit", "tiny_clip", "tiny_siglip", "tiny_openclip"]
# preset -> (width, num_layers, grid of the last layer, prefix tokens)
PAPER = {
    "clip_vit_l14_336": (1024, 24, (24, 24), 1),
    "clip_vit_l14_448": (1024, 24, (32, 32), 1),
    "siglip_so400m_384": (1152, 27, (27, 27), 0),
    "eva_clip_vit_g": (1408, 39, (16, 16), 1),
    "convnext_xxl": (3072, 4, (32, 32), 0),
}


def pixels_for(encoder: encoders.VisionEncoder, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, *encoder.image_size)


@pytest.fixture(scope="module")
def tiny() -> dict[str, encoders.VisionEncoder]:
    torch.manual_seed(0)
    return {name: build_encoder(name) for name in TINY}


def test_registry_lists_backends_and_presets() -> None:
    assert list_encoders() == ["hf_clip", "hf_siglip", "open_clip", "timm_convnet", "timm_vit"]
    assert set(TINY) | set(PAPER) <= set(list_presets())


@pytest.mark.parametrize("name", TINY)
def test_shapes_grid_and_request_order(tiny, name: str) -> None:
    encoder = tiny[name]
    x = pixels_for(encoder)
    feats = encoder(x, layers=[-1, 0])
    assert feats.layers == (encoder.num_layers - 1, 0)
    assert len(feats.hidden) == 2 and feats.num_prefix == 0
    assert feats.grid == encoder.grid_for(0)
    assert feats.width == encoder.layer_widths[0]
    for tensor, layer in zip(feats.hidden, feats.layers):
        h, w = encoder.grid_for(layer)
        assert tensor.shape == (2, h * w, encoder.layer_widths[layer])
    assert feats.grid == tuple(encoder.patch_grid) or name == "tiny_convnet"
    # each entry equals the same layer requested alone (order is the request order, not sorted)
    assert torch.equal(feats.hidden[0], encoder(x, -1).last)
    assert torch.equal(feats.hidden[1], encoder(x, [0]).last)
    assert torch.equal(feats.layer(0), feats.hidden[1])


@pytest.mark.parametrize("name", ["tiny_clip", "tiny_siglip"])
def test_hf_layers_match_hf_hidden_states(name: str) -> None:
    """Layer i is HF hidden_states[i + 1], so -2 is LLaVA's hidden_states[-2] (CLS first, as HF returns it)."""
    encoder = build_encoder({"preset": name, "architecture": {"num_hidden_layers": 3}})
    x = pixels_for(encoder)
    reference = encoder.model(pixel_values=x, output_hidden_states=True).hidden_states
    feats = encoder(x, [-2, 0, -1], with_cls=True)
    assert feats.layers == (1, 0, 2)
    for got, layer in zip(feats.hidden, feats.layers):
        torch.testing.assert_close(got, reference[layer + 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_only_blocks_up_to_the_deepest_request_run(tiny, name: str) -> None:
    encoder = tiny[name]
    calls: list[int] = []
    hooks = [b.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, b in enumerate(encoder.blocks())]
    try:
        encoder(pixels_for(encoder), layers=0)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [0]


@pytest.mark.parametrize("name", TINY)
def test_a_batch_without_images_gives_empty_features(tiny, name: str) -> None:
    encoder = tiny[name]
    x = pixels_for(encoder)
    full = encoder(x, [0, -1], with_cls=True)
    empty = encoder(x[:0], [0, -1], with_cls=True)
    assert empty.grid == full.grid and empty.num_prefix == full.num_prefix
    assert [t.shape[1:] for t in empty.hidden] == [t.shape[1:] for t in full.hidden]
    assert all(t.shape[0] == 0 for t in empty.hidden)


@pytest.mark.parametrize("name", TINY)
def test_negative_and_list_indices(tiny, name: str) -> None:
    encoder = tiny[name]
    x = pixels_for(encoder)
    n = encoder.num_layers
    feats = encoder(x, layers=[-2, -1, 0, 1])
    assert feats.layers == (n - 2, n - 1, 0, 1)
    assert torch.equal(feats.hidden[0], feats.hidden[3]) == (n - 2 == 1)
    with pytest.raises(ValueError, match="out of range"):
        encoder(x, layers=n)
    with pytest.raises(ValueError, match="out of range"):
        encoder(x, layers=[-n - 1])


@pytest.mark.parametrize("name", TINY)
def test_cls_kept_only_when_asked(tiny, name: str) -> None:
    encoder = tiny[name]
    x = pixels_for(encoder)
    plain = encoder(x, -1)
    with_cls = encoder(x, -1, with_cls=True)
    expected_prefix = {"tiny_vit": 0, "tiny_convnet": 0, "tiny_clip": 1, "tiny_siglip": 0, "tiny_openclip": 1}[name]
    assert with_cls.num_prefix == expected_prefix == encoder.num_prefix_tokens
    assert with_cls.last.shape[1] == plain.last.shape[1] + expected_prefix
    assert torch.equal(with_cls.patches(), plain.last)


@pytest.mark.parametrize("name", TINY)
def test_frozen_by_default_and_stays_in_eval(tiny, name: str) -> None:
    encoder = tiny[name]
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not any(m.training for m in encoder.modules())


@pytest.mark.parametrize("name", TINY)
def test_unfreeze_last_k(name: str) -> None:
    encoder = build_encoder({"preset": name, "unfreeze_last_k": 1})
    last = encoder.blocks()[-1]
    trainable = {id(p) for p in encoder.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in last.parameters()} and trainable
    encoder.train()
    assert last.training and all(m.training for m in last.modules())
    assert not any(m.training for b in encoder.blocks()[:-1] for m in b.modules())
    encoder.eval()
    assert not any(m.training for m in encoder.modules())


def test_frozen_dropout_is_off_in_train_mode_but_trainable_blocks_use_it() -> None:
    spec = {"preset": "tiny_vit", "model_kwargs": {"proj_drop_rate": 0.5}}
    frozen = build_encoder(spec).train()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(frozen(x).last, frozen(x).last)
    partly = build_encoder({**spec, "unfreeze_last_k": 1}).train()
    assert not torch.equal(partly(x).last, partly(x).last)
    assert torch.equal(partly(x, 0).last, partly(x, 0).last)  # frozen first block: deterministic


def test_unfrozen_encoder_trains_everything() -> None:
    encoder = build_encoder({"preset": "tiny_clip", "frozen": False}).train()
    assert all(p.requires_grad for p in encoder.parameters()) and encoder.training


def test_freezing_config_errors() -> None:
    with pytest.raises(ConfigError, match="frozen"):
        build_encoder({"preset": "tiny_vit", "frozen": False, "unfreeze_last_k": 1})
    with pytest.raises(ConfigError, match="exceeds"):
        build_encoder({"preset": "tiny_vit", "unfreeze_last_k": 5})


@pytest.mark.parametrize("name", TINY_VITS)
def test_new_resolution_grows_the_grid_and_survives_save_load(tmp_path, name: str) -> None:
    encoder = build_encoder({"preset": name, "image_size": 48}).eval()
    x = torch.randn(2, 3, 48, 48)
    feats = encoder(x, [-1, 0])
    assert encoder.image_size == (48, 48) and encoder.patch_grid == (6, 6) and feats.grid == (6, 6)
    assert feats.last.shape == (2, 36, encoder.width)
    with pytest.raises(ValueError, match="image_size"):
        encoder(torch.randn(2, 3, 32, 32))
    encoder.save_pretrained(tmp_path)
    assert torch.equal(load_encoder(tmp_path).eval()(x, [-1, 0]).last, feats.last)
    with pytest.raises(ConfigError, match="fixed by the saved weights"):
        load_encoder(tmp_path, image_size=64)


def test_convnet_takes_any_size_and_reports_its_grid(tiny) -> None:
    encoder = tiny["tiny_convnet"]
    feats = encoder(torch.randn(1, 3, 96, 128), [0, -1])
    assert feats.grid == (3, 4) and feats.last.shape == (1, 12, 128)
    assert feats.hidden[0].shape == (1, 24 * 32, 16)
    assert encoder.layer_widths == (16, 32, 64, 128) and encoder.layer_reductions == (4, 8, 16, 32)


def test_hf_clip_loads_an_hf_directory_at_a_new_resolution(tmp_path, tiny) -> None:
    source = tiny["tiny_clip"]
    source.model.save_pretrained(tmp_path / "hf")
    arch = {"architecture": dict(source.config.architecture)}
    same = build_encoder({"name": "hf_clip", "pretrained": str(tmp_path / "hf"), **arch})
    x = pixels_for(source)
    assert torch.equal(same(x, [0, 1]).last, source(x, [0, 1]).last)
    big = build_encoder({"name": "hf_clip", "pretrained": str(tmp_path / "hf"), "image_size": 64, **arch})
    old = source.model.embeddings.position_embedding.weight
    new = big.model.embeddings.position_embedding.weight
    assert new.shape == (1 + 8 * 8, 64) and torch.equal(new[0], old[0])
    assert big(torch.randn(1, 3, 64, 64)).grid == (8, 8)


def test_timm_vit_loads_a_plain_timm_state_dict_file(tmp_path) -> None:
    """The world's pretraining saves a timm ViT's state_dict() with safetensors; the encoder must load it."""
    kwargs = dict(img_size=32, patch_size=8, depth=4, embed_dim=128, num_heads=4, mlp_ratio=2, class_token=False)
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=10, global_pool="avg", **kwargs).eval()
    save_file(reference.state_dict(), str(tmp_path / "vit.safetensors"))
    encoder = build_encoder({"preset": "tiny_vit", "pretrained": str(tmp_path / "vit.safetensors")})
    x = torch.randn(2, 3, 32, 32)
    expected = reference.forward_intermediates(x, indices=[1, 3], output_fmt="NLC", intermediates_only=True)
    got = encoder(x, [1, -1])
    assert torch.equal(got.hidden[0], expected[0]) and torch.equal(got.hidden[1], expected[1])
    resized = build_encoder({"preset": "tiny_vit", "pretrained": str(tmp_path / "vit.safetensors"), "image_size": 64})
    assert resized.model.pos_embed.shape == (1, 64, 128)
    assert torch.equal(resized.model.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("name", TINY)
def test_save_pretrained_round_trip_is_bit_exact(tmp_path, name: str) -> None:
    source = build_encoder({"preset": name, "unfreeze_last_k": 1})
    with torch.no_grad():  # make sure the reload does not just match a fresh random init
        for p in source.parameters():
            p.add_(0.01)
    source.save_pretrained(tmp_path)
    x = pixels_for(source)
    source.eval()
    # no_grad: nn.MultiheadAttention (open_clip) takes a different kernel when some weights require grad
    with torch.no_grad():
        expected = source(x, [0, -1], with_cls=True).hidden
    for loaded in (load_encoder(tmp_path), build_encoder({"name": source.registry_name, "pretrained": str(tmp_path)})):
        loaded.eval()
        assert type(loaded) is type(source) and loaded.image_size == source.image_size
        with torch.no_grad():
            got = loaded(x, [0, -1], with_cls=True).hidden
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert not any(p.requires_grad for p in load_encoder(tmp_path).parameters())  # runtime fields from the spec


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_paper_presets_build_on_the_meta_device(preset: str) -> None:
    width, num_layers, grid, prefix = PAPER[preset]
    encoder = build_encoder({"preset": preset, "meta_device": True})
    assert (encoder.width, encoder.num_layers, tuple(encoder.patch_grid)) == (width, num_layers, grid)
    assert encoder.num_prefix_tokens == prefix
    assert all(p.is_meta for p in encoder.parameters())
    assert not any(p.requires_grad for p in encoder.parameters())


def test_eagle_clip_448_position_table_is_resized_on_meta() -> None:
    encoder = build_encoder({"preset": "clip_vit_l14_448", "meta_device": True})
    assert encoder.model.embeddings.position_embedding.weight.shape == (1 + 32 * 32, 1024)


def test_unknown_names_and_keys_give_clear_errors() -> None:
    with pytest.raises(RegistryError, match="timm_vit") as err:
        build_encoder("timm_vitt")
    assert "tiny_vit" in str(err.value)  # presets are listed too
    with pytest.raises(RegistryError, match="Known encoders: hf_clip, hf_siglip, open_clip"):
        build_encoder({"name": "clip"})
    with pytest.raises(ConfigError, match="encoder.model_kwrgs.*Did you mean 'model_kwargs'"):
        build_encoder({"name": "timm_vit", "model_kwrgs": {}})
    with pytest.raises(ConfigError, match="encoder.frozen"):
        build_encoder({"preset": "tiny_vit", "frozen": "maybe"})
    with pytest.raises(RegistryError, match="Unknown encoder preset 'nope'"):
        build_encoder({"preset": "nope"})
    with pytest.raises(ConfigError, match="open_clip architecture"):
        build_encoder({"name": "open_clip", "architecture": "ViT-Q-99"})


def test_bad_pixels_name_the_fix(tiny) -> None:
    encoder = tiny["tiny_vit"]
    with pytest.raises(ValueError, match="n f c h w"):
        encoder(torch.randn(2, 1, 3, 32, 32))
    with pytest.raises(ValueError, match="transform"):
        encoder(torch.randn(2, 3, 40, 40))


def test_transform_resizes_and_normalises_frames(tiny) -> None:
    encoder = tiny["tiny_clip"]
    transform = encoder.transform()
    frames = torch.rand(5, 3, 64, 48)
    out = transform(frames)
    assert out.shape == (5, 3, 32, 32)
    flat = torch.full((3, 32, 32), 0.5)
    expected = (0.5 - torch.tensor(encoder.mean)) / torch.tensor(encoder.std)
    assert torch.allclose(transform(flat)[:, 0, 0], expected)
    assert transform(torch.rand(2, 4, 3, 32, 32)).shape == (2, 4, 3, 32, 32)


def test_encoder_set_runs_each_encoder_on_its_own_pixels(tiny) -> None:
    encoder_set = EncoderSet({"vit": tiny["tiny_vit"], "conv": tiny["tiny_convnet"]})
    assert encoder_set.names == ("vit", "conv") and encoder_set["conv"] is tiny["tiny_convnet"]
    images = torch.rand(3, 3, 40, 40)
    pixels = {name: transform(images) for name, transform in encoder_set.transforms().items()}
    assert pixels["vit"].shape[-1] == 32 and pixels["conv"].shape[-1] == 64
    out = encoder_set(pixels, layers={"vit": [-2, -1], "conv": -1})
    assert list(out) == ["vit", "conv"]
    assert out["vit"].layers == (2, 3) and out["conv"].grid == (2, 2)
    assert torch.equal(out["conv"].last, tiny["tiny_convnet"](pixels["conv"]).last)
    with pytest.raises(KeyError, match="missing"):
        encoder_set(pixels, layers={"vit": -1})
    shared = EncoderSet({"a": tiny["tiny_clip"], "b": tiny["tiny_siglip"]})(torch.randn(2, 3, 32, 32), -1)
    assert set(shared) == {"a", "b"}


def test_build_encoder_set_from_one_spec_or_a_mapping() -> None:
    one = build_encoder_set("tiny_vit")
    assert one.names == ("tiny_vit",)
    many = build_encoder_set({"clip": {"preset": "tiny_clip"}, "conv": "tiny_convnet"})
    assert many.names == ("clip", "conv") and isinstance(many["conv"], encoders.TimmConvNet)
    assert build_encoder_set({"name": "timm_convnet", "model_kwargs": {"dims": [8, 16, 32, 64]}}).names == (
        "timm_convnet",
    )
