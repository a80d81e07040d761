"""
# Data

A corpus is a UTF-8 text file, or a folder of `.txt` files read in sorted order. The first 90%
of it trains and the last 10% validates, as labml does for Tiny Shakespeare.

Everything a user can get wrong here (a missing path, an empty folder, bytes that are not
UTF-8, a corpus too short for one training window) is a `UserError` with the file named.

Batches are cut from one long tensor of token ids by index: each epoch draws a random offset
for every `seq_len` window, shuffles the windows, and gathers a whole batch with one indexing
operation. That is the sampling of labml_nn's `shuffled_train_loader`, without collating
samples one by one in Python.
"""

import itertools
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from labml import monit
from labml_helpers.datasets.text import TextDataset

from .errors import UserError
from .tokenizers import CharacterTokenizer

TINY_SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'


def corpus_files(path: Path):
    """The files a corpus path stands for: the file itself, or the sorted `.txt` files of a folder."""
    if not path.exists():
        raise UserError(f'corpus not found: {path}')
    if path.is_dir():
        files = sorted(p for p in path.glob('*.txt') if p.is_file())
        if not files:
            raise UserError(f'no .txt files in folder {path}')
        return files
    return [path]


def read_text(path: Path) -> str:
    """Read a corpus as text, refusing anything that is not UTF-8 and naming the bad byte."""
    parts = []
    for file in corpus_files(Path(path)):
        raw = file.read_bytes()
        try:
            parts.append(raw.decode('utf-8'))
        except UnicodeDecodeError as e:
            raise UserError(f'{file} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}') from None
    text = ''.join(parts)
    if not text:
        raise UserError(f'corpus is empty: {path}')
    return text


def fetch_tiny_shakespeare(path: Path) -> Path:
    """Tiny Shakespeare at labml's data path, downloaded on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix('.part')
        try:
            with monit.section(f'Download {TINY_SHAKESPEARE_URL}'):
                urllib.request.urlretrieve(TINY_SHAKESPEARE_URL, tmp)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise UserError(f'could not download Tiny Shakespeare ({e.__class__.__name__}: {e}); '
                            f'put the file at {path}') from None
        tmp.rename(path)
    return path


def load_corpus(path: Path, tokenizer: Callable, *, seq_len: int, valid_path: Optional[Path] = None,
                vocabulary: Optional[CharacterTokenizer] = None) -> TextDataset:
    """
    Split a corpus 90/10 (or take the validation text from `valid_path`) into labml's
    `TextDataset`, which builds the vocabulary over both splits, or takes `vocabulary` (a
    saved tokenizer of a run being resumed or fine-tuned), which must hold every character of the corpus.
    """
    with monit.section('Load data'):
        text = read_text(path)
        if valid_path is None:
            split = int(len(text) * 0.9)
            train, valid = text[:split], text[split:]
        else:
            train, valid = text, read_text(valid_path)
    if vocabulary is None:
        dataset = TextDataset(path, tokenizer, train, valid, '')
    else:
        check_vocabulary(vocabulary, path, (train, valid))
        dataset = TextDataset(path, tokenizer, train, valid, '', n_tokens=vocabulary.n_tokens,
                              stoi=dict(vocabulary.stoi), itos=list(vocabulary.itos))
    for name, split_text in (('training', dataset.train), ('validation', dataset.valid)):
        n = len(tokenizer(split_text))
        if n < seq_len + 1:
            raise UserError(f'the {name} split of {path} has {n} tokens; '
                            f'seq_len={seq_len} needs at least {seq_len + 1}')
    return dataset


def check_vocabulary(vocabulary: CharacterTokenizer, path: Path, texts: Iterable[str]):
    """Refuse a corpus with characters that a run's fixed vocabulary lacks (they would be dropped)."""
    missing = sorted({c for text in texts for c in vocabulary.unknown(text)})
    if missing:
        shown = ' '.join(map(repr, missing[:10])) + (f' and {len(missing) - 10} more' if len(missing) > 10 else '')
        raise UserError(f'{path} has characters that are not in the vocabulary of the run it continues from: {shown}; '
                        f'a run keeps its tokenizer')


class ShuffledWindows:
    r"""
    An epoch of `[seq_len, batch_size]` input and target batches from a 1-D token tensor or
    a memory-mapped array of token ids.

    Window $i$ starts at $i \cdot \text{seq\_len} + r_i$ with a random offset
    $0 \le r_i < \text{seq\_len}$ (kept inside the text), so that every epoch sees different
    cuts of the same text; targets are the inputs shifted by one token.

    The offsets and the order come from `generator` (seeded by `seed`, so that the data order
    repeats, and saved in checkpoints, so that a resumed run continues it). With several
    processes every rank draws the same windows and keeps slice `rank` of `world_size` equal
    slices of each batch; windows that do not split evenly at the end of an epoch are dropped.
    """

    def __init__(self, tokens, *, batch_size: int, seq_len: int, device: torch.device = None,
                 generator: Optional[torch.Generator] = None, rank: int = 0, world_size: int = 1):
        # A tensor, or a (memory-mapped) numpy array of token ids that stays where it is: each
        # batch gathers its windows from it and only the batch goes to `device`.
        self.tokens = tokens
        self.is_array = isinstance(tokens, np.ndarray)
        self.device = device if device is not None else (torch.device('cpu') if self.is_array else tokens.device)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.generator = generator
        self.rank = rank
        self.world_size = world_size
        self.n_windows = (len(tokens) - 1) // seq_len
        # `[0, 1, ..., seq_len]`, added to each start to gather a window and its next token.
        self.span = torch.arange(seq_len + 1, device='cpu' if self.is_array else tokens.device)

    def __len__(self):
        last = self.n_windows % self.batch_size
        return self.n_windows // self.batch_size + (last - last % self.world_size > 0)

    def __iter__(self):
        starts = torch.arange(self.n_windows) * self.seq_len
        # The largest offset that keeps `start + seq_len` a valid target index.
        room = (len(self.tokens) - 1 - self.seq_len - starts).clamp(max=self.seq_len - 1)
        starts += (torch.rand(self.n_windows, generator=self.generator) * (room + 1)).long()
        starts = starts[torch.randperm(self.n_windows, generator=self.generator)].to(self.span.device)
        for batch_starts in starts.split(self.batch_size):
            if self.world_size > 1:
                batch_starts = batch_starts[:len(batch_starts) - len(batch_starts) % self.world_size]
                if not len(batch_starts):
                    break
                batch_starts = batch_starts.chunk(self.world_size)[self.rank]
            # `[batch_size, seq_len + 1]` -> sequence first `[seq_len + 1, batch_size]`
            index = batch_starts[:, None] + self.span
            if self.is_array:
                windows = torch.from_numpy(self.tokens[index.numpy()].astype(np.int64)).to(self.device)
            else:
                windows = self.tokens[index]
            windows = windows.t().contiguous()
            yield windows[:-1], windows[1:]


class RandomBatches:
    """
    `n` batches of `loader` drawn at random, afresh each time it is iterated: the first `n` of
    a new epoch of its shuffled windows (nanoGPT's `eval_iters` for validation).
    """

    def __init__(self, loader: ShuffledWindows, n: int):
        self.loader = loader
        self.n = n

    def __len__(self):
        return min(self.n, len(self.loader))

    def __iter__(self):
        return itertools.islice(iter(self.loader), len(self))
