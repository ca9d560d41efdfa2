"""Issue 12, section 4: the catalogue of bad inputs. Each must fail with a message that names the problem, the
offending value and the fix (for a name: the closest known one and the known ones), never silently or with a bare
traceback. Data-source inputs (a malformed JSON line, a missing image, a marker/image mismatch in a real source) are
tested beside their sources in ``tests/test_data_*.py``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import harness_toy  # noqa: F401  (registers the toy data source)
from bridges.base import BRIDGES, BridgeIO, BridgeNeeds, EncoderInfo, LMInfo, PrefixBridge
from encoders.base import VisionFeatures
from encoders.registry import ConfigError, RegistryError
from experiments.cli import main
from experiments.harness.config import compose, validate_config

TESTS = Path(__file__).parent
SEARCH = f"hydra.searchpath=[file://{TESTS / 'harness_configs'}]"
TOY = [SEARCH, "experiment=toy", "eval.limit=2"]


def message_of(exc_type: type[BaseException] | tuple[type[BaseException], ...], call: Any, *parts: str) -> str:
    """Run ``call``, expect ``exc_type``, and assert every fragment in ``parts`` is in its message."""
    with pytest.raises(exc_type) as info:
        call()
    text = str(info.value)
    for part in parts:
        assert part in text, f"{part!r} not in {text!r}"
    return text


def config(*overrides: str) -> Any:
    return validate_config(compose(list(overrides)))


def tiny_model(bridge: dict[str, Any], llm: str = "tiny_llama", encoder: Any = "tiny_vit") -> Any:
    from llm_adapters import build_multimodal_lm

    return build_multimodal_lm(encoder, bridge, llm)


# names: the closest known one and the known ones ---------------------------------------------------------------
def test_unknown_bridge_name() -> None:
    message_of(RegistryError, lambda: BRIDGES.get("qformr"), "Unknown bridge 'qformr'", "Did you mean 'qformer'?",
               "Known bridges:", "perceiver", "'package.module:name'")


def test_unknown_encoder_name() -> None:
    from encoders import ENCODERS

    message_of(RegistryError, lambda: ENCODERS.get("timm_vitt"), "Unknown encoder 'timm_vitt'",
               "Did you mean 'timm_vit'?", "Known encoders:", "open_clip")


def test_unknown_llm_name() -> None:
    from llm_adapters import LLMS

    message_of(RegistryError, lambda: LLMS.get("tiny_lama"), "Unknown llm 'tiny_lama'", "Did you mean 'tiny_llama'?",
               "tiny_qwen2")


def test_unknown_data_source_name() -> None:
    import experiments.world.datasource  # noqa: F401  (registers the world source)
    from experiments.harness.data import DATA_SOURCES

    message_of(RegistryError, lambda: DATA_SOURCES.get("wrld"), "Unknown data 'wrld'", "Did you mean 'world'?",
               "Known datas:")


def test_unknown_config_option_lists_the_options() -> None:
    from hydra.errors import MissingConfigException

    message_of(MissingConfigException, lambda: compose(["bridge=perceivr"]), "bridge/perceivr", "perceiver")


def test_unknown_task_name() -> None:
    import experiments.world.datasource  # noqa: F401
    from experiments.harness.data import DATA_SOURCES, TaskData

    data = TaskData(train={"attribute": []}, eval={"attribute": [], "compare": []})
    assert DATA_SOURCES.get("world")
    message_of(ConfigError, lambda: data.select_eval(["atribute"], "eval.tasks"), "'eval.tasks'", "atribute",
               "known: attribute, compare")


# keys and types -----------------------------------------------------------------------------------------------------
def test_misspelt_key() -> None:
    message_of(ConfigError, lambda: compose(["stages.align.lrr=3"]), "'stages.align.lrr'", "Did you mean 'lr'?",
               "Valid keys at 'stages.align'")


def test_misspelt_bridge_key_lists_the_schema() -> None:
    message_of(ConfigError, lambda: compose(["bridge=perceiver", "bridge.num_latentz=3"]),
               "'bridge.num_latentz'", "Did you mean 'num_latents'?", "max_num_frames")


def test_wrong_type() -> None:
    message_of(ConfigError, lambda: config("train.effective_batch_size=abc"),
               "Wrong type for config key 'train.effective_batch_size'", "abc",
               "Fix: give 'train.effective_batch_size' a value of type int")


def test_wrong_type_in_the_bridge_section() -> None:
    message_of(ConfigError, lambda: config("bridge=perceiver", "bridge.num_latents=abc"),
               "Wrong type for config key 'bridge.num_latents'", "'abc'", "a value of type int")


# ranges at config time: key, value, allowed range, fix --------------------------------------------------------------
@pytest.mark.parametrize(("override", "parts"), [
    ("stages.align.lr=-1", ("'stages.align.lr' = -1.0", "allowed > 0", "Fix:")),
    ("stages.align.warmup_ratio=5", ("'stages.align.warmup_ratio' = 5.0", "0 <= value <= 1", "warmup_steps")),
    ("stages.align.max_steps=0", ("'stages.align.max_steps' = 0", ">= 1", "Fix:")),
    ("+stages.align.betas=[0.9,1.5]", ("'stages.align.betas' = [0.9, 1.5]", "two values in [0, 1)", "Fix:")),
    ("eval.limit=-1", ("'eval.limit' = -1", ">= 1 (or null)", "eval.limit=null")),
    ("eval.tasks=[]", ("'eval.tasks' = []", "without evaluation", "eval.tasks=null")),
    ("train.effective_batch_size=0", ("'train.effective_batch_size' = 0", ">= 1", "Fix:")),
])
def test_out_of_range_harness_values(override: str, parts: tuple[str, ...]) -> None:
    message_of(ConfigError, lambda: config(override), *parts)


@pytest.mark.parametrize(("overrides", "parts"), [
    (["bridge=perceiver", "bridge.num_latents=0"], ("'bridge.num_latents' = 0", "allowed >= 1", "Fix: set")),
    (["bridge=flamingo", "bridge.cross_attn_every_n_layers=0"], ("'bridge.cross_attn_every_n_layers' = 0", ">= 1")),
    (["bridge=qformer", "bridge.hidden_size=100", "bridge.num_heads=12"],
     ("'bridge.hidden_size' = 100 is not divisible by 'bridge.num_heads' = 12", "e.g. 96")),
    (["bridge=qformer", "bridge.dropout=1.5"], ("'bridge.dropout' = 1.5", "0 <= p < 1")),
    (["bridge=mmfuser", "bridge.num_points=0"], ("'bridge.num_points' = 0", ">= 1")),
])
def test_out_of_range_bridge_values(overrides: list[str], parts: tuple[str, ...]) -> None:
    message_of(ConfigError, lambda: config(*overrides), *parts)


def test_eagle_with_one_encoder() -> None:
    message_of(ConfigError, lambda: config("bridge=eagle"), "Bridge 'eagle' needs at least 2 encoders",
               "gives 1", "silently", "Fix: give 'encoder' a mapping")


def test_flamingo_block_interval_above_the_lm_depth() -> None:
    spec = {"name": "flamingo", "cross_attn_every_n_layers": 100, "perceiver_depth": 1, "perceiver_heads": 2,
            "perceiver_dim_head": 16, "num_latents": 4, "xattn_heads": 2, "xattn_dim_head": 16}
    message_of(ConfigError, lambda: tiny_model(spec), "'bridge.cross_attn_every_n_layers' = 100",
               "LM of 2 layer(s)", "Allowed: 1 to 2", "Fix:")


def test_effective_batch_not_divisible_by_the_device_count() -> None:
    from experiments.harness.trainer import batch_plan

    run = config("train.effective_batch_size=10")
    message_of(ConfigError, lambda: batch_plan(run, run.stages["align"], world_size=3),
               "effective batch size 10 is not divisible by the world size 3", "train.effective_batch_size")


# model-build contracts ---------------------------------------------------------------------------------------------
def test_mmfuser_layers_beyond_the_encoder_depth() -> None:
    message_of(ValueError, lambda: tiny_model({"name": "mmfuser", "layers": [1, 50], "num_heads": 2}),
               "Encoder layer 50 is out of range", "4 layers", "valid: -4..3")


def test_hyper_attention_on_an_unsupported_lm_family() -> None:
    message_of(ValueError, lambda: tiny_model({"name": "hyper_attention", "num_hyper_layers": 1}, "tiny_gpt2"),
               "'gpt2' LM is not supported", "llama, qwen2, mistral", "Pick one of those families")


def test_more_frames_than_time_embeddings() -> None:
    io = BridgeIO((EncoderInfo("e", 32, (4, 4), 2),), LMInfo(64))
    bridge = BRIDGES.build({"name": "perceiver", "depth": 1, "heads": 2, "dim_head": 8, "num_latents": 4,
                            "max_num_frames": 2}, io)
    feats = {"e": VisionFeatures((torch.rand(3, 16, 32),), (1,), (4, 4), 32)}
    message_of(ValueError, lambda: bridge(feats, num_frames=3), "3 frames per media item", "max_num_frames=2",
               "raise it")


# images at the collator / encoder input ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def collate() -> Any:
    from llm_adapters import MultimodalCollator

    model = tiny_model({"name": "mlp", "projector": "linear"})
    return MultimodalCollator.for_model(model, train=True)


def sample(images: list[Any], text: str = "<image> what colour?") -> dict[str, Any]:
    return {"text": text, "answer": "red", "images": images, "meta": {"id": "s7"}}


def test_more_images_than_markers(collate: Any) -> None:
    message_of(ValueError, lambda: collate([sample([torch.rand(3, 32, 32)] * 2)]),
               "has 1 <image> marker(s) in its text but 2 image(s)", "one marker per image")


def test_a_task_that_needs_images_given_none(collate: Any) -> None:
    message_of(ValueError, lambda: collate([sample([])]), "has 1 <image> marker(s) in its text but 0 image(s)")


def test_uint8_image(collate: Any) -> None:
    image = torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)
    message_of(TypeError, lambda: collate([sample([image])]), "Sample 0 (id s7) image 0", "torch.uint8",
               "image.float() / 255")


def test_float_image_in_0_255(collate: Any) -> None:
    message_of(ValueError, lambda: collate([sample([torch.rand(3, 32, 32) * 255])]), "Sample 0 (id s7) image 0",
               "outside [0, 1]", "0-255: divide by 255")


def test_nan_image(collate: Any) -> None:
    image = torch.rand(3, 32, 32)
    image[0, 0, :5] = float("nan")
    message_of(ValueError, lambda: collate([sample([image])]), "5 of 3072 values are NaN or infinite", "Fix:")


def test_image_with_the_wrong_channel_count(collate: Any) -> None:
    message_of(ValueError, lambda: collate([sample([torch.rand(1, 32, 32)])]), "Expected 3 channels; got 1")


def test_pixels_of_the_wrong_size_at_the_encoder() -> None:
    from encoders import build_encoder_set

    encoders = build_encoder_set("tiny_vit")
    message_of(ValueError, lambda: encoders(torch.rand(2, 3, 40, 40)), "built for 32x32 inputs; got 40x40",
               "encoder.transform()")


# plug-ins --------------------------------------------------------------------------------------------------------
def test_a_missing_plugin_module(tmp_path: Path, capsys) -> None:
    assert main(["train", *TOY, "plugins=[no_such_pkg.bridges]", f"run_dir={tmp_path}"]) != 0
    message_of(RegistryError, lambda: BRIDGES.get("no_such_pkg.mod:thing"), "Cannot import 'no_such_pkg.mod'",
               "No module named 'no_such_pkg'", "PYTHONPATH", "plugins=[...]")


@dataclass
class _WrongConfig:
    tokens: int = 2


@BRIDGES.register("_wrong_shape", _WrongConfig)
class _WrongShape(PrefixBridge):
    """Says it makes ``tokens`` tokens but returns one more."""

    def __init__(self, config: _WrongConfig, io: BridgeIO) -> None:
        super().__init__(config, io)
        self.proj = torch.nn.Linear(io.encoder.width, io.lm.hidden_size)

    @property
    def needs(self) -> BridgeNeeds:
        return BridgeNeeds()

    def num_visual_tokens(self, num_frames: int = 1) -> int:
        return self.config.tokens

    def flops_per_media(self, num_frames: int = 1) -> int:
        return 0

    def forward(self, features: Any, num_frames: int = 1, instruction: Any = None) -> torch.Tensor:
        x = next(iter(features.values())).last
        return self.proj(x[:, : self.config.tokens + 1])


def test_a_plugin_returning_the_wrong_shape() -> None:
    from llm_adapters import MultimodalCollator

    model = tiny_model({"name": "_wrong_shape"})
    batch = MultimodalCollator.for_model(model, train=True)([sample([torch.rand(3, 32, 32)])])
    text = message_of(RuntimeError, lambda: model(batch), "_wrong_shape", "num_visual_tokens(1)")
    assert re.search(r"\(1, 3, \d+\)", text) and re.search(r"\(1, 2, \d+\)", text)  # what it gave, what it owes


# run directories and tables ----------------------------------------------------------------------------------------
def test_a_run_dir_that_is_a_file(tmp_path: Path, capsys) -> None:
    target = tmp_path / "a_file"
    target.write_text("not a directory")
    assert main(["train", *TOY, f"run_dir={target}"]) != 0
    captured = capsys.readouterr()
    assert f"run_dir={target} cannot be a run directory: {target} is a file, not a directory" in captured.err
    assert "Fix: pick another run_dir=PATH" in captured.err and target.read_text() == "not a directory"


def test_table_on_a_folder_of_failed_runs_lists_them(tmp_path: Path, capsys) -> None:
    from experiments.harness.rundir import RunDir

    RunDir(tmp_path / "a").update(status="failed", error="ValueError: bad projector", config={"bridge": "mlp"})
    assert main(["table", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no finished run under" in err and "a (failed: ValueError: bad projector)" in err
    assert err.strip().splitlines()[-1].startswith("bridgelab table: no finished run")  # the message, no traceback


def test_load_run_on_a_failed_run(tmp_path: Path) -> None:
    from experiments.harness.loading import load_run
    from experiments.harness.rundir import RunDir

    cfg = json.loads(json.dumps(harness_toy.toy_config()))
    RunDir(tmp_path).update(status="failed", error="RuntimeError: out of memory", config=cfg)
    message_of(RuntimeError, lambda: load_run(tmp_path), "status 'failed': RuntimeError: out of memory",
               "untrained", "allow_unfinished=True")


def test_an_encoder_key_that_cannot_reach_a_preset_encoder_set() -> None:
    message_of(ConfigError, lambda: config("experiment=quick_ablation", "bridge=eagle", "+encoder.unfreeze_last_k=1"),
               "'encoder.unfreeze_last_k' on the command line cannot apply to 'by_bridge.eagle.encoder'",
               "vit, expert", "Fix: set it per encoder", "+by_bridge.eagle.encoder.vit.unfreeze_last_k=")
    run = config("experiment=quick_ablation", "bridge=mlp", "+encoder.unfreeze_last_k=1")
    assert run.encoder == {"world": "vit", "unfreeze_last_k": 1}  # other bridges' encoder sets are not this run's
