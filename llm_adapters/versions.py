"""The transformers releases this package is tested with, and a warning at import when another one is installed.

``llm_adapters`` reaches below transformers' public surface in a few places (decoder-layer call arguments, the
attention interface, the KV-cache object handed to each layer), and those move between minor releases: 5.24 renamed
the layers' ``past_key_values`` keyword to ``cache``, and before the fix the inject bridges then generated wrong
text without an error. So the supported range is explicit, equal to the ``transformers`` requirement in
``pyproject.toml`` (a test keeps the two equal), and an install outside it is named at import, before any run.
"""

from __future__ import annotations

import warnings
from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import Version

#: Lower bound: the oldest release ``make test`` runs the LM and bridge tests on (``make test-oldest``).
#: Upper bound: the next minor release, since internals are used; raise it after ``make test-latest`` passes.
TESTED_TRANSFORMERS = SpecifierSet(">=5.23.0,<5.25")


class UntestedTransformersWarning(UserWarning):
    """The installed transformers is outside :data:`TESTED_TRANSFORMERS`."""


def untested_transformers_message(installed: str | None = None) -> str | None:
    """Why the installed (or given) transformers version is outside the tested range, or ``None`` when inside."""
    installed = installed if installed is not None else metadata.version("transformers")
    if Version(installed) in TESTED_TRANSFORMERS:
        return None
    return (
        f"bridgelab's llm_adapters are tested with transformers {TESTED_TRANSFORMERS}, but transformers {installed} "
        "is installed. Decoder internals the inject bridges rely on (layer call arguments, the KV cache) change "
        "between releases, so generation may be silently wrong. Install the tested versions with "
        "`pip install -c requirements-lock.txt -e .` (what `make install` does), or run `make test-latest` to check "
        "this release and widen the range in pyproject.toml and llm_adapters/versions.py if it passes."
    )


def warn_if_untested() -> None:
    """Emit :class:`UntestedTransformersWarning` when the installed transformers is outside the tested range."""
    message = untested_transformers_message()
    if message is not None:
        warnings.warn(message, UntestedTransformersWarning, stacklevel=3)
