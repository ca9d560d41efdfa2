"""BLIP-2 stage 1: pretraining the Q-Former on image-text pairs without an LLM (LAVIS ``blip2_qformer.py``).

Three objectives share the Q-Former and differ only in who may attend to whom (BRIDGES.md 2.4):

* ITC (image-text contrastive), uni-modal: the queries (with the image) and the text run in separate forwards.
  Image-text similarity is the max over queries of cosine(query, text ``[CLS]``), divided by a learnable
  temperature (init 0.07); symmetric cross-entropy with label smoothing 0.1.
* ITM (image-text matching), bidirectional over ``[queries; text]``; ``itm_head`` averaged over the query outputs.
  Each image gets one hard-negative text and each text one hard-negative image, sampled in proportion to the
  softmaxed ITC similarities (diagonal excluded), giving ``B`` positives and ``2B`` negatives.
* ITG (image-grounded generation), multimodal causal: queries see queries only; text sees every query and the text
  up to itself. The first text token is replaced by ``[DEC]``; next-token cross-entropy with label smoothing 0.1
  through BERT's LM head (transform + decoder tied to the word embeddings).

LAVIS runs ITG as a text-only forward over the cached query keys/values of the ITC image forward; here it is one
forward over ``[queries; text]`` with :func:`itg_mask`. The two are equal (the queries cannot see the text, so their
states are those of the image forward); only dropout samples differ. Contrastive and hard-negative sampling use the
local batch (LAVIS gathers across GPUs first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bridges.common.bert_layers import bert_init
from bridges.common.features import encoder_features, layer_tokens
from bridges.qformer import QFormerBridge
from encoders.base import VisionFeatures


@dataclass
class QFormerPretrainConfig:
    """Stage-1 settings (LAVIS ``Blip2Qformer`` defaults).

    Attributes:
        embed_dim: width of the ITC projections ``vision_proj`` / ``text_proj`` (256).
        temperature: initial value of the learnable ITC temperature (0.07).
        label_smoothing: for ITC and ITG (0.1; ITM uses none).
        bos_token_id: the ``[DEC]`` id that replaces the first text token for ITG (30522 with LAVIS' tokenizer,
            which appends ``[DEC]`` to ``bert-base-uncased``'s 30522 tokens).
        hard_negatives: sample ITM negatives from the ITC similarities (LAVIS); ``False`` samples them uniformly
            among the other pairs of the batch.
    """

    embed_dim: int = 256
    temperature: float = 0.07
    label_smoothing: float = 0.1
    bos_token_id: int = 30522
    hard_negatives: bool = True


def itm_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """Bidirectional mask over ``[queries; text]``, padding removed from the keys: bool ``(B, S, S)``."""
    keys = torch.cat([text_mask.new_ones(text_mask.shape[0], num_queries), text_mask], dim=1).bool()
    return keys[:, None, :].expand(-1, keys.shape[1], -1)


def itg_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """Multimodal causal (UniLM) mask over ``[queries; text]``: bool ``(B, S, S)``, True = may attend.

    Queries attend to all queries and no text; text token ``t`` attends to all queries and text tokens ``<= t``;
    padded text keys are hidden from everyone (LAVIS ``get_extended_attention_mask`` with ``has_query``).
    """
    size = num_queries + text_mask.shape[1]
    allowed = torch.ones(size, size, dtype=torch.bool, device=text_mask.device).tril()
    allowed[:, :num_queries] = True  # every position sees every query
    allowed[:num_queries, num_queries:] = False  # queries never see text
    return itm_mask(num_queries, text_mask) & allowed


class QFormerPretrainer(nn.Module):
    """Stage-1 model around a :class:`~bridges.qformer.QFormerBridge` built with text layers (``text_layers=True``
    or ``instruction_aware=True``); training it updates the bridge in place for stage 2.

    New modules (LAVIS names): ``vision_proj``, ``text_proj`` (hidden -> embed_dim), ``itm_head`` (hidden -> 2),
    ``temp``, and BERT's LM head as ``lm_transform`` (dense, GELU, LayerNorm) + ``lm_bias`` (LAVIS ``Qformer.cls``;
    its decoder weight is the Q-Former's word embedding matrix).
    """

    def __init__(self, bridge: QFormerBridge, config: QFormerPretrainConfig | None = None) -> None:
        super().__init__()
        if not bridge.has_text:
            raise ValueError(
                "Stage-1 pretraining needs the Q-Former's text layers: build the bridge with "
                "text_layers=True (or instruction_aware=True)."
            )
        self.config = config or QFormerPretrainConfig()
        bc = bridge.config
        if not 0 <= self.config.bos_token_id < bc.vocab_size:
            raise ValueError(
                f"bos_token_id {self.config.bos_token_id} is outside the Q-Former vocabulary "
                f"({bc.vocab_size}); set QFormerPretrainConfig.bos_token_id to the [DEC] id"
            )
        d, e = bc.hidden_size, self.config.embed_dim
        self.bridge = bridge
        self.vision_proj = nn.Linear(d, e)
        self.text_proj = nn.Linear(d, e)
        self.itm_head = nn.Linear(d, 2)
        self.temp = nn.Parameter(torch.tensor(self.config.temperature))
        self.lm_transform = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=bc.layer_norm_eps))
        self.lm_transform.apply(bert_init)
        self.lm_bias = nn.Parameter(torch.zeros(bc.vocab_size))

    @property
    def num_queries(self) -> int:
        return self.bridge.config.num_query_tokens

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """ITC image side: normalised query embeddings from the queries-only forward, ``(B, Q, E)``."""
        return F.normalize(self.vision_proj(self.bridge.qformer(image)), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """ITC text side: normalised ``[CLS]`` embedding from the text-only forward, ``(B, E)``."""
        out = self.bridge.qformer(None, input_ids, attention_mask, use_queries=False)
        return F.normalize(self.text_proj(out[:, 0]), dim=-1)

    def itg_logits(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits at every text position, ``(B, L, vocab)``; ``input_ids`` already start with [DEC]."""
        out = self.bridge.qformer(image, input_ids, itg_mask(self.num_queries, attention_mask))
        hidden = self.lm_transform(out[:, self.num_queries :])
        return F.linear(hidden, self.bridge.qformer.word_embeddings.weight, self.lm_bias)  # type: ignore[union-attr]

    def itm_logits(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Match / no-match logits ``(B, 2)`` from the bidirectional joint forward."""
        out = self.bridge.qformer(image, input_ids, itm_mask(self.num_queries, attention_mask))
        return self.itm_head(out[:, : self.num_queries]).mean(dim=1)

    def feature_losses(
        self, features: Mapping[str, VisionFeatures], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward` from encoder outputs (one image per caption): the bridge's layer, CLS as it is configured."""
        bridge = self.bridge
        feats = encoder_features(features, bridge.io.encoder.name)
        image = layer_tokens(feats, bridge.layer, bridge.config.with_cls, bridge.language_projection.weight.dtype)
        return self(image, input_ids, attention_mask)

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The three stage-1 losses and their sum.

        Args:
            image: encoder features ``(B, P, Dv)`` (the bridge's ``ln_vision`` is applied here).
            input_ids: caption ids ``(B, L)`` in the Q-Former's vocabulary, starting with ``[CLS]``, right-padded.
            attention_mask: ``(B, L)``, 1 on tokens and 0 on padding.

        Returns:
            ``{"loss", "itc", "itm", "itg"}``, scalars.
        """
        batch = image.shape[0]
        if batch < 2:
            raise ValueError(
                "Stage-1 pretraining needs at least 2 pairs per batch (ITC and ITM use in-batch negatives)"
            )
        if input_ids.shape != attention_mask.shape or input_ids.shape[0] != batch:
            raise ValueError(f"ids {tuple(input_ids.shape)} / mask {tuple(attention_mask.shape)} vs {batch} images")
        ls = self.config.label_smoothing
        image = self.bridge.ln_vision(image)
        targets = torch.arange(batch, device=image.device)

        image_feats = self.image_features(image)  # (B, Q, E)
        text_feat = self.text_features(input_ids, attention_mask)  # (B, E)
        sim_i2t = torch.einsum("iqe,je->ijq", image_feats, text_feat).amax(-1) / self.temp  # (B_img, B_txt)
        sim_t2i = sim_i2t.t()
        itc = (
            F.cross_entropy(sim_i2t, targets, label_smoothing=ls)
            + F.cross_entropy(sim_t2i, targets, label_smoothing=ls)
        ) / 2

        with torch.no_grad():
            eye = torch.eye(batch, dtype=torch.bool, device=image.device)
            if self.config.hard_negatives:
                w_t2i, w_i2t = F.softmax(sim_t2i.float(), 1) + 1e-4, F.softmax(sim_i2t.float(), 1) + 1e-4
            else:
                w_t2i = w_i2t = torch.ones(batch, batch, device=image.device)
            neg_image = torch.multinomial(w_t2i.masked_fill(eye, 0), 1).squeeze(1)  # a negative image per text
            neg_text = torch.multinomial(w_i2t.masked_fill(eye, 0), 1).squeeze(1)  # a negative text per image
        ids_all = torch.cat([input_ids, input_ids, input_ids[neg_text]])
        mask_all = torch.cat([attention_mask, attention_mask, attention_mask[neg_text]])
        image_all = torch.cat([image, image[neg_image], image])
        itm_labels = torch.cat([targets.new_ones(batch), targets.new_zeros(2 * batch)])
        itm = F.cross_entropy(self.itm_logits(image_all, ids_all, mask_all), itm_labels)

        dec_ids = input_ids.clone()
        dec_ids[:, 0] = self.config.bos_token_id
        labels = dec_ids.masked_fill(attention_mask == 0, -100)
        logits = self.itg_logits(image, dec_ids, attention_mask)
        itg = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), label_smoothing=ls)
        return {"loss": itc + itm + itg, "itc": itc, "itm": itm, "itg": itg}
