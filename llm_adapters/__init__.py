"""HF causal LMs made multimodal: families, prefix splicing, reversible layer injection, the composed MultimodalLM.

Importing this package registers the LM presets in :data:`LLMS` and warns when the installed transformers is outside
the tested range (:mod:`llm_adapters.versions`).
"""

from llm_adapters import presets as _presets  # noqa: F401  (registers the presets)
from llm_adapters.adapter import IMAGE_TOKEN, LLMS, LMAdapter, LMConfig, build_lm, list_llms
from llm_adapters.batch import MultimodalBatch
from llm_adapters.collate import MultimodalCollator
from llm_adapters.families import FAMILIES, Family, get_family
from llm_adapters.injection import InjectedAttention, InjectedDecoderLayer, Injector
from llm_adapters.multimodal_lm import MultimodalLM, MultimodalLMOutput, build_multimodal_lm
from llm_adapters.splice import SpliceOutput, positions_from_mask, splice_visual_tokens
from llm_adapters.templates import TEMPLATES, ChatTemplate, get_template
from llm_adapters.tokenizer import build_tiny_tokenizer
from llm_adapters.versions import TESTED_TRANSFORMERS, UntestedTransformersWarning, warn_if_untested

warn_if_untested()

__all__ = [
    "FAMILIES",
    "IMAGE_TOKEN",
    "LLMS",
    "TEMPLATES",
    "TESTED_TRANSFORMERS",
    "ChatTemplate",
    "Family",
    "InjectedAttention",
    "InjectedDecoderLayer",
    "Injector",
    "LMAdapter",
    "LMConfig",
    "MultimodalBatch",
    "MultimodalCollator",
    "MultimodalLM",
    "MultimodalLMOutput",
    "SpliceOutput",
    "UntestedTransformersWarning",
    "build_lm",
    "build_multimodal_lm",
    "build_tiny_tokenizer",
    "get_family",
    "get_template",
    "list_llms",
    "positions_from_mask",
    "splice_visual_tokens",
]
