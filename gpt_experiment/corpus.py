"""
# Corpus

A corpus is UTF-8 text: one file, a folder of `.txt` files read in sorted order, or the Tiny
Shakespeare that ships with the package. Whatever its size and tokenizer, it becomes one thing,
a `Corpus`: the tokenizer and the token ids of a training and a validation split, as NumPy
arrays. `load` is the one function that reads, checks and splits; batches are cut from the
arrays by [batches](batches.html).

* **The split.** The first 90% of the corpus's *bytes* trains and the rest validates, the cut
  moved forward to the next character boundary; `valid_text=<path>` gives a separate
  validation text instead. The rule does not depend on the size. (For ASCII text such as Tiny
  Shakespeare bytes are characters, so this is labml's 90/10 split by characters.)
* **The vocabulary.** Characters: the sorted characters of both splits, as labml builds it.
  BPE: trained on the first `bpe_train_bytes` of the training split. A run that continues
  another (resumed, or `init_from`) keeps that run's tokenizer as it is, and a character the
  tokenizer lacks is a `UserError`.
* **Small and large.** Up to `IN_MEMORY_BYTES`, a corpus is tokenised in memory at every run
  (milliseconds for characters, seconds for BPE) and nothing is written. A larger one is
  tokenised once, in chunks with a progress bar, into a cache, and memory-mapped: only the
  pages a batch touches are read.
* **The cache** is `<file or folder>.cache/` beside the corpus (labml's `data/cache/` when that
  is read-only). It is keyed by the *content*: a hash of the corpus's bytes, streamed, with the
  split and the tokenizer, so any edit is a new key, whatever the file's size and time. It
  holds the tokenizer (`tokenizer-<key>.json`), the token ids (`<split>-<key>.u16`, or `.u32`
  past 65,536 tokens) and a record of their lengths (`tokens-<key>.json`), written last. On
  load the cache is checked against its record (lengths, and every id below the vocabulary
  size); a cache that fails is said so in one line and built again. Files are written under a
  temporary name that names the writer and renamed when complete; what a killed writer left is
  removed the next time a run uses the folder.
* **Checks.** A path that is missing or not a regular file (a FIFO, `/dev/zero`), a folder
  without `.txt` files, an empty corpus, bytes that are not UTF-8 (the file and offset named),
  and a split shorter than `seq_len + 1` tokens are each a `UserError`.
* Text is encoded in chunks that end at a newline; a BPE word never spans a line, so this is
  the encoding of the whole text, except that a run of blank lines may be cut differently.
"""

import codecs
import gzip
import hashlib
import io
import json
import os
import stat
from importlib import resources
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, List, NamedTuple, Optional

import numpy as np
import torch

from labml import lab, logger, monit
from labml.logger import Text

from . import checkpoints, tokenizers
from .errors import UserError

# Corpora up to this size are tokenised in memory; larger ones are cached and memory-mapped.
IN_MEMORY_BYTES = 64 * 1024 * 1024
# Bytes read at a time.
CHUNK_BYTES = 4 * 1024 * 1024
# The share of the bytes that trains.
TRAIN_FRACTION = 0.9


class BPE:
    """What `tokenizer=bpe` selects: a BPE of `vocab_size` tokens, trained when the corpus loads."""

    def __init__(self, vocab_size: int, train_bytes: int):
        self.vocab_size = vocab_size
        self.train_bytes = train_bytes


class Corpus:
    """The tokenizer and the token ids of the two splits (in memory, or memory-mapped)."""

    def __init__(self, name: str, tokenizer, train: np.ndarray, valid: np.ndarray):
        self.name = name
        self.tokenizer = tokenizer
        self.n_tokens = tokenizer.n_tokens
        self.train = train
        self.valid = valid

    def text_to_i(self, text: str) -> torch.Tensor:
        """Token ids of `text`, as labml_nn's `TextDataset.text_to_i`."""
        return torch.tensor(self.tokenizer.encode(text), dtype=torch.long)

    def __repr__(self):
        return f'{len(self.train):,} training and {len(self.valid):,} validation tokens - {self.name}'


# ## Where the bytes come from

class Part(NamedTuple):
    """One file of a corpus: its name in messages, its size, and how to open it for reading."""
    name: str
    size: int
    open: Callable[[], BinaryIO]


class Source(NamedTuple):
    """What a corpus path stands for: its files in order, and the folder of its cache, if any."""
    name: str
    parts: List[Part]
    cache: Optional[Path]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)


def regular_file(path) -> Path:
    """
    `path`, when it is a regular file. `stat` does not open the file: a FIFO or a device
    (`/dev/zero`, `/dev/urandom`) is refused before anything waits on it or reads it forever.
    """
    path = Path(path)
    if not stat.S_ISREG(path.stat().st_mode):
        raise UserError(f'{path} is not a regular file')
    return path


def _part(path: Path) -> Part:
    path = regular_file(path)
    return Part(str(path), path.stat().st_size, lambda: open(path, 'rb'))


def source(path) -> Source:
    """The files a corpus path stands for: the file itself, or the sorted `.txt` files of a folder."""
    path = Path(path)
    if not path.exists():
        raise UserError(f'corpus not found: {path}')
    if path.is_dir():
        files = sorted(p for p in path.glob('*.txt') if p.is_file())
        if not files:
            raise UserError(f'no .txt files in folder {path}')
        return Source(str(path), [_part(f) for f in files], path)
    return Source(str(path), [_part(path)], path)


# Tiny Shakespeare (Karpathy's char-rnn `input.txt`), gzip-compressed in the package
TINY_SHAKESPEARE = 'data/tiny_shakespeare.txt.gz'


def tiny_shakespeare() -> Source:
    """The Tiny Shakespeare that ships with the package, decompressed in memory (1.1 MB)."""
    raw = gzip.decompress(resources.files(__package__).joinpath(TINY_SHAKESPEARE).read_bytes())
    return Source('Tiny Shakespeare', [Part('tiny_shakespeare.txt', len(raw), lambda: io.BytesIO(raw))], None)


# ## Reading text

class Span(NamedTuple):
    """The bytes `[start, end)` of the concatenation of a source's parts."""
    source: Source
    start: int
    end: int


def stream_text(span: Span, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """
    The text of a byte range, in chunks that end at a newline where there is one. Bytes that
    are not UTF-8 are a `UserError` that names the file and the byte offset in it.
    """
    carry = ''
    offset = 0
    for part in span.source.parts:
        # The part's own `[lo, hi)` within the span
        lo, hi = max(span.start - offset, 0), min(span.end - offset, part.size)
        offset += part.size
        if lo >= hi:
            continue
        decoder = codecs.getincrementaldecoder('utf-8')('strict')
        with part.open() as f:
            f.seek(lo)
            position = lo
            while position < hi:
                raw = f.read(min(chunk_bytes, hi - position))
                if not raw:
                    raise UserError(f'{part.name} changed while it was read')
                try:
                    text = decoder.decode(raw, final=position + len(raw) >= hi)
                except UnicodeDecodeError as e:
                    # `e.start` counts from the bytes the decoder held back from the last chunk.
                    held = len(e.object) - len(raw)
                    at = position - held + e.start
                    raise UserError(f'{part.name} is not UTF-8 text: byte 0x{e.object[e.start]:02x} '
                                    f'at offset {at}') from None
                position += len(raw)
                # Cut after the last newline; the rest waits for the next chunk.
                text = carry + text
                cut = text.rfind('\n') + 1 or len(text)
                carry = text[cut:]
                if cut:
                    yield text[:cut]
    if carry:
        yield carry


def _char_boundary(src: Source, at: int) -> int:
    """The first byte offset `>= at` that starts a UTF-8 character."""
    offset = 0
    for part in src.parts:
        if at < offset + part.size:
            with part.open() as f:
                f.seek(at - offset)
                tail = f.read(4)
            # Continuation bytes are `10xxxxxx`.
            for b in tail:
                if b & 0xC0 != 0x80:
                    break
                at += 1
            return at
        offset += part.size
    return at


def content_hash(*sources: Source) -> str:
    """A hash of the bytes of `sources`, read in chunks, with their parts' sizes."""
    h = hashlib.blake2b(digest_size=16)
    for src in sources:
        for part in src.parts:
            h.update(f'{part.size}\0'.encode())
            with part.open() as f:
                while chunk := f.read(CHUNK_BYTES):
                    h.update(chunk)
    return h.hexdigest()


# ## Tokenising

def _build_tokenizer(spec, train: Span, valid: Span):
    if isinstance(spec, BPE):
        with monit.section(f'Train BPE tokenizer ({spec.vocab_size:,} tokens)'):
            span = Span(train.source, 0, min(train.end, spec.train_bytes))
            return tokenizers.BPETokenizer.train(stream_text(span), spec.vocab_size)
    # labml builds the character vocabulary over both splits.
    return tokenizers.CharacterTokenizer.from_chunks(chunk for span in (train, valid) for chunk in stream_text(span))


def token_dtype(tokenizer) -> np.dtype:
    """The smallest unsigned type that holds every id."""
    return np.dtype(np.uint16 if tokenizer.n_tokens <= 2 ** 16 else np.uint32)


def tokenise(span: Span, tokenizer, out: BinaryIO, name: str) -> int:
    """Encode a byte range into `out` as token ids of `token_dtype`; returns how many."""
    dtype = token_dtype(tokenizer)
    is_bpe = isinstance(tokenizer, tokenizers.BPETokenizer)
    total, done, count = max(span.end - span.start, 1), 0, 0

    def write(batch):
        # BPE encodes a batch of chunks at once, on every core; characters chunk by chunk.
        ids = tokenizer.encode_batch(batch) if is_bpe else tokenizer.encode_array(batch[0])
        out.write(ids.astype(dtype).tobytes())
        return len(ids)

    with monit.section(f'Tokenise {name} ({total / 1e6:,.1f} MB)', total_steps=total):
        batch = []
        for chunk in stream_text(span, chunk_bytes=CHUNK_BYTES // 4):
            batch.append(chunk)
            done += len(chunk.encode('utf-8'))
            if len(batch) == (4 if is_bpe else 1):
                count += write(batch)
                batch = []
                monit.progress(done)
        if batch:
            count += write(batch)
    return count


# ## The cache, for large corpora

def cache_dir(src: Source) -> Path:
    """`<file or folder>.cache/` beside the corpus, or labml's data folder when that is read-only."""
    path = Path(src.cache).resolve()
    folder = path.parent / f'{path.name}.cache'
    try:
        folder.mkdir(exist_ok=True)
        if os.access(folder, os.W_OK):
            checkpoints.remove_leftovers(folder)
            return folder
    except OSError:
        pass
    folder = Path(lab.get_data_path()) / 'cache' / hashlib.sha1(str(path).encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    # What killed writers left here goes before anything new is written.
    checkpoints.remove_leftovers(folder)
    return folder


def _tmp(path: Path) -> Path:
    # Written under a temporary name and renamed when complete: never a half-written cache file.
    return checkpoints.temporary(path)


def _read_cache(folder: Path, key: str, tokenizer, splits) -> Optional[dict]:
    """The cached token arrays of `splits`, when the record is there and they match it."""
    record_file = folder / f'tokens-{key}.json'
    if not record_file.exists():
        return None
    dtype = token_dtype(tokenizer)
    try:
        record = json.loads(record_file.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        record = {}
    arrays = {}
    for name in splits:
        path = folder / f'{name}-{key}.u{dtype.itemsize * 8}'
        n = record.get(name) if isinstance(record, dict) else None
        # The file is exactly as long as the record says, and every id is in the vocabulary.
        if not isinstance(n, int) or not path.is_file() or path.stat().st_size != n * dtype.itemsize:
            logger.log(f'Token cache {path} does not match its record; tokenising again.', Text.warning)
            return None
        tokens = np.memmap(path, dtype=dtype, mode='r') if n else np.zeros(0, dtype)
        if n and int(tokens.max()) >= tokenizer.n_tokens:
            logger.log(f'Token cache {path} has ids outside the vocabulary; tokenising again.', Text.warning)
            return None
        arrays[name] = tokens
    return arrays


def _cached_tokens(src: Source, valid_src: Optional[Source], spec, spans, vocabulary) -> tuple:
    """The tokenizer and the memory-mapped token ids of each split, from the cache or made into it."""
    folder = cache_dir(src)
    with monit.section('Hash corpus'):
        corpus_key = content_hash(src, *([valid_src] if valid_src else [])) + f'-{spans["training"].end}'
    spec_name = f'bpe{spec.vocab_size}-{spec.train_bytes}' if isinstance(spec, BPE) else 'character'
    tokenizer_file = folder / f'tokenizer-{_key(corpus_key, spec_name)}.json'
    if vocabulary is not None:
        tokenizer = vocabulary
    elif tokenizer_file.exists():
        tokenizer = tokenizers.from_json(tokenizer_file.read_text(encoding='utf-8'))
    else:
        tokenizer = _build_tokenizer(spec, spans['training'], spans['validation'])
        _tmp(tokenizer_file).write_text(tokenizer.to_json(), encoding='utf-8')
        _tmp(tokenizer_file).replace(tokenizer_file)

    key = _key(corpus_key, tokenizer.to_json())
    arrays = _read_cache(folder, key, tokenizer, spans)
    if arrays is None:
        record = {}
        for name, span in spans.items():
            path = folder / f'{name}-{key}.u{token_dtype(tokenizer).itemsize * 8}'
            with open(_tmp(path), 'wb') as out:
                record[name] = tokenise(span, tokenizer, out, name)
            _tmp(path).replace(path)
        record_file = folder / f'tokens-{key}.json'
        _tmp(record_file).write_text(json.dumps(record), encoding='utf-8')
        _tmp(record_file).replace(record_file)
        arrays = _read_cache(folder, key, tokenizer, spans)
    return tokenizer, arrays


def _key(*parts) -> str:
    return hashlib.sha1('\0'.join(map(str, parts)).encode('utf-8')).hexdigest()[:16]


# ## The one loader

def check_vocabulary(vocabulary, name: str, texts: Iterator[str]):
    """Refuse a corpus with characters that a run's fixed vocabulary lacks (they would be dropped)."""
    missing = sorted({c for text in texts for c in vocabulary.unknown(text)})
    if missing:
        shown = ' '.join(map(repr, missing[:10])) + (f' and {len(missing) - 10} more' if len(missing) > 10 else '')
        raise UserError(f'{name} has characters that are not in the vocabulary of the run it continues from: {shown}; '
                        f'a run keeps its tokenizer')


def load(src: Source, tokenizer_spec, *, seq_len: int, valid_src: Optional[Source] = None,
         vocabulary=None) -> Corpus:
    """
    Read, check, split and tokenise a corpus. `tokenizer_spec` is a `BPE`, or anything else
    for characters (labml_nn's `character` option); `vocabulary`, the tokenizer of a run this
    one continues, is used as it is, never rebuilt.
    """
    if src.size == 0:
        raise UserError(f'corpus is empty: {src.name}')
    if valid_src is None:
        # The first 90% of the bytes, to the next character boundary
        cut = _char_boundary(src, int(src.size * TRAIN_FRACTION))
        spans = {'training': Span(src, 0, cut), 'validation': Span(src, cut, src.size)}
    else:
        if valid_src.size == 0:
            raise UserError(f'corpus is empty: {valid_src.name}')
        spans = {'training': Span(src, 0, src.size), 'validation': Span(valid_src, 0, valid_src.size)}

    if isinstance(vocabulary, tokenizers.CharacterTokenizer):
        check_vocabulary(vocabulary, src.name, (chunk for span in spans.values() for chunk in stream_text(span)))

    if src.size + (valid_src.size if valid_src else 0) <= IN_MEMORY_BYTES:
        # Small: tokenised in memory, nothing written
        tokenizer = vocabulary or _build_tokenizer(tokenizer_spec, spans['training'], spans['validation'])
        arrays = {}
        for name, span in spans.items():
            out = io.BytesIO()
            tokenise(span, tokenizer, out, name)
            arrays[name] = np.frombuffer(out.getvalue(), dtype=token_dtype(tokenizer))
    else:
        tokenizer, arrays = _cached_tokens(src, valid_src, tokenizer_spec, spans, vocabulary)

    for name, tokens in arrays.items():
        if len(tokens) < seq_len + 1:
            raise UserError(f'the {name} split of {src.name} has {len(tokens)} tokens; '
                            f'seq_len={seq_len} needs at least {seq_len + 1}')
    return Corpus(src.name, tokenizer, arrays['training'], arrays['validation'])
