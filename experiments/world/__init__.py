"""The embedded world: a small, deterministic synthetic world, its tasks, and its pretrained frozen backbones.

Nothing is downloaded: images are drawn procedurally (shapes, colours, sizes, positions, counts, and real 8x8
digits from scikit-learn), captions and questions use a closed word-level vocabulary, and the backbones the papers
assume (a frozen pretrained vision encoder and LM) are pretrained here, once, and cached by config hash.

Public API::

    from experiments.world import (
        build_world_backbones, WorldBackbonesConfig,   # backbones.py: ViT, ConvNet expert, LM, cached
        make_task_dataset, TaskOptions, TASKS,         # tasks.py: rendered samples of one task and split
        generate_samples, text_only_prompt,            # tasks.py: samples without pixels; captions in the slots
        WorldConfig,                                   # scenes.py: how scenes look
        build_tokenizer, IMAGE_TOKEN,                  # vocab.py: the HF tokenizer of the closed vocabulary
        ceiling_table, baselines,                      # ceilings.py: chance / random-image / text-only ceiling
        WorldDataConfig,                               # datasource.py: the harness data source ``world``
    )

    world = build_world_backbones({"lm": {"steps": 1500}})   # or WorldBackbonesConfig(...), or None for defaults
    encoder_spec = world.vit_spec          # {"name": "timm_vit", ..., "pretrained": ".../vit.safetensors"}
    eagle_specs = {"vit": world.vit_spec, "expert": world.expert_spec}
    llm_spec = world.llm_spec()            # {"name": "hf", "pretrained": world.lm_dir, "chat_template": "none"}
    train = make_task_dataset("compare", "train", 4000, seed=0)        # train[i] -> sample dict
    test = make_task_dataset("fine_detail", "test", 400, image_sizes=(32, 64))

The harness data source ``world`` is registered in ``experiments.harness.DATA_SOURCES`` when
``experiments.world.datasource`` is imported; ``data/world.yaml`` names it by import path
(``experiments.world.datasource:world``), so configs work without an explicit import. Heavy modules (timm,
transformers, the harness) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from experiments.world.ceilings import baselines
from experiments.world.scenes import WorldConfig
from experiments.world.tasks import (
    TASKS,
    Sample,
    TaskOptions,
    WorldDataset,
    generate_samples,
    make_task_dataset,
    text_only_prompt,
)
from experiments.world.vocab import IMAGE_TOKEN, VOCAB, WORDS, build_tokenizer

_LAZY = {
    "build_world_backbones": "experiments.world.backbones",
    "WorldBackbones": "experiments.world.backbones",
    "WorldBackbonesConfig": "experiments.world.backbones",
    "tiny_config": "experiments.world.backbones",
    "LMPretrainConfig": "experiments.world.pretrain_lm",
    "VitPretrainConfig": "experiments.world.pretrain_vision",
    "ExpertPretrainConfig": "experiments.world.pretrain_vision",
    "ceiling_table": "experiments.world.ceilings",
    "WorldData": "experiments.world.datasource",  # imports the harness; registers the data source ``world``
    "WorldDataConfig": "experiments.world.datasource",
}

__all__ = [
    "IMAGE_TOKEN",
    "TASKS",
    "VOCAB",
    "WORDS",
    "ExpertPretrainConfig",
    "LMPretrainConfig",
    "Sample",
    "TaskOptions",
    "VitPretrainConfig",
    "WorldBackbones",
    "WorldBackbonesConfig",
    "WorldConfig",
    "WorldData",
    "WorldDataConfig",
    "WorldDataset",
    "baselines",
    "build_tokenizer",
    "build_world_backbones",
    "ceiling_table",
    "generate_samples",
    "make_task_dataset",
    "text_only_prompt",
    "tiny_config",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'experiments.world' has no attribute '{name}'")
    return getattr(importlib.import_module(_LAZY[name]), name)
