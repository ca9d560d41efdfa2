"""The bridge contract: what every modality bridge declares, consumes and produces.

A bridge turns :class:`~encoders.base.VisionFeatures` into something the language model can use:

* a :class:`PrefixBridge` returns visual tokens ``(N_media, T, D_lm)`` that replace each ``<image>`` placeholder
  in the text (LLaVA MLP, Q-Former, Perceiver-as-prefix, Eagle, MMFuser);
* an :class:`InjectBridge` returns a visual *memory* and a set of :class:`Injection` s, modules that the LM
  adapter inserts into (or around) chosen decoder layers (Flamingo, Hyper Attention). Those modules read the
  memory and the media positions from an :class:`InjectionContext` that is set for one forward pass.

Bridges never import ``llm_adapters``: what an inject bridge needs to know about the LM arrives as an
:class:`LMHost`, a protocol that the per-family adapters implement.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import nn

from encoders.base import VisionFeatures
from encoders.registry import Registry


@dataclass(frozen=True)
class EncoderInfo:
    """Static facts about one encoder that a bridge is built against."""

    name: str
    width: int
    grid: tuple[int, int]
    num_layers: int


@dataclass(frozen=True)
class LMInfo:
    """Static facts about the language model that a bridge is built against."""

    hidden_size: int
    num_layers: int = 0
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    vocab_size: int = 0
    family: str = ""


@dataclass(frozen=True)
class BridgeIO:
    """Everything a bridge's constructor may depend on besides its own config.

    ``encoders`` is ordered: multi-encoder bridges (Eagle) use this order as their fixed expert order.
    """

    encoders: tuple[EncoderInfo, ...]
    lm: LMInfo

    @property
    def encoder(self) -> EncoderInfo:
        """The single encoder of a one-encoder bridge."""
        return self.encoders[0]


@dataclass(frozen=True)
class BridgeNeeds:
    """What a bridge requires of the encoders; checked when the model is built.

    Attributes:
        num_encoders: exact number of encoders required, or ``None`` for "one or more".
        layers: encoder layers to request (indices as in :func:`encoders.base.resolve_layers`), per encoder.
        needs_grid: whether the bridge uses the 2-D patch grid (and so cannot take a ragged token set).
        with_cls: whether the CLS token must be kept.
    """

    num_encoders: int | None = 1
    layers: tuple[int, ...] = (-1,)
    needs_grid: bool = False
    with_cls: bool = False


class Bridge(nn.Module, abc.ABC):
    """Base of every bridge. Subclasses are registered in :data:`BRIDGES` with a dataclass config."""

    kind: ClassVar[Literal["prefix", "inject"]]
    registry_name: ClassVar[str]
    #: settings a training stage may give the bridge (``stages.<name>.bridge_options``; see :meth:`configure_stage`)
    stage_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any, io: BridgeIO) -> None:
        super().__init__()
        self.config = config
        self.io = io

    def configure_stage(self, **options: Any) -> None:
        """Take a training stage's settings (keys of :attr:`stage_options`) at the stage start; a stage without
        any restores the config's behaviour. Bridges with stage options override this; the harness checks the
        keys against :attr:`stage_options` before the first stage."""
        if options:
            raise ValueError(f"Bridge '{self.registry_name}' takes no stage options, got {sorted(options)}")

    @property
    @abc.abstractmethod
    def needs(self) -> BridgeNeeds:
        """The encoder layers, encoder count and grid this bridge consumes."""

    @abc.abstractmethod
    def num_visual_tokens(self, num_frames: int = 1) -> int:
        """Visual tokens per media item (a prefix bridge's T; an inject bridge's memory length)."""

    @abc.abstractmethod
    def flops_per_media(self, num_frames: int = 1) -> int:
        """Forward FLOPs (2 x multiply-adds) of the bridge for one media item, LM excluded."""

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups for stage policies; every parameter belongs to exactly one group."""
        return {"bridge": list(self.parameters())}

    def check_io(self) -> None:
        """Raise a clear error when the encoders given do not satisfy :attr:`needs`."""
        needs = self.needs
        count = len(self.io.encoders)
        if needs.num_encoders is not None and count != needs.num_encoders:
            raise ValueError(
                f"Bridge '{self.registry_name}' needs {needs.num_encoders} encoder(s) but got {count} "
                f"({', '.join(e.name for e in self.io.encoders)}). Change the encoder config or the bridge."
            )
        if needs.num_encoders is None and count < 1:
            raise ValueError(f"Bridge '{self.registry_name}' needs at least one encoder.")


class PrefixBridge(Bridge):
    """A bridge whose output tokens are spliced into the LM input in place of each ``<image>`` placeholder."""

    kind = "prefix"

    @abc.abstractmethod
    def forward(
        self,
        features: Mapping[str, VisionFeatures],
        num_frames: int = 1,
        instruction: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Map encoder features to visual tokens.

        Args:
            features: per encoder name, features of ``N_media * num_frames`` images (media-major, frames inner).
            num_frames: frames per media item ``F`` (1 for images).
            instruction: optional ``(ids (N_media, L_i), mask (N_media, L_i))`` of each media item's instruction
                text (used by instruction-aware bridges such as InstructBLIP's Q-Former; ignored by others).

        Returns:
            ``(N_media, T, D_lm)`` with ``T == self.num_visual_tokens(num_frames)``.
        """


@dataclass
class InjectionContext:
    """Per-forward information that injected LM modules read (set by the LM adapter, never stored on modules).

    Attributes:
        memory: the bridge's visual memory ``(N_media, T, D_mem)`` from :meth:`InjectBridge.encode`.
        media_to_sample: ``(N_media,)`` the batch row of each media item.
        media_positions: ``(N_media,)`` index of each media item's ``<image>`` token in the padded sequence.
        media_rope_positions: ``(N_media,)`` the RoPE position id of each ``<image>`` token (MI-RoPE).
        query_positions: ``(B, L_q)`` indices, in the padded sequence, of the tokens of the current forward
            (``arange(L)`` for a full forward; the cache positions during cached generation).
        extras: bridge-specific cached tensors (e.g. visual K/V computed once per prompt during generation).
    """

    memory: torch.Tensor
    media_to_sample: torch.Tensor
    media_positions: torch.Tensor
    media_rope_positions: torch.Tensor
    query_positions: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def media_mask(self, mode: Literal["immediate", "all_previous", "strictly_after"]) -> torch.Tensor:
        """Which media each query token may attend to, ``(B, L_q, N_media)`` bool.

        ``immediate``: only the most recent media at or before the token (Flamingo default);
        ``all_previous``: every media at or before the token; ``strictly_after``: every media whose ``<image>``
        token is strictly before the token (mPLUG-Owl3's causal image mask).
        """
        if self.query_positions is None:
            raise RuntimeError("InjectionContext.query_positions is not set for this forward pass")
        q = self.query_positions[:, :, None]  # (B, Lq, 1)
        pos = self.media_positions[None, None, :]  # (1, 1, N)
        batch = torch.arange(q.shape[0], device=q.device)[:, None, None]
        same_sample = self.media_to_sample[None, None, :] == batch
        if mode == "strictly_after":
            return same_sample & (pos < q)
        seen = same_sample & (pos <= q)
        if mode == "all_previous" or seen.shape[-1] == 0:  # no media in the batch: nothing to pick from
            return seen
        # immediate: the seen media with the largest position
        latest = torch.where(seen, pos.expand_as(seen), torch.full_like(seen, -1, dtype=pos.dtype)).amax(-1, True)
        return seen & (pos == latest)


class ContextSlot:
    """A holder shared by the LM adapter and injected modules; the context lives here for one forward pass."""

    def __init__(self) -> None:
        self.context: InjectionContext | None = None

    @contextlib.contextmanager
    def use(self, context: InjectionContext) -> Iterator[InjectionContext]:
        previous, self.context = self.context, context
        try:
            yield context
        finally:
            self.context = previous

    def get(self) -> InjectionContext:
        if self.context is None:
            raise RuntimeError(
                "An injected bridge layer ran without an InjectionContext. Call the model through "
                "MultimodalLM.forward/generate, which sets it, rather than the bare LM."
            )
        return self.context


class LMHost(Protocol):
    """What an inject bridge may ask of the LM (implemented by the per-family adapters in ``llm_adapters``)."""

    family: str
    info: LMInfo
    supports_attention_extension: bool

    def decoder_layers(self) -> Sequence[nn.Module]: ...

    def input_norm(self, layer: int) -> nn.Module: ...

    def attention(self, layer: int) -> nn.Module: ...

    def qkvo(self, layer: int) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]: ...

    def rotary_embedding(self) -> nn.Module | None: ...


@dataclass
class Injection:
    """One module to insert into the LM; the LM adapter does the insertion, reversibly.

    ``mode == "before_layer"``: ``module(hidden_states (B, L, D)) -> (B, L, D)`` runs right before decoder layer
    ``layer`` (Flamingo's gated xattn-dense).

    ``mode == "replace_attention"``: the adapter replaces layer ``layer``'s self-attention ``attn`` with a wrapper
    that calls ``module(attn, hidden_states, **kwargs)`` with the arguments the decoder layer passed to ``attn``
    and expects ``attn``'s return value back (Hyper Attention). The LM's own weights stay in ``attn``; the module
    holds only the bridge's new parameters and uses ``attn``'s projections through :meth:`LMHost.qkvo`.

    In both modes the module is a submodule of the bridge (so its parameters are the bridge's) and reads the
    :class:`InjectionContext` from the bridge's :class:`ContextSlot`.
    """

    layer: int
    mode: Literal["before_layer", "replace_attention"]
    module: nn.Module


class InjectBridge(Bridge):
    """A bridge that conditions the LM from inside, through modules inserted at chosen decoder layers."""

    kind = "inject"

    def __init__(self, config: Any, io: BridgeIO) -> None:
        super().__init__(config, io)
        self.slot = ContextSlot()

    @abc.abstractmethod
    def encode(self, features: Mapping[str, VisionFeatures], num_frames: int = 1) -> torch.Tensor:
        """Visual memory ``(N_media, T, D_mem)`` for the injected modules."""

    @abc.abstractmethod
    def injections(self, host: LMHost) -> list[Injection]:
        """Build (once) and return the modules to insert into ``host``; they must be submodules of ``self``."""

    @property
    def extra_special_tokens(self) -> tuple[str, ...]:
        """Special tokens this bridge adds to the tokenizer besides ``<image>`` (e.g. ``<|endofchunk|>``)."""
        return ()


BRIDGES: Registry[Bridge] = Registry("bridge", base=Bridge)


def list_bridges() -> list[str]:
    return BRIDGES.names()
