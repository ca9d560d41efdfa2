"""Modality bridges: modules that turn vision-encoder features into something an LLM can use.

Importing this package registers every built-in bridge in :data:`BRIDGES`; user bridges register the same way
from their own modules (``bridge.name: my_pkg.my_module:my_name`` or the ``plugins`` list of a run config).
"""

from importlib import import_module

from bridges.base import BRIDGES, Bridge, BridgeIO, BridgeNeeds, InjectBridge, PrefixBridge, list_bridges

BUILTIN_MODULES = ("mlp", "qformer", "perceiver", "eagle", "mmfuser", "flamingo", "hyper_attention")
BUILTIN_MODULES += ("avgpool", "pixel_shuffle", "c_abstractor")  # the token-matched baselines

for _module in BUILTIN_MODULES:
    import_module(f"bridges.{_module}")

__all__ = ["BRIDGES", "Bridge", "BridgeIO", "BridgeNeeds", "InjectBridge", "PrefixBridge", "list_bridges"]
