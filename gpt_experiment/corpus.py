"""
# Corpora of any size

labml's `TextDataset` holds the corpus as one Python string and its tokens as one tensor: fine
for Tiny Shakespeare, impossible for a corpus larger than memory. Here a corpus is read as a
stream of chunks, tokenised once (with a progress bar) into a flat file of token ids, and that
file is memory-mapped: training windows are gathered from it batch by batch
([`ShuffledWindows`](data.html)), so only the pages a batch touches are ever read.

* Character corpora up to `IN_MEMORY_BYTES` keep labml's `TextDataset` (the labml recipe,
  unchanged); larger ones, and every corpus with `tokenizer=bpe`, come here.
* The split is 90/10 by *bytes* here (by characters in `TextDataset`), moved to the next
  character boundary; `valid_text=<path>` gives a separate validation file instead.
* Everything is cached beside the source, in `<file or folder>.cache/` (or labml's data
  folder when that is not writable), keyed by the files' paths, sizes and modification times:
  the tokenizer (`tokenizer-<key>.json`, so a second run does not retrain it) and the token
  files (`<split>-<key>.u16`, or `.u32` when the vocabulary has more than 65,536 tokens),
  keyed by the tokenizer too. Files are written under a temporary name that names the writer
  and renamed when complete, so an interrupted run never leaves a truncated cache behind, and
  what a killed writer left is removed the next time a run uses the folder.
* Text is encoded in chunks that end at a newline; a BPE word never spans a line, so this is
  the encoding of the whole text, except that a run of blank lines may be cut differently.
* A BPE tokenizer trains on the first `bpe_train_bytes` of the training split (BPE training
  holds word counts in memory; 100 MB of text is plenty to learn merges).
"""

import codecs
import hashlib
import os
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from labml import lab, monit

from . import checkpoints, tokenizers
from .data import check_vocabulary, corpus_files
from .errors import UserError

# Character corpora up to this size stay in memory, in labml's `TextDataset`.
IN_MEMORY_BYTES = 64 * 1024 * 1024
# Bytes read at a time.
CHUNK_BYTES = 4 * 1024 * 1024


class BPE:
    """What `tokenizer=bpe` selects: a BPE of `vocab_size` tokens, trained when the corpus loads."""

    def __init__(self, vocab_size: int, train_bytes: int):
        self.vocab_size = vocab_size
        self.train_bytes = train_bytes

    def __call__(self, text: str):
        raise TypeError('the BPE tokenizer is trained with the corpus; use the corpus tokenizer')


# A byte range of a corpus: the files and a `[start, end)` range of their concatenation.
Span = Tuple[List[Path], int, int]


def stream_text(span: Span, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """
    The text of a byte range, in chunks that end at a newline where there is one. Bytes that
    are not UTF-8 are a `UserError` that names the file and the byte offset in it.
    """
    files, start, end = span
    carry = ''
    offset = 0
    for file in files:
        size = file.stat().st_size
        lo, hi = max(start - offset, 0), min(end - offset, size)
        offset += size
        if lo >= hi:
            continue
        decoder = codecs.getincrementaldecoder('utf-8')('strict')
        with open(file, 'rb') as f:
            f.seek(lo)
            position = lo
            while position < hi:
                raw = f.read(min(chunk_bytes, hi - position))
                try:
                    text = decoder.decode(raw, final=position + len(raw) >= hi)
                except UnicodeDecodeError as e:
                    # `e.start` counts from the bytes the decoder held back from the last chunk.
                    held = len(e.object) - len(raw)
                    at = position - held + e.start
                    raise UserError(f'{file} is not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {at}') from None
                position += len(raw)
                text = carry + text
                cut = text.rfind('\n') + 1
                if cut == 0:
                    cut = len(text)
                carry = text[cut:]
                if cut:
                    yield text[:cut]
    if carry:
        yield carry


def _char_boundary(files: List[Path], at: int) -> int:
    """The first byte offset `>= at` that starts a UTF-8 character."""
    offset = 0
    for file in files:
        size = file.stat().st_size
        if at < offset + size:
            with open(file, 'rb') as f:
                f.seek(at - offset)
                tail = f.read(4)
            for b in tail:
                if b & 0xC0 != 0x80:
                    break
                at += 1
            return at
        offset += size
    return at


def _key(*parts) -> str:
    return hashlib.sha1('\0'.join(map(str, parts)).encode('utf-8')).hexdigest()[:16]


def files_key(files: List[Path]) -> str:
    """Changes when any file is replaced, grows or is touched."""
    return _key(*((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


def cache_dir(path: Path) -> Path:
    """`<file or folder>.cache/` beside the corpus, or labml's data folder when that is read-only."""
    path = Path(path).resolve()
    folder = path.parent / f'{path.name}.cache'
    try:
        folder.mkdir(exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        folder = Path(lab.get_data_path()) / 'cache' / _key(path)
        folder.mkdir(parents=True, exist_ok=True)
    # What killed writers left here goes before anything new is written.
    checkpoints.remove_leftovers(folder)
    return folder


def _write_atomic(path: Path, text: str):
    tmp = checkpoints.temporary(path)
    tmp.write_text(text, encoding='utf-8')
    tmp.replace(path)


def _encode(tokenizer, texts: List[str]) -> np.ndarray:
    if isinstance(tokenizer, tokenizers.BPETokenizer):
        return tokenizer.encode_batch(texts)
    return np.concatenate([tokenizer.encode_array(t) for t in texts])


def tokenise_to_file(span: Span, tokenizer, path: Path, name: str) -> np.memmap:
    """Encode a byte range into a token file (once), and memory-map it."""
    dtype = np.uint16 if tokenizer.n_tokens <= 2 ** 16 else np.uint32
    if not path.exists():
        total = max(span[2] - span[1], 1)
        tmp = checkpoints.temporary(path)
        done = 0
        with monit.section(f'Tokenise {name} ({total / 1e6:,.1f} MB)', total_steps=total), open(tmp, 'wb') as out:
            batch = []
            for chunk in stream_text(span, chunk_bytes=CHUNK_BYTES // 4):
                # Lines, so that the BPE encoder can spread a batch over the cores.
                batch.append(chunk)
                done += len(chunk.encode('utf-8'))
                # Characters encode chunk by chunk (numpy); BPE batches, to use every core.
                if len(batch) == (4 if isinstance(tokenizer, tokenizers.BPETokenizer) else 1):
                    out.write(_encode(tokenizer, batch).astype(dtype).tobytes())
                    batch = []
                    monit.progress(done)
            if batch:
                out.write(_encode(tokenizer, batch).astype(dtype).tobytes())
        tmp.replace(path)
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode='r')


class TokenCorpus:
    """
    A tokenised corpus: what `Configs` uses of labml's `TextDataset` (`n_tokens`, `text_to_i`),
    the tokenizer, and the memory-mapped token ids of each split.
    """

    def __init__(self, path: Path, tokenizer, train_tokens: np.ndarray, valid_tokens: np.ndarray):
        self.path = path
        self.tokenizer = tokenizer
        self.n_tokens = tokenizer.n_tokens
        self.train_tokens = train_tokens
        self.valid_tokens = valid_tokens

    def text_to_i(self, text: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer.encode(text), dtype=torch.long)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def __repr__(self):
        return f'{len(self.train_tokens):,} training and {len(self.valid_tokens):,} validation tokens - {self.path}'


def total_bytes(path) -> int:
    return sum(f.stat().st_size for f in corpus_files(Path(path)))


def load_token_corpus(path, tokenizer_spec, *, seq_len: int, valid_path=None, vocabulary=None) -> TokenCorpus:
    """
    Tokenise a corpus (or reuse the cached tokenizer and token files) and memory-map it.
    `tokenizer_spec` is a `BPE`, or anything else for characters; `vocabulary`, a resumed
    run's tokenizer, is used as it is, never retrained.
    """
    path = Path(path)
    files = corpus_files(path)
    size = sum(f.stat().st_size for f in files)
    if size == 0:
        raise UserError(f'corpus is empty: {path}')
    if valid_path is None:
        cut = _char_boundary(files, int(size * 0.9))
        train, valid = (files, 0, cut), (files, cut, size)
        valid_files = []
    else:
        valid_files = corpus_files(Path(valid_path))
        valid_size = sum(f.stat().st_size for f in valid_files)
        if valid_size == 0:
            raise UserError(f'corpus is empty: {valid_path}')
        train, valid = (files, 0, size), (valid_files, 0, valid_size)
    cache = cache_dir(path)
    corpus = files_key(files + valid_files) + f'-{train[2]}'

    is_bpe = isinstance(tokenizer_spec, BPE)
    spec = f'bpe{tokenizer_spec.vocab_size}-{tokenizer_spec.train_bytes}' if is_bpe else 'character'
    tokenizer_file = cache / f'tokenizer-{_key(corpus, spec)}.json'
    if vocabulary is not None:
        tokenizer = vocabulary
        if isinstance(tokenizer, tokenizers.CharacterTokenizer):
            check_vocabulary(tokenizer, path, (chunk for span in (train, valid) for chunk in stream_text(span)))
    elif tokenizer_file.exists():
        tokenizer = tokenizers.from_json(tokenizer_file.read_text(encoding='utf-8'))
    else:
        if is_bpe:
            with monit.section(f'Train BPE tokenizer ({tokenizer_spec.vocab_size:,} tokens)'):
                span = (train[0], 0, min(train[2], tokenizer_spec.train_bytes))
                tokenizer = tokenizers.BPETokenizer.train(stream_text(span), tokenizer_spec.vocab_size)
        else:
            # labml builds the character vocabulary over both splits.
            with monit.section('Build character vocabulary'):
                tokenizer = tokenizers.CharacterTokenizer.from_chunks(
                    chunk for span in (train, valid) for chunk in stream_text(span))
        _write_atomic(tokenizer_file, tokenizer.to_json())

    tokens_key = _key(corpus, tokenizer.to_json())
    suffix = 'u16' if tokenizer.n_tokens <= 2 ** 16 else 'u32'
    splits = {}
    for name, span in (('training', train), ('validation', valid)):
        splits[name] = tokenise_to_file(span, tokenizer, cache / f'{name}-{tokens_key}.{suffix}', name)
    for name in splits:
        n = len(splits[name])
        if n < seq_len + 1:
            raise UserError(f'the {name} split of {path} has {n} tokens; '
                            f'seq_len={seq_len} needs at least {seq_len + 1}')
    return TokenCorpus(path, tokenizer, splits['training'], splits['validation'])


def load(path, tokenizer, *, seq_len: int, valid_path=None, vocabulary=None):
    """
    The corpus at `path` as `Configs.text`: labml's `TextDataset` for a character corpus that
    fits in memory (the labml recipe), a memory-mapped `TokenCorpus` otherwise. `vocabulary`
    is the tokenizer of a run being resumed: the corpus is encoded with it as it is.
    """
    from .data import load_corpus
    if not isinstance(tokenizer, BPE):
        sizes = total_bytes(path) + (total_bytes(valid_path) if valid_path else 0)
        if sizes <= IN_MEMORY_BYTES:
            return load_corpus(path, tokenizer, seq_len=seq_len, valid_path=valid_path, vocabulary=vocabulary)
    return load_token_corpus(path, tokenizer, seq_len=seq_len, valid_path=valid_path, vocabulary=vocabulary)


def split_tokens(text, split: str):
    """The token ids of a split: a memory-mapped array, or a tensor for labml's `TextDataset`."""
    if isinstance(text, TokenCorpus):
        return text.train_tokens if split == 'train' else text.valid_tokens
    return text.text_to_i(text.train if split == 'train' else text.valid)


def tokenizer_of(text):
    """The [tokenizer](tokenizers.html) of a loaded corpus, to save with a run."""
    if isinstance(text, TokenCorpus):
        return text.tokenizer
    return tokenizers.CharacterTokenizer(text.itos)
