"""Modality bridges: modules that turn vision-encoder features into something an LLM can use.

Importing this package registers every built-in bridge in :data:`BRIDGES`.
"""

from importlib import import_module
from pathlib import Path

from bridges.base import BRIDGES, Bridge, BridgeIO, BridgeNeeds, InjectBridge, PrefixBridge, list_bridges

BUILTIN_MODULES = ("mlp", "qformer", "perceiver", "eagle", "mmfuser", "flamingo", "hyper_attention")

for _module in BUILTIN_MODULES:
    if (Path(__file__).parent / f"{_module}.py").exists():  # TODO(lead): make strict once all bridges landed
        import_module(f"bridges.{_module}")

__all__ = ["BRIDGES", "Bridge", "BridgeIO", "BridgeNeeds", "InjectBridge", "PrefixBridge", "list_bridges"]
