"""An offline word-level tokenizer for the tiny ShapesWorld VLM, with the Qwen2-VL chat and vision tokens.

The tiny VLM answers questions about ShapesWorld scenes: a closed vocabulary of a few hundred words (the
scene vocabulary of ``worlds/shapes/vocab.py``, the prompt words of ``pretrain/tokenizer.py``, the words of
questions and answers, and those of the Qwen2-VL chat template's system line), one token per word and one
per digit, as in ``pretrain/tokenizer.py``, and one per punctuation mark (``[12, 40]`` is seven tokens). Words
outside the vocabulary map to ``<unk>``.

The special tokens are Qwen2-VL's, spelt as in its ``tokenizer.json``: ``<|endoftext|>`` (padding, as in
Qwen2-VL), ``<|im_start|>``, ``<|im_end|>`` (end of a turn, the eos), ``<|vision_start|>``,
``<|vision_end|>``, ``<|vision_pad|>``, ``<|image_pad|>``, ``<|video_pad|>``. ``<think>``, ``</think>``,
``<answer>``, ``</answer>`` are added tokens that are not special (as Qwen3 keeps ``<think>``), so a decoded
reply keeps them even with ``skip_special_tokens``. Like Qwen's tokenizer it adds no BOS / EOS: the chat
template writes every marker. Newlines are not tokens (whitespace separates words), so a rendered chat loses
its line breaks: harmless for a model that only ever sees this template.

It is a ``transformers.PreTrainedTokenizerFast`` saved as ``tokenizer.json`` + ``tokenizer_config.json`` with
``tokenizer_class`` ``TokenizersBackend`` (transformers' class for a plain ``tokenizer.json``), so that
``AutoTokenizer`` reloads it without a Qwen2 BPE vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from visalign.pretrain.tokenizer import BASE_WORDS
from visalign.worlds.shapes import vocab as shapes_vocab

UNK = "<unk>"
PAD = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
VISION_PAD, IMAGE_PAD, VIDEO_PAD = "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"
# Qwen2-VL's special tokens, in the order of its tokenizer.json (ids 151643, 151644, ... there)
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    PAD, IM_START, IM_END, VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD,
)  # fmt: skip
REASONING_TOKENS: tuple[str, ...] = ("<think>", "</think>", "<answer>", "</answer>")

# Words of visual questions and their answers, and of the chat template's default system line.
QUESTION_WORDS: tuple[str, ...] = (
    "what", "which", "how", "many", "there", "color", "colour", "colors", "colours", "shape", "shapes",
    "object", "objects", "thing", "things", "count", "total", "does", "do", "contain", "contains", "any",
    "no", "yes", "not", "none", "zero", "or", "than", "more", "fewer", "same", "as", "it", "its", "this",
    "that", "at", "be", "by", "for", "from", "has", "have", "where", "who", "top", "bottom", "side",
    "answer", "question", "word", "words", "think", "step", "first", "then", "so", "only", "all", "both",
    "each", "other", "some", "see", "shown", "scene", "depicted", "drawn", "visible", "largest", "smallest",
    "big", "small", "six", "seven", "eight", "nine", "ten", "name", "give", "locate", "read", "can", "bounding",
    "box", "boxes", "pixel", "pixels", "coordinates", "x", "y", "width", "height", "corner", "center", "centre",
    "?", "!", ":", ";", "-", "[", "]", "(", ")",
    "system", "user", "assistant", "you", "helpful",
)  # fmt: skip


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Whitespace(),
        pre_tokenizers.Punctuation(behavior="isolated"),  # "]." is two tokens
        pre_tokenizers.Digits(individual_digits=True),
    ])  # fmt: skip


def _scene_words() -> list[str]:
    words = [*shapes_vocab.SHAPES, *shapes_vocab.PLURALS.values(), *shapes_vocab.COLORS]
    words += list(shapes_vocab.NUMBER_WORDS.values())
    words += [w for relation in shapes_vocab.RELATIONS for w in relation.split()]
    return words


def vlm_words(extra_words: Iterable[str] = ()) -> list[str]:
    """The plain words of the vocabulary, each once, in a fixed order (``extra_words`` last, sorted)."""
    words: list[str] = []
    seen: set[str] = set()
    for word in (*BASE_WORDS, *_scene_words(), *QUESTION_WORDS, *[str(d) for d in range(10)]):
        if word not in seen:
            seen.add(word)
            words.append(word)
    new = {piece for w in extra_words for piece, _ in _pre_tokenizer().pre_tokenize_str(w.lower())}
    return words + sorted(new - seen)


def build_vlm_tokenizer(extra_words: Iterable[str] = (), model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """The word-level tokenizer: ``<unk>`` is id 0, then the words, then the Qwen and reasoning tokens."""
    words = [UNK, *vlm_words(extra_words)]
    clash = set(words) & set(QWEN_SPECIAL_TOKENS + REASONING_TOKENS)
    if clash:
        raise ValueError(f"extra words clash with special tokens: {sorted(clash)}")
    core = Tokenizer(WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token=UNK))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = _pre_tokenizer()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (UNK, *QWEN_SPECIAL_TOKENS)])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=IM_END,
        bos_token=None,
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
