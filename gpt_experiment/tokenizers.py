"""
# Tokenizers

Two ways to turn text into token ids, behind one small interface (`encode`, `decode`,
`n_tokens`, `unknown`, `save`), so that training, sampling and `generate` need not care which:

* `CharacterTokenizer`: one token per character, the vocabulary being the sorted characters of
  the corpus, exactly as labml's `TextDataset` builds it (`tokenizer=character`, the default);
* `BPETokenizer`: a byte-level BPE trained with Hugging Face `tokenizers` on the training split
  (`tokenizer=bpe`, `bpe_vocab_size`). Byte-level means the base alphabet is the 256 bytes, so
  any text encodes, and decoding the ids gives back exactly the text: spaces, newlines,
  accents and emoji included. We add no normaliser and no prefix space for that reason.

A run saves its tokenizer as `tokenizer.json` in the run's folder when it starts (`save`), and
resuming, fine-tuning, `generate` and `evaluate` load it back from there (`load`), without the
corpus. Whatever a tokenizer is asked to encode goes through one check first
(`check_encodable`): a character vocabulary would silently drop the characters it lacks.

`bpe_vocab_size` defaults to 2,048: on a 1 MB corpus such as Tiny Shakespeare a few thousand
merges already cover the common words (about 2.5 characters a token), while the embedding and
generator stay small next to the transformer, and each token is still seen often enough to
learn; GPT-1's 40,478 is for a 5 GB corpus.
"""

import hashlib
import json
from pathlib import Path
from typing import Iterable, List, Union

import numpy as np

from . import files
from .errors import UserError


# The default vocabulary size of the BPE tokenizer, for a corpus of about 1 MB.
DEFAULT_BPE_VOCAB_SIZE = 2048
FILE_NAME = 'tokenizer.json'


class CharacterTokenizer:
    """One token per character; `itos[i]` is the character of id `i`."""
    kind = 'character'

    def __init__(self, itos: List[str]):
        self.itos = list(itos)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.n_tokens = len(self.itos)
        # A lookup table from code point to id (-1: not in the vocabulary), for fast encoding.
        self._lut = np.full(max(map(ord, self.itos), default=0) + 1, -1, dtype=np.int64)
        for i, c in enumerate(self.itos):
            self._lut[ord(c)] = i

    @classmethod
    def from_chunks(cls, chunks: Iterable[str]) -> 'CharacterTokenizer':
        chars = set()
        for chunk in chunks:
            chars.update(chunk)
        return cls(sorted(chars))

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of `text` as an array; characters outside the vocabulary are dropped, as labml does."""
        points = np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)
        ids = np.full(len(points), -1, dtype=np.int64)
        inside = points < len(self._lut)
        ids[inside] = self._lut[points[inside]]
        return ids[ids >= 0]

    def encode(self, text: str) -> List[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return ''.join(self.itos[i] for i in ids)

    # A character it has not seen is not in the vocabulary
    encodes_any_text = False

    def unknown(self, text: str) -> List[str]:
        """The characters of `text` that the vocabulary lacks, sorted."""
        return sorted(set(text) - self.stoi.keys())

    def to_json(self) -> str:
        return json.dumps({'kind': self.kind, 'itos': self.itos}, ensure_ascii=False)


class BPETokenizer:
    """A byte-level BPE from Hugging Face `tokenizers`."""
    kind = 'bpe'

    def __init__(self, tokenizer):
        self.hf = tokenizer
        self.n_tokens = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, chunks: Iterable[str], vocab_size: int) -> 'BPETokenizer':
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE())
        # Split into words GPT-2's way and map bytes to printable characters; no prefix space,
        # so that decoding is the exact inverse.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(chunks, trainer=trainer)
        return cls(tok)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.hf.encode(text).ids, dtype=np.int64)

    def encode_batch(self, texts: List[str]) -> np.ndarray:
        """Encode many texts at once (in parallel, in Rust) into one array."""
        # `encode_batch_fast` skips the offsets we do not use (tokenizers >= 0.20).
        encodings = getattr(self.hf, 'encode_batch_fast', self.hf.encode_batch)(texts)
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings] or [np.zeros(0, np.int64)])

    def encode(self, text: str) -> List[int]:
        return self.hf.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    # Every byte is in a byte-level vocabulary.
    encodes_any_text = True

    def unknown(self, text: str) -> List[str]:
        return []

    def to_json(self) -> str:
        return self.hf.to_str()


def from_json(s: str):
    """A tokenizer from what `to_json` wrote."""
    value = json.loads(s)
    if value.get('kind') == 'character':
        itos = value['itos']
        # one distinct character per id
        if not isinstance(itos, list) or not all(isinstance(c, str) and len(c) == 1 for c in itos) \
                or len(set(itos)) != len(itos):
            raise ValueError('itos is not a list of distinct characters')
        return CharacterTokenizer(itos)
    from tokenizers import Tokenizer
    return BPETokenizer(Tokenizer.from_str(s))


def check_encodable(tokenizer, texts: Union[str, Iterable[str]], what: str, whose: str = '', then: str = ''):
    """
    Refuse text with characters that the vocabulary lacks, naming them (at most ten): a
    character tokenizer would drop them. A byte-level BPE encodes anything.
    """
    if tokenizer.encodes_any_text:
        return  # (without reading the texts, which may be a whole corpus streamed)
    missing = sorted({c for text in ([texts] if isinstance(texts, str) else texts) for c in tokenizer.unknown(text)})
    if missing:
        shown = ' '.join(map(repr, missing[:10])) + (f' and {len(missing) - 10} more' if len(missing) > 10 else '')
        raise UserError(f'{what} has characters that are not in the vocabulary{whose}: {shown}{then}')


def digest(tokenizer) -> str:
    """What a tokenizer is, byte for byte: the sha256 of its JSON. The token cache and each checkpoint record it."""
    return hashlib.sha256(tokenizer.to_json().encode('utf-8')).hexdigest()


def save(tokenizer, folder: Path):
    """Write `tokenizer.json` into `folder` (a run's folder), whole or not at all."""
    files.write_atomically(Path(folder) / FILE_NAME, lambda f: f.write(tokenizer.to_json().encode('utf-8')))


def load(folder: Path):
    """The tokenizer `save` wrote into `folder`; one line if it is missing or not a tokenizer."""
    path = Path(folder) / FILE_NAME
    text = files.read_text(path)
    try:
        return from_json(text)
    except Exception as e:  # JSON that is not a tokenizer, or not JSON
        raise UserError(f'{path} is not a tokenizer ({e.__class__.__name__})') from None


class StreamDecoder:
    """
    Decode ids one at a time into text as it becomes printable. A byte-level BPE token can hold
    part of a multi-byte character; such text decodes to U+FFFD until its last byte arrives,
    so we hold back while the decoded tail ends in one.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids = []

    def add(self, token: int) -> str:
        self.ids.append(token)
        if isinstance(self.tokenizer, CharacterTokenizer):
            return self.tokenizer.itos[token]
        text = self.tokenizer.decode(self.ids)
        # A character is at most 4 bytes: after 4 pending ids, U+FFFD is in the text for real.
        if text.endswith('\ufffd') and len(self.ids) < 4:
            return ''
        # Everything is printed: start again from here.
        self.ids = []
        return text

    def flush(self) -> str:
        """Whatever is still held back, at the end of a sample."""
        held = self.ids and not isinstance(self.tokenizer, CharacterTokenizer)
        text = self.tokenizer.decode(self.ids) if held else ''
        self.ids = []
        return text
