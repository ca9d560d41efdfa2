"""An offline tokenizer for tiny LMs: a byte-level BPE trained in memory in a few milliseconds.

No tokenizer files can be downloaded here, so tiny LMs built from a config get this one: byte-level (any text
encodes, nothing is unknown), ``<pad>``, ``<s>``, ``</s>`` as special tokens (ids 0, 1, 2), and BPE merges learnt
from a small corpus (:data:`DEFAULT_CORPUS`, or the caller's text). Training is deterministic, and
``save_pretrained(dir)`` + ``AutoTokenizer.from_pretrained(dir)`` round-trips to identical ids.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")

DEFAULT_CORPUS = (
    "a red square and a blue circle on a white background. the green triangle is left of the yellow star.",
    "how many shapes are there? there are three shapes. what colour is the circle? the circle is blue.",
    "do both images show the same colour? yes. no. the digit is seven. the number is 4 and 2.",
    "user: describe the image. assistant: a small purple square in the top right corner.",
    "the cat sat on the mat. a photo of a dog. one two three four five six seven eight nine ten zero.",
    "which image has the orange shape? the first image. the second image. above below left right middle.",
)


def build_tiny_tokenizer(
    corpus: Iterable[str] | None = None,
    vocab_size: int = 384,
    extra_special_tokens: Iterable[str] = (),
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of at most ``vocab_size`` entries on ``corpus``.

    Args:
        corpus: training text (defaults to :data:`DEFAULT_CORPUS`); a bigger corpus gives more merges.
        vocab_size: upper bound of the vocabulary (256 byte symbols + specials + merges).
        extra_special_tokens: more special tokens to reserve right after ``<pad> <s> </s>``.

    Returns:
        A ``PreTrainedTokenizerFast`` with pad/bos/eos set; ``len(tokenizer) <= vocab_size``.
    """
    specials = list(SPECIAL_TOKENS) + [t for t in extra_special_tokens if t not in SPECIAL_TOKENS]
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size {vocab_size} is too small for 256 byte symbols + {len(specials)} specials")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus if corpus is not None else DEFAULT_CORPUS), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens=specials[len(SPECIAL_TOKENS) :],
    )
