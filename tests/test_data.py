"""Corpus reading, splitting and batching (gpt_experiment.data)."""

import pytest
import torch

from gpt_experiment import UserError
from gpt_experiment.data import ShuffledWindows, load_corpus, read_text

from conftest import CORPUS


def _character(text: str):
    return list(text)


def _epoch(loader: ShuffledWindows):
    """The batches of one epoch, and the start index of every window (tokens are their own indices)."""
    batches = list(loader)
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
    torch.manual_seed(2)
    x, y = next(iter(ShuffledWindows(tokens, batch_size=4, seq_len=10)))
    torch.manual_seed(2)
    ix, iy = next(iter(ShuffledWindows(index, batch_size=4, seq_len=10)))
    # the same random draws cut the same windows: the batch is the text at those indices
    assert torch.equal(x, tokens[ix]) and torch.equal(y, tokens[iy])
    assert torch.equal(iy, ix + 1)


def test_epochs_are_shuffled_differently():
    torch.manual_seed(0)
    loader = ShuffledWindows(torch.arange(2000), batch_size=8, seq_len=16)
    _, first = _epoch(loader)
    _, second = _epoch(loader)
    assert first != second
    assert sorted(s // 16 for s in first) == sorted(s // 16 for s in second)


def test_read_text_file_and_folder(tmp_path):
    (tmp_path / 'one.txt').write_text('héllo ', encoding='utf-8')
    folder = tmp_path / 'books'
    folder.mkdir()
    (folder / 'b.txt').write_text('second ', encoding='utf-8')
    (folder / 'a.txt').write_text('first ', encoding='utf-8')
    (folder / 'notes.md').write_text('ignored', encoding='utf-8')
    assert read_text(tmp_path / 'one.txt') == 'héllo '
    # the .txt files of a folder, in sorted order
    assert read_text(folder) == 'first second '
    assert read_text(str(folder)) == 'first second '


def test_non_utf8_names_the_file_and_byte_offset(tmp_path):
    folder = tmp_path / 'books'
    folder.mkdir()
    (folder / 'a.txt').write_text('fine text\n', encoding='utf-8')
    (folder / 'b.txt').write_bytes('ok é\n'.encode('utf-8') + b'abc\xe9def')
    with pytest.raises(UserError) as e:
        read_text(folder)
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


@pytest.mark.parametrize('make, fragment', [
    (_missing, 'corpus not found'),
    (_empty_file, 'corpus is empty'),
    (_empty_folder, 'no .txt files'),
    (_folder_of_empty_files, 'corpus is empty'),
])
def test_unreadable_corpora_are_user_errors(tmp_path, make, fragment):
    path = make(tmp_path)
    with pytest.raises(UserError) as e:
        read_text(path)
    assert fragment in str(e.value)
    assert str(path) in str(e.value)


def test_corpus_splits_90_10(tmp_path):
    path = tmp_path / 'corpus.txt'
    path.write_text(CORPUS, encoding='utf-8')
    dataset = load_corpus(path, _character, seq_len=16)
    split = int(len(CORPUS) * 0.9)
    assert dataset.train == CORPUS[:split]
    assert dataset.valid == CORPUS[split:]
    assert set(dataset.stoi) == set(CORPUS)
    assert dataset.itos[dataset.stoi['a']] == 'a'


def test_separate_validation_file(tmp_path):
    train, valid = tmp_path / 'train.txt', tmp_path / 'valid.txt'
    train.write_text(CORPUS, encoding='utf-8')
    valid.write_text('Quite another text, with a Q.' * 2, encoding='utf-8')
    dataset = load_corpus(train, _character, seq_len=16, valid_path=valid)
    assert dataset.train == CORPUS
    assert dataset.valid == 'Quite another text, with a Q.' * 2
    # the vocabulary covers both
    assert 'Q' in dataset.stoi


@pytest.mark.parametrize('text, seq_len, split', [
    ('x' * 100, 100, 'training'),     # 90 training tokens < 101
    ('x' * 100, 10, 'validation'),    # 10 validation tokens < 11
], ids=['training', 'validation'])
def test_corpus_shorter_than_a_window_is_a_user_error(tmp_path, text, seq_len, split):
    path = tmp_path / 'short.txt'
    path.write_text(text, encoding='utf-8')
    with pytest.raises(UserError) as e:
        load_corpus(path, _character, seq_len=seq_len)
    message = str(e.value)
    assert f'the {split} split' in message and str(path) in message and f'seq_len={seq_len}' in message


def test_corpus_exactly_one_window_long_loads(tmp_path):
    path = tmp_path / 'short.txt'
    path.write_text('x' * 100, encoding='utf-8')
    dataset = load_corpus(path, _character, seq_len=9)  # 10 validation tokens = seq_len + 1
    assert len(dataset.valid) == 10
