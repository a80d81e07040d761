"""Corpus reading, checking, splitting and caching, and its batches (gpt_experiment.corpus)."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt_experiment import UserError, corpus
from gpt_experiment.corpus import ShuffledWindows

from conftest import CORPUS

UNICODE = 'Café, naïve façade — déjà vu! 😀 日本語.\n'


def load(path, seq_len=16, valid=None, tokenizer='character'):
    return corpus.load(corpus.source(path), tokenizer, seq_len=seq_len,
                       valid_src=corpus.source(valid) if valid else None)


def text_of(c: corpus.Corpus, split: str) -> str:
    return c.tokenizer.decode(getattr(c, split).tolist())


def _epoch(loader: ShuffledWindows, epoch: int = 0):
    """The batches of one epoch, and the start index of every window (tokens are their own indices)."""
    batches = [(x, y) for x, y, _ in loader.epoch(epoch)]
    starts = torch.cat([x[0] for x, _ in batches]).tolist()
    return batches, starts


@pytest.mark.parametrize('n, seq_len, batch_size', [
    (1000, 16, 8),   # a partial last batch
    (257, 16, 4),    # windows that exactly fill the text
    (17, 16, 3),     # a single window
    (500, 7, 100),   # one batch, smaller than batch_size
])
def test_windows_are_shifted_pairs_inside_the_text(n, seq_len, batch_size):
    torch.manual_seed(0)
    tokens = torch.arange(n)
    loader = ShuffledWindows(tokens, batch_size=batch_size, seq_len=seq_len)
    n_windows = (n - 1) // seq_len
    batches, starts = _epoch(loader)

    assert len(batches) == len(loader) == -(-n_windows // batch_size)
    for i, (x, y) in enumerate(batches):
        # sequence first: [seq_len, batch]
        assert x.shape == y.shape
        assert x.shape[0] == seq_len
        assert x.shape[1] == (batch_size if i < len(batches) - 1 else n_windows - batch_size * (len(batches) - 1))
        assert x.dtype == tokens.dtype
        # targets are the inputs shifted by one token of the text
        for b in range(x.shape[1]):
            start = x[0, b].item()
            assert torch.equal(x[:, b], tokens[start:start + seq_len])
            assert torch.equal(y[:, b], tokens[start + 1:start + seq_len + 1])
    # every window lies inside the text, including its last target
    assert min(starts) >= 0 and max(starts) + seq_len <= n - 1
    # one window in each seq_len-long stretch of the text: every stretch is seen once an epoch
    assert sorted(s // seq_len for s in starts) == list(range(n_windows))


def test_windows_follow_an_arbitrary_token_tensor():
    torch.manual_seed(1)
    tokens = torch.randint(0, 5, (300,))
    index = torch.arange(300)
    x, y, _ = next(ShuffledWindows(tokens, batch_size=4, seq_len=10, seed=2).epoch(0))
    ix, iy, _ = next(ShuffledWindows(index, batch_size=4, seq_len=10, seed=2).epoch(0))
    # the same random draws cut the same windows: the batch is the text at those indices
    assert torch.equal(x, tokens[ix]) and torch.equal(y, tokens[iy])
    assert torch.equal(iy, ix + 1)


def test_epochs_are_shuffled_differently_and_each_is_a_function_of_the_seed():
    loader = ShuffledWindows(torch.arange(2000), batch_size=8, seq_len=16, seed=3)
    _, first = _epoch(loader, 0)
    _, second = _epoch(loader, 1)
    assert first != second
    assert sorted(s // 16 for s in first) == sorted(s // 16 for s in second)
    # the same epoch again, from another loader with the same seed, whatever the global generator
    torch.manual_seed(123)
    assert _epoch(ShuffledWindows(torch.arange(2000), batch_size=8, seq_len=16, seed=3), 1)[1] == second
    assert _epoch(ShuffledWindows(torch.arange(2000), batch_size=8, seq_len=16, seed=4), 1)[1] != second


def test_an_epoch_resumed_at_any_window_gives_the_rest_of_the_same_batches():
    loader = ShuffledWindows(torch.arange(2000), batch_size=8, seq_len=16, seed=3)
    whole = torch.cat([x for x, _, _ in loader.epoch(2)], dim=1)
    for start in (0, 8, 13, 100, 121):
        rest = list(loader.epoch(2, start))
        # a start between two cuts of the batch grid gives one short batch, then the grid again
        assert [n for _, _, n in rest] == [x.shape[1] for x, _, _ in rest]
        assert rest[0][2] == min(8 - start % 8, 124 - start)
        assert torch.equal(torch.cat([x for x, _, _ in rest], dim=1), whole[:, start:])
    # and a stretch of it, up to a window
    assert torch.equal(torch.cat([x for x, _, _ in loader.epoch(2, 16, 40)], dim=1), whole[:, 16:40])


def test_file_and_folder(tmp_path):
    (tmp_path / 'one.txt').write_text(CORPUS, encoding='utf-8')
    folder = tmp_path / 'books'
    folder.mkdir()
    (folder / 'b.txt').write_text(CORPUS[200:], encoding='utf-8')
    (folder / 'a.txt').write_text(CORPUS[:200], encoding='utf-8')
    (folder / 'notes.md').write_text('ignored', encoding='utf-8')
    one = load(tmp_path / 'one.txt')
    assert text_of(one, 'train') + text_of(one, 'valid') == CORPUS
    # the .txt files of a folder, in sorted order
    books = load(str(folder))
    assert text_of(books, 'train') + text_of(books, 'valid') == CORPUS


def test_non_utf8_names_the_file_and_byte_offset(tmp_path):
    folder = tmp_path / 'books'
    folder.mkdir()
    (folder / 'a.txt').write_text('fine text\n', encoding='utf-8')
    (folder / 'b.txt').write_bytes('ok é\n'.encode('utf-8') + b'abc\xe9def' + CORPUS.encode())
    with pytest.raises(UserError) as e:
        load(folder)
    message = str(e.value)
    assert str(folder / 'b.txt') in message
    assert 'offset 9' in message and '0xe9' in message


def _missing(p):
    return p / 'missing.txt'


def _empty_file(p):
    (p / 'empty.txt').write_text('', encoding='utf-8')
    return p / 'empty.txt'


def _empty_folder(p):
    (p / 'nothing').mkdir()
    (p / 'nothing' / 'readme.md').write_text('not a .txt file', encoding='utf-8')
    return p / 'nothing'


def _folder_of_empty_files(p):
    (p / 'blank').mkdir()
    (p / 'blank' / 'a.txt').write_text('', encoding='utf-8')
    return p / 'blank'


def _fifo(p):
    os.mkfifo(p / 'pipe')
    return p / 'pipe'


@pytest.mark.parametrize('make, fragment', [
    (_missing, 'corpus not found'),
    (_empty_file, 'corpus is empty'),
    (_empty_folder, 'no .txt files'),
    (_folder_of_empty_files, 'corpus is empty'),
    (_fifo, 'is not a regular file'),
    (lambda p: '/dev/zero', 'is not a regular file'),
    (lambda p: '/dev/urandom', 'is not a regular file'),
])
def test_unreadable_corpora_are_user_errors(tmp_path, make, fragment):
    path = make(tmp_path)
    with pytest.raises(UserError) as e:
        load(path)
    assert fragment in str(e.value)
    assert str(path) in str(e.value)


def test_split_is_90_10_by_bytes_on_a_character_boundary_at_every_size(tmp_path, monkeypatch):
    path = tmp_path / 'corpus.txt'
    text = CORPUS + UNICODE * 20
    path.write_text(text, encoding='utf-8')
    small = load(path)
    assert isinstance(small.train, np.ndarray) and not isinstance(small.train, np.memmap)
    train, valid = text_of(small, 'train'), text_of(small, 'valid')
    assert train + valid == text
    raw = text.encode('utf-8')
    assert 0 <= len(train.encode('utf-8')) - int(len(raw) * 0.9) < 4
    # the same rule when the corpus is large enough to be cached and memory-mapped
    monkeypatch.setattr(corpus, 'IN_MEMORY_BYTES', 100)
    monkeypatch.setattr(corpus, 'CHUNK_BYTES', 64)
    large = load(path)
    assert isinstance(large.train, np.memmap)
    assert np.array_equal(large.train, small.train) and np.array_equal(large.valid, small.valid)
    assert large.tokenizer.itos == small.tokenizer.itos


def test_separate_validation_file(tmp_path):
    train, valid = tmp_path / 'train.txt', tmp_path / 'valid.txt'
    train.write_text(CORPUS, encoding='utf-8')
    valid.write_text('Quite another text, with a Q.' * 2, encoding='utf-8')
    c = load(train, valid=valid)
    assert text_of(c, 'train') == CORPUS
    assert text_of(c, 'valid') == 'Quite another text, with a Q.' * 2
    # the vocabulary covers both
    assert 'Q' in c.tokenizer.itos


@pytest.mark.parametrize('text, seq_len, split', [
    ('x' * 100, 100, 'training'),     # 90 training tokens < 101
    ('x' * 100, 10, 'validation'),    # 10 validation tokens < 11
], ids=['training', 'validation'])
def test_corpus_shorter_than_a_window_is_a_user_error(tmp_path, text, seq_len, split):
    path = tmp_path / 'short.txt'
    path.write_text(text, encoding='utf-8')
    with pytest.raises(UserError) as e:
        load(path, seq_len=seq_len)
    message = str(e.value)
    assert f'the {split} split' in message and str(path) in message and f'seq_len={seq_len}' in message


def test_corpus_exactly_one_window_long_loads(tmp_path):
    path = tmp_path / 'short.txt'
    path.write_text('x' * 100, encoding='utf-8')
    assert len(load(path, seq_len=9).valid) == 10  # 10 validation tokens = seq_len + 1


def test_tiny_shakespeare_ships_with_the_package():
    src = corpus.tiny_shakespeare()
    raw = b''.join(p.open().read() for p in src.parts)
    assert hashlib.md5(raw).hexdigest() == '6fb458f1232090904fb40fe944165e91'
    c = corpus.load(src, 'character', seq_len=128)
    # labml's recipe: 65 characters, the first 90% of the text trains
    assert c.n_tokens == 65
    assert (len(c.train), len(c.valid)) == (1003854, 111540)


# ## The token cache of large corpora

@pytest.fixture
def large(monkeypatch):
    """Every corpus is 'large': cached and memory-mapped."""
    monkeypatch.setattr(corpus, 'IN_MEMORY_BYTES', 0)


def _cache_files(path, pattern):
    return sorted((path.parent / f'{path.name}.cache').glob(pattern))


def cache_state(path):
    """Each file of a corpus's cache, with what changes when it is written again."""
    return {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in _cache_files(path, '*')}


def test_cache_is_reused(tmp_path, large):
    path = tmp_path / 'text.txt'
    path.write_text(CORPUS, encoding='utf-8')
    first = load(path)
    assert _cache_files(path, 'tokenizer-*.json') and _cache_files(path, 'training-*.u16')
    cached = cache_state(path)
    second = load(path)
    # read from the cache: nothing written again, the tokens mapped from the cache's file
    assert cache_state(path) == cached
    assert Path(second.train.filename).parent == path.parent / f'{path.name}.cache'
    assert np.array_equal(second.train, first.train) and np.array_equal(second.valid, first.valid)


def test_cache_follows_the_content_not_the_size_and_time(tmp_path, large):
    path = tmp_path / 'text.txt'
    path.write_text(CORPUS, encoding='utf-8')
    before = os.stat(path)
    load(path)
    # the same size, the modification time put back: only the content changed
    edited = CORPUS.replace('apples', 'APPLES')
    path.write_text(edited, encoding='utf-8')
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size
    c = load(path)
    assert text_of(c, 'train') + text_of(c, 'valid') == edited


@pytest.mark.parametrize('damage', ['truncate', 'out_of_range'])
def test_a_damaged_cache_is_noticed_and_rebuilt(tmp_path, large, damage, capsys):
    path = tmp_path / 'text.txt'
    path.write_text(CORPUS, encoding='utf-8')
    good = np.array(load(path).train)  # a copy: the file is about to change under its mapping
    train_file, = _cache_files(path, 'training-*.u16')
    tokens = np.fromfile(train_file, dtype=np.uint16)
    if damage == 'truncate':
        tokens = tokens[:len(tokens) // 2]
    else:
        tokens[5] = 60000
    tokens.tofile(train_file)
    again = load(path)
    assert np.array_equal(again.train, good)
    assert 'tokenising again' in capsys.readouterr().out


@pytest.mark.parametrize('edit', [
    lambda itos: itos[:1] + itos[2:],                        # a character gone: every later id shifts
    lambda itos: [('Z' if ch == 'z' else ch) for ch in itos],  # another character, the same ids
], ids=['a character gone', 'a character changed'])
def test_a_changed_cache_tokenizer_is_noticed_and_rebuilt(tmp_path, large, edit, capsys):
    import json
    path = tmp_path / 'text.txt'
    path.write_text(CORPUS, encoding='utf-8')
    load(path)
    tokenizer_file, = _cache_files(path, 'tokenizer-*.json')
    saved = json.loads(tokenizer_file.read_text())
    tokenizer_file.write_text(json.dumps({**saved, 'itos': edit(saved['itos'])}))
    capsys.readouterr()
    again = load(path)
    # the text as it is, not as the changed tokenizer would read the cached ids
    assert text_of(again, 'train') + text_of(again, 'valid') == CORPUS
    assert json.loads(again.tokenizer.to_json()) == saved
    assert 'tokenising again' in capsys.readouterr().out


@pytest.mark.parametrize('pattern', ['tokenizer-*.json', 'tokens-*.json', 'training-*.u16'])
def test_an_empty_cache_file_is_noticed_and_rebuilt(tmp_path, large, pattern, capsys):
    path = tmp_path / 'text.txt'
    path.write_text(CORPUS, encoding='utf-8')
    good = np.array(load(path).train)
    emptied, = _cache_files(path, pattern)
    emptied.write_bytes(b'')
    capsys.readouterr()
    again = load(path)
    assert np.array_equal(again.train, good)
    assert text_of(again, 'train') + text_of(again, 'valid') == CORPUS
    assert 'tokenising again' in capsys.readouterr().out
    # and written again: the next load reads the cache as it is
    assert emptied.stat().st_size > 0


@pytest.mark.parametrize('error', [
    OSError(28, 'No space left on device'),                    # Python's own writes
    RuntimeError('PytorchStreamWriter failed writing file'),   # as torch's writer reports it, with no path
], ids=['OSError', 'RuntimeError'])
def test_a_full_disk_while_caching_is_one_line_naming_the_file(tmp_path, large, monkeypatch, error):
    from gpt_experiment import files
    path = tmp_path / 'text.txt'
    path.write_text(CORPUS, encoding='utf-8')
    real = files.write_durably

    def write_durably(target, write):
        if '-' in target.name and '.u' in target.name:  # a split's token file
            real(target, write)  # a partial file, as a full disk leaves it
            raise error
        return real(target, write)
    monkeypatch.setattr(files, 'write_durably', write_durably)
    with pytest.raises(UserError) as e:
        load(path)
    message = str(e.value)
    assert '\n' not in message and message.startswith('cannot write ')
    assert f'{path.name}.cache' in message and ('No space left on device' in message or 'failed writing' in message)
    # nothing half-written is left to be read as a cache
    assert not _cache_files(path, '*.tmp')
    monkeypatch.setattr(files, 'write_durably', real)
    assert text_of(load(path), 'train') + text_of(load(path), 'valid') == CORPUS
