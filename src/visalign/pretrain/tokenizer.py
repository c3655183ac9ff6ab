"""An offline word-level tokenizer for the tiny ShapesWorld models.

ShapesWorld prompts use a closed vocabulary of a few dozen words, so each word is one token: sequences
stay short (the text context the transformer attends to is ``model_max_length`` tokens) and nothing has
to be downloaded. Numbers are split into single digits, so ``"the number 407"`` costs five tokens and the
vocabulary holds ten digit tokens instead of a thousand numbers. Words outside the vocabulary map to
``<unk>``.

The result is a ``transformers.PreTrainedTokenizerFast``: diffusers pipelines call it exactly like a CLIP
tokenizer (``padding="max_length"``, ``truncation``, ``batch_decode``), it saves as ``tokenizer.json``
and reloads offline with ``from_pretrained``. Special-token ids are fixed: ``<pad>`` 0, ``<bos>`` 1,
``<unk>`` 2, ``<eos>`` 3; a text encoder built for it must use ``eos_token_id=3`` (CLIP pools the
hidden state at the first ``<eos>``).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

PAD, BOS, UNK, EOS = "<pad>", "<bos>", "<unk>", "<eos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, UNK, EOS)
PAD_ID, BOS_ID, UNK_ID, EOS_ID = 0, 1, 2, 3

# Words every vocabulary holds, whatever the prompt files say: GenEval-style prompt scaffolding,
# ShapesWorld's shapes (singular and plural), colours, counts, relations and digits.
BASE_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "and", "photo", "image", "picture", "with", "to", "on", "in", "is", "are",
    "left", "right", "above", "below", "number", "text", "digits", "written", "reads", "saying",
    "exactly", "showing", "single",
    "one", "two", "three", "four", "five",
    "circle", "circles", "square", "squares", "triangle", "triangles", "star", "stars", "cross", "crosses",
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white",
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", ",", ".", "'", "\"",
)  # fmt: skip


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )


def split_words(text: str) -> list[str]:
    """The tokens a prompt splits into before the vocabulary lookup (lower-cased, digits split)."""
    return [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(text.lower())]


def vocabulary(prompts: Iterable[str] = (), extra_words: Iterable[str] = ()) -> list[str]:
    """Special tokens, then the base words, then any new word found in ``prompts`` / ``extra_words`` (sorted)."""
    words = list(BASE_WORDS)
    seen = set(words)
    new = {w for p in prompts for w in split_words(p)} | {w.lower() for w in extra_words}
    words += sorted(new - seen)
    return list(SPECIAL_TOKENS) + words


def build_tokenizer(words: list[str] | None = None, model_max_length: int = 16) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` (default: :func:`vocabulary` ``()``) that pads to ``model_max_length``.

    Every encoded prompt is ``<bos> w1 ... wn <eos>`` followed by ``<pad>`` up to the requested length.
    """
    words = vocabulary() if words is None else list(words)
    if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise ValueError(f"vocabulary must start with the special tokens {SPECIAL_TOKENS}")
    if len(set(words)) != len(words):
        raise ValueError("vocabulary has duplicate words")
    vocab = {w: i for i, w in enumerate(words)}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = _pre_tokenizer()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)]
    )
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=model_max_length,
        padding_side="right",
    )
