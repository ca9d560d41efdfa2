"""The embedded world's closed word-level vocabulary and its Hugging Face tokenizer.

Every word the world can write (captions, questions, answers) is one token, so exact-match scoring of a generated
answer is trivial and no tokenizer training is needed (WORLD_PROTOTYPE.md, pitfall 5). The vocabulary is a fixed,
ordered tuple: token ids never depend on a seed or on which tasks are enabled, which keeps the cached LM valid.

:func:`build_tokenizer` wraps it as a ``transformers`` fast tokenizer (``tokenizers`` ``WordLevel`` model, whitespace
pre-tokenizer, ``<bos>`` prepended by the post-processor, left padding), so any code written for an HF tokenizer
(the LLM adapters, ``generate``) works with it, and ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` round-trip
offline. ``<image>`` is THE media placeholder and is registered as a special token, so adapters that "add"
``<image>`` find it already present and resize nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
IMAGE_TOKEN = "<image>"
END_OF_CHUNK = "<|endofchunk|>"  # Flamingo's chunk separator; present so adapters need no embedding resize
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, IMAGE_TOKEN, END_OF_CHUNK)

# Ordinary words. ``<img>`` / ``</img>`` delimit a media slot in the text; they stay in the text around the
# ``<image>`` placeholder, so the LM sees the same frame around captions (pretraining) and visual tokens (bridges).
MEDIA_OPEN, MEDIA_CLOSE = "<img>", "</img>"
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "cross")
SHAPE_PLURALS: tuple[str, ...] = ("squares", "circles", "triangles", "crosses")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VERTICAL: tuple[str, ...] = ("top", "middle", "bottom")
HORIZONTAL: tuple[str, ...] = ("left", "centre", "right")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
YES_NO: tuple[str, ...] = ("yes", "no")
STRUCTURE: tuple[str, ...] = (
    MEDIA_OPEN,
    MEDIA_CLOSE,
    "question",
    "answer",
    ":",
    "?",
    ",",
    ".",
    "target",
    "a",
    "an",
    "the",
    "at",
    "and",
    "then",
    "is",
    "it",
    "are",
    "there",
    "what",
    "which",
    "where",
    "how",
    "many",
    "colour",
    "shape",
    "digit",
    "objects",
    "way",
    "does",
    "move",
    "do",
    "both",
    "images",
    "show",
    "same",
)

WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        SPECIAL_TOKENS
        + STRUCTURE
        + COLOURS
        + SHAPES
        + SHAPE_PLURALS
        + NUMBER_WORDS
        + VERTICAL
        + HORIZONTAL
        + DIRECTIONS
        + YES_NO
    )
)
VOCAB: dict[str, int] = {word: i for i, word in enumerate(WORDS)}
VOCAB_SIZE = len(WORDS)


def token_id(word: str) -> int:
    """The id of ``word``; raises naming the word if it is not in the closed vocabulary."""
    try:
        return VOCAB[word]
    except KeyError:
        raise KeyError(f"'{word}' is not in the world vocabulary ({VOCAB_SIZE} words); see experiments/world/vocab.py")


def encode_words(text: str) -> list[int]:
    """Whitespace-split ``text`` into ids without adding ``<bos>`` (fast path for pretraining loops)."""
    return [token_id(w) for w in text.split()]


def build_tokenizer(padding_side: str = "left") -> PreTrainedTokenizerFast:
    """The world's HF fast tokenizer.

    ``tokenizer(text)`` prepends ``<bos>``; it never appends ``<eos>`` (training code appends the answer and
    ``<eos>`` itself). Left padding is the default because generation batches need it.
    """
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(VOCAB, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, VOCAB[BOS])]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=[IMAGE_TOKEN, END_OF_CHUNK],
        padding_side=padding_side,
        model_max_length=4096,
    )
