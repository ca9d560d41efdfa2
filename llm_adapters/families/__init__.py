"""Per-family structural knowledge of HF causal LMs; importing registers the built-in families."""

from llm_adapters.families.base import FAMILIES, Family, get_family, register_family
from llm_adapters.families.gpt2 import GPT2Family
from llm_adapters.families.llama import LlamaStyleFamily
from llm_adapters.families.mpt import MPTFamily
from llm_adapters.families.opt import OPTFamily

__all__ = [
    "FAMILIES",
    "Family",
    "GPT2Family",
    "LlamaStyleFamily",
    "MPTFamily",
    "OPTFamily",
    "get_family",
    "register_family",
]
