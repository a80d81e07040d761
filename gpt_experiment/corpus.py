"""
# Corpus

A corpus is UTF-8 text: one file, a folder of `.txt` files read in sorted order, or the Tiny
Shakespeare that ships with the package. Whatever its size and tokenizer, it becomes one thing,
a `Corpus`: the tokenizer and the token ids of a training and a validation split, as NumPy
arrays. `load` is the one function that reads, checks and splits; [batches](#batches) are cut
from the arrays by index.

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
  split and the tokenizer's settings, so any edit is a new key, whatever the file's size and
  time. It holds the tokenizer (`tokenizer-<key>.json`), the token ids (`<split>-<key>.u16`, or
  `.u32` past 65,536 tokens) and a record (`tokens-<key>.json`, written last) of their lengths
  and of the tokenizer's own digest. Nothing read back is trusted: the tokenizer must have the
  digest the record gives, the token files the lengths, and every id must be below the
  vocabulary size. A cache that fails is said so in one line and built again, tokenizer
  included. Files are written under a temporary name that names the writer and renamed when
  complete ([files](files.html)); what a killed writer left is removed the next time a run
  uses the folder.
* **Checks.** A path that is missing or not a regular file (a FIFO, `/dev/zero`), a folder
  without `.txt` files, an empty corpus, bytes that are not UTF-8 (the file and offset named),
  and a split shorter than `seq_len + 1` tokens are each a `UserError`.
* **The digest** of the corpus (`Corpus.digest`, a hash of its bytes and split) goes into every
  checkpoint, so that a resumed run can tell when the text under it has changed.
* Text is encoded in chunks that end at a newline; a BPE word never spans a line, so this is
  the encoding of the whole text, except that a run of blank lines may be cut differently.
"""

import codecs
import gzip
import hashlib
import io
import json
import os
from importlib import resources
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, List, NamedTuple, Optional

import numpy as np
import torch

from labml import lab, logger, monit
from labml.logger import Text

from . import distributed, files, tokenizers
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

    def __init__(self, name: str, tokenizer, train: np.ndarray, valid: np.ndarray, digest: str = ''):
        self.name = name
        self.tokenizer = tokenizer
        self.n_tokens = tokenizer.n_tokens
        self.train = train
        self.valid = valid
        # A hash of the text's bytes and its split
        self.digest = digest

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


def _part(path: Path) -> Part:
    # A FIFO or a device (`/dev/zero`) is refused before anything waits on it or reads it forever.
    path = files.regular_file(path)
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
            files.remove_leftovers(folder)
            return folder
    except OSError:
        pass
    folder = Path(lab.get_data_path()) / 'cache' / _key(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise files.cannot_write(folder, e) from None
    # What killed writers left here goes before anything new is written.
    files.remove_leftovers(folder)
    return folder


def _read_cache(folder: Path, key: str, splits, vocabulary) -> Optional[tuple]:
    """
    The tokenizer and the token arrays of `splits`, when the record is there and everything
    matches it; `None` (with a warning) when anything does not.
    """
    record_file = folder / f'tokens-{key}.json'
    if not record_file.exists():
        return None

    def stale(what: str):
        logger.log(f'Token cache in {folder}: {what}; tokenising again.', Text.warning)

    try:
        record = json.loads(files.read_text(record_file))
        tokenizer = vocabulary
        if tokenizer is None:
            tokenizer = tokenizers.from_json(files.read_text(folder / f'tokenizer-{key}.json'))
    except Exception as e:  # a damaged record or tokenizer file, whatever its parser makes of it
        return stale(f'{e.__class__.__name__}: {e}')
    # The tokenizer is the one the ids were made with, byte for byte.
    if not isinstance(record, dict) or record.get('tokenizer') != tokenizers.digest(tokenizer):
        return stale('the tokenizer is not the one its token ids were made with')
    dtype = token_dtype(tokenizer)
    arrays = {}
    for name in splits:
        path = folder / f'{name}-{key}.u{dtype.itemsize * 8}'
        n = record.get(name)
        # The file is exactly as long as the record says, and every id is in the vocabulary.
        if not isinstance(n, int) or not path.is_file() or path.stat().st_size != n * dtype.itemsize:
            return stale(f'{path.name} does not match its record')
        tokens = np.memmap(path, dtype=dtype, mode='r') if n else np.zeros(0, dtype)
        if n and int(tokens.max()) >= tokenizer.n_tokens:
            return stale(f'{path.name} has ids outside the vocabulary')
        arrays[name] = tokens
    return tokenizer, arrays


def _cached_tokens(src: Source, corpus_key: str, spec, spans, vocabulary) -> tuple:
    """The tokenizer and the memory-mapped token ids of each split, from the cache or made into it."""
    folder = cache_dir(src)
    # A run that continues another brings its tokenizer: its digest is part of the key.
    made_by = f'bpe{spec.vocab_size}-{spec.train_bytes}' if isinstance(spec, BPE) else 'character'
    key = _key(corpus_key, tokenizers.digest(vocabulary) if vocabulary is not None else made_by)
    cached = _read_cache(folder, key, spans, vocabulary)
    if cached is not None:
        return cached
    tokenizer = vocabulary or _build_tokenizer(spec, spans['training'], spans['validation'])
    if vocabulary is None:
        files.write_atomically(folder / f'tokenizer-{key}.json', lambda f: f.write(tokenizer.to_json().encode('utf-8')))
    record = {'tokenizer': tokenizers.digest(tokenizer)}
    for name, span in spans.items():
        path = folder / f'{name}-{key}.u{token_dtype(tokenizer).itemsize * 8}'

        def write(out, name=name, span=span):
            record[name] = tokenise(span, tokenizer, out, name)
        files.write_atomically(path, write)
    # The record last: without it, nothing above is read back.
    files.write_atomically(folder / f'tokens-{key}.json', lambda f: f.write(json.dumps(record).encode('utf-8')))
    return _read_cache(folder, key, spans, vocabulary)


def _key(*parts) -> str:
    return hashlib.sha1('\0'.join(map(str, parts)).encode('utf-8')).hexdigest()[:16]


# ## The one loader

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

    if vocabulary is not None:
        tokenizers.check_encodable(vocabulary, (chunk for span in spans.values() for chunk in stream_text(span)),
                                   src.name, ' of the run it continues from', '; a run keeps its tokenizer')

    with monit.section('Hash corpus'):
        digest = content_hash(src, *([valid_src] if valid_src else [])) + f'-{spans["training"].end}'
    if src.size + (valid_src.size if valid_src else 0) <= IN_MEMORY_BYTES:
        # Small: tokenised in memory, nothing written
        tokenizer = vocabulary or _build_tokenizer(tokenizer_spec, spans['training'], spans['validation'])
        arrays = {}
        for name, span in spans.items():
            out = io.BytesIO()
            tokenise(span, tokenizer, out, name)
            arrays[name] = np.frombuffer(out.getvalue(), dtype=token_dtype(tokenizer))
    else:
        tokenizer, arrays = _cached_tokens(src, digest, tokenizer_spec, spans, vocabulary)

    for name, tokens in arrays.items():
        if len(tokens) < seq_len + 1:
            raise UserError(f'the {name} split of {src.name} has {len(tokens)} tokens; '
                            f'seq_len={seq_len} needs at least {seq_len + 1}')
    return Corpus(src.name, tokenizer, arrays['training'], arrays['validation'], digest)


# <a id="batches"></a>
# ## Batches
#
# Batches are cut from the token ids of a split by index: each epoch draws a random offset for
# every `seq_len` window, shuffles the windows, and gathers a whole batch with one indexing
# operation. That is the sampling of labml_nn's `shuffled_train_loader`, without collating
# samples one by one in Python.

def epoch_generator(seed: int, stream: str, epoch: int) -> torch.Generator:
    """
    The generator of epoch `epoch` of a data order: seeded from the run's `seed`, the order's
    name and the epoch, as PyTorch's `DistributedSampler.set_epoch` seeds each epoch. So an
    epoch's order is a function of where training stands, and a resumed run draws it again
    without having saved any generator.
    """
    h = hashlib.blake2b(f'{seed}/{stream}/{epoch}'.encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(h, 'little') >> 1)


class ShuffledWindows:
    r"""
    The epochs of `[seq_len, batch_size]` input and target batches of the token ids of a split.

    Window $i$ starts at $i \cdot \text{seq\_len} + r_i$ with a random offset
    $0 \le r_i < \text{seq\_len}$ (kept inside the text), so that every epoch sees different
    cuts of the same text; targets are the inputs shifted by one token. The offsets and the
    order of epoch $e$ come from `epoch_generator(seed, stream, e)`.

    With several processes every rank draws the same windows and keeps slice `rank` of
    `world_size` equal slices of each batch; windows that do not split evenly at the end of an
    epoch are dropped.
    """

    def __init__(self, tokens, *, batch_size: int, seq_len: int, device: torch.device = None, seed: int = 0,
                 stream: str = 'train', rank: int = 0, world_size: int = 1):
        # A memory-mapped array stays on disk: each batch gathers its windows from it and only
        # the batch goes to `device`. Ids in memory go to the device once, as one tensor.
        self.on_disk = isinstance(tokens, np.memmap)
        if self.on_disk:
            self.tokens = tokens
            self.device = device if device is not None else torch.device('cpu')
        else:
            if isinstance(tokens, np.ndarray):
                tokens = torch.from_numpy(tokens.astype(np.int64))
            self.tokens = tokens.to(device) if device is not None else tokens
            self.device = self.tokens.device
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed, self.stream = seed, stream
        self.rank = rank
        self.world_size = world_size
        self.n_windows = (len(tokens) - 1) // seq_len
        # `[0, 1, ..., seq_len]`, added to each start to gather a window and its next token.
        self.span = torch.arange(seq_len + 1, device='cpu' if self.on_disk else self.device)
        # The window starts of the last epoch asked for, which its stretches share
        self._cached = (None, None)

    def __len__(self):
        """Batches of an epoch; a last one that does not split over the processes is dropped."""
        last = self.n_windows % self.batch_size
        return self.n_windows // self.batch_size + (last - last % self.world_size > 0)

    @property
    def windows_per_epoch(self) -> int:
        """The windows an epoch trains on, over all the processes."""
        last = self.n_windows % self.batch_size
        return self.n_windows - last % self.world_size

    def starts(self, epoch: int) -> torch.Tensor:
        """Where each window of epoch `epoch` starts in the text, in the epoch's order."""
        generator = epoch_generator(self.seed, self.stream, epoch)
        starts = torch.arange(self.n_windows) * self.seq_len
        # The largest offset that keeps `start + seq_len` a valid target index.
        room = (len(self.tokens) - 1 - self.seq_len - starts).clamp(max=self.seq_len - 1)
        starts += (torch.rand(self.n_windows, generator=generator) * (room + 1)).long()
        return starts[torch.randperm(self.n_windows, generator=generator)][:self.windows_per_epoch]

    def epoch(self, epoch: int, start: int = 0, stop: Optional[int] = None) -> Iterator[tuple]:
        """
        The batches of epoch `epoch`, from its window `start` (a resumed run's place) to window
        `stop`, each as `(inputs, targets, windows)`: `windows` is how far the batch moves the
        position in the epoch. Batches are cut at multiples of `batch_size` windows from the
        epoch's start, so one that resumes between two cuts is short.
        """
        if self._cached[0] != epoch:
            self._cached = (epoch, self.starts(epoch))
        starts = self._cached[1]
        stop = len(starts) if stop is None else min(stop, len(starts))
        while start < stop:
            end = min(stop, (start // self.batch_size + 1) * self.batch_size)
            # Every process takes an equal slice; windows left over are passed over.
            used = starts[start:end - (end - start) % self.world_size]
            if len(used):
                yield (*self.batch(used), end - start)
            start = end

    def batch(self, batch_starts: torch.Tensor) -> tuple:
        """The inputs and targets of the windows at `batch_starts`, this process's slice of them."""
        if self.world_size > 1:
            batch_starts = batch_starts.chunk(self.world_size)[self.rank]
        # `[batch_size, seq_len + 1]` -> sequence first `[seq_len + 1, batch_size]`
        index = batch_starts.to(self.span.device)[:, None] + self.span
        if self.on_disk:
            windows = torch.from_numpy(self.tokens[index.numpy()].astype(np.int64)).to(self.device)
        else:
            windows = self.tokens[index]
        windows = windows.t().contiguous()
        return windows[:-1], windows[1:]


def shuffled_windows(tokens, *, batch_size: int, seq_len: int, device: torch.device, seed: int,
                     stream: str) -> ShuffledWindows:
    """The batches of a split for this process, in orders seeded by `seed` and the split's `stream`."""
    w = distributed.world()
    return ShuffledWindows(tokens, batch_size=batch_size, seq_len=seq_len, device=device, seed=seed, stream=stream,
                           rank=w.rank, world_size=w.size)
