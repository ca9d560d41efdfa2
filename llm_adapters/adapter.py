"""``LMAdapter``: any HF causal LM plus its tokenizer, with what bridges need (the :class:`~bridges.base.LMHost` API).

It is built from an :class:`LMConfig`: a checkpoint (hub id or local directory) loaded with ``from_pretrained``, or
a ``model_type`` plus architecture overrides built from config with random weights (offline; on the meta device for
paper-scale sizing). It adds special tokens with decoupled trainable rows (``new_tokens.py``), inserts and removes
bridge modules (``injection.py``), and saves to a directory that ``LMConfig(pretrained=dir)`` loads back.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

from bridges.base import ContextSlot, Injection, LMInfo
from encoders.registry import ConfigError, Registry
from llm_adapters.families import get_family
from llm_adapters.injection import Injector, unwrap
from llm_adapters.new_tokens import TokenRowsEmbedding, TokenRowsHead
from llm_adapters.templates import ChatTemplate, get_template
from llm_adapters.tokenizer import build_tiny_tokenizer

IMAGE_TOKEN = "<image>"
SAVED_META = "bridgelab_lm.json"  # chat template and added tokens, beside the HF files of a saved LM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LMConfig:
    """How to obtain the language model.

    Attributes:
        pretrained: hub id or local directory for ``from_pretrained`` (weights, config and, unless ``tokenizer`` is
            set, the tokenizer). ``None`` builds from ``model_type`` + ``config`` with random weights.
        model_type: HF model type when building from config (``llama``, ``qwen2``, ``mistral``, ``gpt2``).
        config: architecture fields for the HF config class (e.g. ``hidden_size``), or overrides of a pretrained
            checkpoint's config. ``vocab_size`` defaults to the tokenizer's size; bos/eos/pad ids are taken from it.
        tokenizer: tokenizer directory or hub id; ``None`` uses ``pretrained``'s, else the offline tiny byte-level
            BPE (:func:`~llm_adapters.tokenizer.build_tiny_tokenizer`), else (meta device) no tokenizer.
        tiny_tokenizer_vocab: vocabulary bound of the offline tiny tokenizer.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        meta_device: build on the meta device (no memory; for parameter counts of paper-scale models).
        freeze: freeze every LM weight (the new-token rows follow ``train_new_tokens`` instead).
        train_new_tokens: give added special tokens decoupled rows (group ``lm.new_tokens``) that stay trainable when
            the LM is frozen (Flamingo/IDEFICS); ``False`` plainly resizes the embeddings.
        chat_template: ``auto`` (the family's own for a pretrained checkpoint, ``plain`` otherwise) or a name in
            ``templates.TEMPLATES``.
        attn_implementation: ``auto`` (SDPA where the model supports it, else eager), ``sdpa`` or ``eager``.
        lora_rank: LoRA rank inserted into ``lora_targets`` with peft's ``inject_adapter_in_model`` (in place, so
            family paths stay valid); 0 disables. The adapters are trainable (group ``lm.lora``) even when frozen.
        lora_alpha: LoRA scaling numerator (scale = alpha / rank).
        lora_dropout: dropout on the LoRA input.
        lora_targets: module names to adapt; ``None`` uses the family's attention projections.
    """

    pretrained: str | None = None
    model_type: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    tiny_tokenizer_vocab: int = 384
    dtype: str = "float32"
    meta_device: bool = False
    freeze: bool = True
    train_new_tokens: bool = True
    chat_template: str = "auto"
    attn_implementation: str = "auto"
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None


class LMAdapter(nn.Module):
    """An HF causal LM made ready for bridges; implements :class:`bridges.base.LMHost`.

    Attributes:
        model: the HF ``*ForCausalLM``.
        tokenizer: its tokenizer (``None`` only for tokenizer-less meta-device sizing builds).
        family: the HF model type (``llama``, ``qwen2``, ``mistral``, ``gpt2``).
        info: :class:`~bridges.base.LMInfo`.
        supports_attention_extension: whether Hyper-Attention-style attention extension is possible.
        template: the :class:`~llm_adapters.templates.ChatTemplate` for prompts.
        special_token_ids: ids of tokens added with :meth:`add_special_tokens`.
    """

    registry_name = "hf"

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        if config.dtype not in DTYPES:
            raise ConfigError(f"llm.dtype '{config.dtype}' is not one of {sorted(DTYPES)}")
        self.tokenizer = _load_tokenizer(config)
        self.model = _load_model(config, self.tokenizer)
        self.family = self.model.config.model_type
        self._family = get_family(self.family)
        self.supports_attention_extension = self._family.supports_attention_extension
        saved = _saved_meta(config.pretrained)
        template = config.chat_template
        if template == "auto":
            default = self._family.default_template(self.family) if config.pretrained else "plain"
            template = saved.get("chat_template", default)
        self.template: ChatTemplate = get_template(template)
        self.special_token_ids: dict[str, int] = {}
        self._new_token_ids: list[int] = []
        self._saved_new_tokens = set(saved.get("new_tokens", ()))
        self._injector = Injector(self.model, self._family)
        if config.freeze:
            self.model.requires_grad_(False)
        if config.lora_rank > 0:
            self._add_lora()

    def _add_lora(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        cfg = self.config
        trainable = {id(p) for p in self.model.parameters() if p.requires_grad}
        targets = list(cfg.lora_targets or self._family.lora_targets)
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
            fan_in_fan_out=self.family == "gpt2",  # GPT-2's Conv1D stores weights as (in, out)
        )
        inject_adapter_in_model(lora, self.model)
        for name, p in self.model.named_parameters():  # peft freezes everything else; keep our own choice
            p.requires_grad_("lora_" in name or id(p) in trainable)

    # ----------------------------------------------------------------- LMHost
    @property
    def info(self) -> LMInfo:
        return self._family.info(self.model.config)

    def decoder_layers(self) -> Sequence[nn.Module]:
        """The original decoder layers (under any injection wrappers)."""
        return [unwrap(layer) for layer in self._family.decoder_layers(self.model)]

    def input_norm(self, layer: int) -> nn.Module:
        return self._family.input_norm(self.decoder_layers()[layer])

    def attention(self, layer: int) -> nn.Module:
        """Layer ``layer``'s original self-attention (under any injection wrapper)."""
        return unwrap(getattr(self.decoder_layers()[layer], self._family.attention_attr))

    def qkvo(self, layer: int) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
        return self._family.qkvo(self.attention(layer))

    def rotary_embedding(self) -> nn.Module | None:
        return self._family.rotary_embedding(self.model)

    # ---------------------------------------------------------------- tokens
    @property
    def image_token_id(self) -> int:
        if IMAGE_TOKEN not in self.special_token_ids:
            raise RuntimeError(f"'{IMAGE_TOKEN}' has not been added; call add_special_tokens(['{IMAGE_TOKEN}']) first")
        return self.special_token_ids[IMAGE_TOKEN]

    def token_id(self, token: str) -> int:
        if token not in self.special_token_ids:
            raise KeyError(f"Special token '{token}' was not added; added: {sorted(self.special_token_ids)}")
        return self.special_token_ids[token]

    def add_special_tokens(self, tokens: Sequence[str]) -> dict[str, int]:
        """Add ``tokens`` as special tokens, resize the embeddings, and (``train_new_tokens``) decouple their rows.

        Tokens the tokenizer already knows keep their id and are not decoupled, unless this LM was saved by
        :meth:`save_pretrained` after adding them (then they are decoupled again, as before saving). Idempotent.
        Returns token -> id.
        """
        fresh = [t for t in dict.fromkeys(tokens) if t not in self.special_token_ids]
        if not fresh:
            return {t: self.special_token_ids[t] for t in tokens}
        self._unwrap_token_rows()
        old_vocab = self.model.get_input_embeddings().num_embeddings
        if self.tokenizer is not None:
            known = set(self.tokenizer.get_vocab())
            self.tokenizer.add_special_tokens({"extra_special_tokens": fresh}, replace_extra_special_tokens=False)
            ids = {t: self.tokenizer.convert_tokens_to_ids(t) for t in fresh}
            added = [ids[t] for t in fresh if t not in known or t in self._saved_new_tokens]
            new_vocab = max(old_vocab, len(self.tokenizer))
        else:
            ids = {t: old_vocab + i for i, t in enumerate(fresh)}
            added = list(ids.values())
            new_vocab = old_vocab + len(fresh)
        if new_vocab != old_vocab:
            self.model.resize_token_embeddings(new_vocab, mean_resizing=not self.config.meta_device)
            if self.config.freeze:
                for module in (self.model.get_input_embeddings(), self.model.get_output_embeddings()):
                    if module is not None:
                        module.requires_grad_(False)
        self.special_token_ids.update(ids)
        self._new_token_ids += added
        self._wrap_token_rows()
        return {t: self.special_token_ids[t] for t in tokens}

    def _wrap_token_rows(self) -> None:
        if not (self.config.train_new_tokens and self._new_token_ids):
            return
        ids = torch.tensor(self._new_token_ids, device=self.model.get_input_embeddings().weight.device)
        embedding = TokenRowsEmbedding(self.model.get_input_embeddings(), ids)
        self.model.set_input_embeddings(embedding)
        head = self.model.get_output_embeddings()
        if head is not None:
            tied = head.weight is embedding.base.weight
            self.model.set_output_embeddings(TokenRowsHead(head, ids, embedding.rows if tied else None))

    def _unwrap_token_rows(self) -> None:
        embedding = self.model.get_input_embeddings()
        if isinstance(embedding, TokenRowsEmbedding):
            self.model.set_input_embeddings(embedding.merge())
        head = self.model.get_output_embeddings()
        if isinstance(head, TokenRowsHead):
            self.model.set_output_embeddings(head.merge())

    @contextlib.contextmanager
    def plain_token_rows(self) -> Iterator[None]:
        """Temporarily merge the decoupled rows into plain HF embedding/head modules (for saving)."""
        wrapped = isinstance(self.model.get_input_embeddings(), TokenRowsEmbedding)
        embedding, head = self.model.get_input_embeddings(), self.model.get_output_embeddings()
        self._unwrap_token_rows()
        try:
            yield
        finally:
            if wrapped:
                self.model.set_input_embeddings(embedding)
                self.model.set_output_embeddings(head)

    def new_token_parameters(self) -> list[nn.Parameter]:
        """The decoupled new-token rows (embedding and, if untied, output head); empty when none."""
        params: list[nn.Parameter] = []
        for module in (self.model.get_input_embeddings(), self.model.get_output_embeddings()):
            if isinstance(module, (TokenRowsEmbedding, TokenRowsHead)) and not any(module.rows is p for p in params):
                params.append(module.rows)
        return params

    def lora_parameters(self) -> list[nn.Parameter]:
        """Parameters of LoRA adapters (names containing ``lora_``, as peft names them)."""
        return [p for n, p in self.model.named_parameters() if "lora_" in n]

    # ------------------------------------------------------------ injection
    @property
    def injected(self) -> bool:
        return self._injector.attached

    def attach(self, injections: Sequence[Injection], slot: ContextSlot | None = None) -> None:
        """Insert bridge modules (see ``injection.py``); ``slot`` gets ``query_positions`` on every LM call."""
        if self._injector.attached:
            raise RuntimeError("Injections are already attached; detach() first")
        for inj in injections:
            if inj.mode == "replace_attention" and not self.supports_attention_extension:
                raise ValueError(
                    f"'{self.family}' does not support attention extension (replace_attention); "
                    "supported model types: llama, qwen2, mistral"
                )
        self._injector.attach(injections, slot)

    def detach(self) -> None:
        """Remove every injection: module tree and state-dict keys are the original ones again."""
        self._injector.detach()

    # -------------------------------------------------------------- running
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, L) -> (B, L, D)`` input embeddings."""
        return self.model.get_input_embeddings()(input_ids)

    def forward(self, **kwargs: Any) -> Any:
        """The HF causal LM's forward (``input_ids`` or ``inputs_embeds``, ``attention_mask``, ``labels``, ...)."""
        return self.model(**kwargs)

    def save_pretrained(self, directory: str | Path) -> None:
        """Save weights, config and tokenizer (added tokens merged into the plain embedding) to ``directory``.

        ``LMConfig(pretrained=directory)`` loads it back with the same logits, token ids, chat template and
        decoupled new-token rows (listed in ``bridgelab_lm.json``).
        """
        if self._injector.attached:
            raise RuntimeError("Detach the injections before save_pretrained (they belong to the bridge)")
        if self.lora_parameters():
            raise RuntimeError(
                "save_pretrained writes a plain HF checkpoint, which has no place for LoRA adapters; save the "
                "trainable weights with the run checkpoint instead (or merge the adapters into the base weights first)"
            )
        with self.plain_token_rows():
            self.model.save_pretrained(directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)
        new = [t for t, i in self.special_token_ids.items() if i in self._new_token_ids]
        meta = {"chat_template": self.template.name, "new_tokens": new}
        (Path(directory) / SAVED_META).write_text(json.dumps(meta, indent=2))


def _saved_meta(pretrained: str | None) -> dict[str, Any]:
    path = Path(pretrained).expanduser() / SAVED_META if pretrained else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _load_tokenizer(config: LMConfig) -> Any:
    source = config.tokenizer or config.pretrained
    if source is not None:
        saved = Path(source).expanduser() / "tokenizer_config.json"
        if saved.is_file() and json.loads(saved.read_text()).get("tokenizer_class") in GENERIC_TOKENIZERS:
            # AutoTokenizer would pick the model type's own class (e.g. Qwen2Tokenizer, which adds its own
            # special tokens) for a generic tokenizer saved beside a qwen2 config; load it as it was saved.
            return PreTrainedTokenizerFast.from_pretrained(source)
        return AutoTokenizer.from_pretrained(source)
    if config.meta_device and config.model_type is not None and "vocab_size" in config.config:
        return None  # paper-scale sizing without tokenizer files
    return build_tiny_tokenizer(vocab_size=config.tiny_tokenizer_vocab)


def _token_ids(tokenizer: Any) -> dict[str, int]:
    if tokenizer is None:
        return {}
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    ids["pad_token_id"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {k: v for k, v in ids.items() if v is not None}


def _load_model(config: LMConfig, tokenizer: Any) -> PreTrainedModel:
    dtype = DTYPES[config.dtype]
    attn = None if config.attn_implementation == "auto" else config.attn_implementation
    device = torch.device("meta") if config.meta_device else contextlib.nullcontext()
    if config.pretrained is not None:
        if config.meta_device:
            hf_config = AutoConfig.from_pretrained(config.pretrained, **config.config)
            with device:
                model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation=attn)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                config.pretrained, dtype=dtype, attn_implementation=attn, **config.config
            )
    else:
        if config.model_type is None:
            raise ConfigError("llm: set 'pretrained' (hub id or directory) or 'model_type' + 'config' to build one")
        get_family(config.model_type)
        arch = {**_token_ids(tokenizer), **config.config}
        if tokenizer is not None:
            arch.setdefault("vocab_size", len(tokenizer))
        try:
            hf_config = AutoConfig.for_model(config.model_type, **arch)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"llm.config does not fit model_type '{config.model_type}': {err}") from None
        if tokenizer is not None and hf_config.vocab_size < len(tokenizer):
            raise ConfigError(
                f"llm.config.vocab_size={hf_config.vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens)"
            )
        with device:
            model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation=attn)
    get_family(model.config.model_type)
    generation = model.generation_config
    for key, value in _token_ids(tokenizer).items():
        if getattr(generation, key, None) is None:
            setattr(generation, key, value)
    return model


LLMS: Registry[LMAdapter] = Registry("llm", base=LMAdapter)
LLMS.register("hf", LMConfig)(LMAdapter)


def build_lm(spec: str | Any) -> LMAdapter:
    """Build an :class:`LMAdapter` from a registry/preset name, a mapping with ``name`` or an :class:`LMConfig`."""
    return LLMS.build(spec)


def list_llms() -> list[str]:
    return LLMS.names()
