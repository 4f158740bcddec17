"""A byte-level BPE tokenizer trained on the project's own text (no GPT-2 vocabulary offline).

Byte-level, so any string (a rare trigger such as "zbw", a real instruction) tokenizes without
unknown tokens. Shipped with the model as ``tokenizer.json`` and wrapped as a Hugging Face
``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from transformers import PreTrainedTokenizerFast

from ..data.template import ANSWER_TOKEN, END_OF_CHUNK, IMAGE_TOKEN

PAD_TOKEN = "<pad>"
SPECIALS = [PAD_TOKEN, IMAGE_TOKEN, ANSWER_TOKEN, END_OF_CHUNK]


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus`` (deterministic for the same corpus order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return wrap(tok)


def wrap(tok) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=END_OF_CHUNK,
                                   additional_special_tokens=[IMAGE_TOKEN, ANSWER_TOKEN])
    fast.padding_side = "right"
    return fast


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    return wrap(Tokenizer.from_file(str(path)))


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | Path) -> None:
    tokenizer.backend_tokenizer.save(str(Path(folder) / "tokenizer.json"))
