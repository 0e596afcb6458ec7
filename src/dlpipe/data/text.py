"""Free text as token sequences: a CSV's text column (`data.csv.text_column`) read by the sequence families.

Where the tokenizer is fitted, and why not at prepare time: fetch and prepare cache the raw text (dataset.npz keeps
the column as strings) and the split indices only. A tokenizer's vocabulary is learned from text, so, like the
normaliser's statistics, it is fitted by whoever trains, on the rows that fit trains on (a fold's training part, the
final fit's training part; labelled or not), never on validation, scored or test rows (`PreparedData.split`). A
tokenizer fitted once at prepare time would have seen the other folds' text. Fitting one takes milliseconds on the
corpora these models train on, and changing `data.csv.max_tokens` or `data.csv.vocab_size` re-runs fetch (its
params), not a cache of token ids.

The tokenizer (Hugging Face `tokenizers`): lowercase and accent-stripping normaliser, whitespace and punctuation
pre-tokenizer, a word-level vocabulary trained from the training text (`train_from_iterator`): its most frequent
words, at most `data.csv.vocab_size` tokens with `[PAD]` = 0 and `[UNK]` = 1 (any other word). Word level, not
WordPiece: its trainer breaks ties between equally frequent merges in hash-map order, so the same text gave different
vocabularies run to run (4 in 30 fits, tokenizers 0.23); a study must be reproducible. A text becomes one channel of token ids, its first
`data.csv.max_tokens` tokens (longer texts are cut there, as the key says), padded at the end with NaN steps like a
short series (`base.series_lengths`), so the sequence families mask text padding as they mask series padding. The
tokenizer's JSON (`Tokenizer.to_str()`) travels with the logged model, whose pyfunc tokenizes raw text the same way.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# one process per fit on a shared machine; and the Rust thread pool must not be live when Lightning or the pools fork
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1: the trainer puts the special tokens first


@dataclass(frozen=True)
class TextEncoder:
    """A fitted tokenizer (its JSON) and the number of tokens a text keeps."""

    tokenizer_json: str
    max_tokens: int

    @classmethod
    def fit(cls, texts: Sequence[str], vocab_size: int, max_tokens: int) -> TextEncoder:
        """A word-level tokenizer trained on `texts` only (the rows a model trains on): its `vocab_size` - 2 most
        frequent words (ties by text), then `[PAD]` and `[UNK]`; ids are the same for the same texts in every run."""
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

        texts = [str(t) for t in texts]
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # every word of the training text (the trainer's cut at vocab_size breaks ties by hash order; cut below)
        trainer = trainers.WordLevelTrainer(vocab_size=1 << 30, special_tokens=[PAD, UNK], show_progress=False)
        tokenizer.train_from_iterator(texts, trainer)
        counts = Counter(token for encoding in tokenizer.encode_batch(texts) for token in encoding.tokens)
        words = sorted((w for w in counts if w not in (PAD, UNK)), key=lambda w: (-counts[w], w))[: vocab_size - 2]
        order = [PAD, UNK] + sorted(words)
        tokenizer.model = models.WordLevel({t: i for i, t in enumerate(order)}, unk_token=UNK)
        tokenizer.enable_truncation(max_tokens)
        return cls(tokenizer.to_str(), max_tokens)

    @property
    def tokenizer(self):  # tokenizers.Tokenizer (built on each use: it is not picklable across every pool)
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.tokenizer_json)

    @property
    def vocabulary(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()

    @property
    def size(self) -> int:
        """Token ids run 0..size-1."""
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """N x 1 x max_tokens float32 token ids, NaN after each text's last token (an empty text is one `[UNK]`)."""
        return torch.from_numpy(encode_ids(self.tokenizer, texts, self.max_tokens))


def encode_ids(tokenizer, texts: Sequence[str], max_tokens: int) -> np.ndarray:
    """Token ids of `texts` as the models take them (the served pyfunc has its own copy of these lines)."""
    out = np.full((len(texts), 1, max_tokens), np.nan, dtype=np.float32)
    unk = tokenizer.token_to_id(UNK)
    for i, encoding in enumerate(tokenizer.encode_batch([str(t) for t in texts])):
        ids = encoding.ids[:max_tokens] or [unk]
        out[i, 0, : len(ids)] = ids
    return out
