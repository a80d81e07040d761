"""BPE and character tokenizers, memory-mapped corpora and their caches (gpt_experiment.tokenizers, .corpus)."""

import numpy as np
import pytest
import torch

from gpt_experiment import UserError, corpus, runs, tokenizers
from gpt_experiment.corpus import BPE, TokenCorpus, load_token_corpus, stream_text
from gpt_experiment.data import ShuffledWindows

from conftest import CORPUS

UNICODE = ('Café, naïve façade — déjà vu!\n\tTabs,  two spaces,\n\nblank lines 😀🎉 and 日本語.\n'
           'Ünïcödé ñ ß € \u00a0 end')


def test_bpe_round_trip_is_exact(tmp_path):
    path = tmp_path / 'text.txt'
    path.write_text((CORPUS + UNICODE) * 2, encoding='utf-8')
    text = load_token_corpus(path, BPE(400, 10 ** 8), seq_len=16)
    tok = text.tokenizer
    assert isinstance(tok, tokenizers.BPETokenizer) and tok.n_tokens <= 400
    for sample in (UNICODE, CORPUS[:300], ' leading and trailing  ', '\n\n', 'emoji only 🦄🦄'):
        assert tok.decode(tok.encode(sample)) == sample
    # merges make tokens longer than a byte
    assert len(tok.encode(CORPUS)) < len(CORPUS.encode('utf-8')) / 2
    # the token files decode to the splits of the text
    whole = tok.decode(np.concatenate([text.train_tokens, text.valid_tokens]).tolist())
    assert whole == (CORPUS + UNICODE) * 2
    # saved and reloaded (as a run does) it encodes the same
    tokenizers.save(tok, tmp_path)
    again = runs.load_tokenizer(tmp_path)
    assert again.encode(UNICODE) == tok.encode(UNICODE)


def test_stream_decoder_holds_back_partial_characters(tmp_path):
    path = tmp_path / 'text.txt'
    path.write_text(CORPUS + UNICODE, encoding='utf-8')
    tok = load_token_corpus(path, BPE(300, 10 ** 8), seq_len=16).tokenizer
    decoder = tokenizers.StreamDecoder(tok)
    pieces = [decoder.add(t) for t in tok.encode(UNICODE)] + [decoder.flush()]
    assert ''.join(pieces) == UNICODE
    assert not any('\ufffd' in p for p in pieces)


def test_tokenizer_and_tokens_are_cached(tmp_path, monkeypatch):
    path = tmp_path / 'text.txt'
    path.write_text(CORPUS, encoding='utf-8')
    first = load_token_corpus(path, BPE(300, 10 ** 8), seq_len=16)
    cached = sorted(p.name for p in (tmp_path / 'text.txt.cache').iterdir())
    assert any(n.startswith('tokenizer-') for n in cached) and any(n.endswith('.u16') for n in cached)

    def no_training(*args, **kwargs):
        raise AssertionError('retrained')
    monkeypatch.setattr(tokenizers.BPETokenizer, 'train', no_training)
    monkeypatch.setattr(corpus, 'tokenise_to_file', lambda span, tok, p, name: (
        np.memmap(p, dtype=np.uint16, mode='r') if p.exists() else no_training()))
    second = load_token_corpus(path, BPE(300, 10 ** 8), seq_len=16)
    assert second.tokenizer.to_json() == first.tokenizer.to_json()
    assert np.array_equal(second.train_tokens, first.train_tokens)
    # another vocabulary size is another tokenizer
    with pytest.raises(AssertionError, match='retrained'):
        load_token_corpus(path, BPE(280, 10 ** 8), seq_len=16)


def test_large_character_corpus_is_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, 'IN_MEMORY_BYTES', 100)
    monkeypatch.setattr(corpus, 'CHUNK_BYTES', 64)
    path = tmp_path / 'text.txt'
    path.write_text(CORPUS + UNICODE, encoding='utf-8')
    text = corpus.load(path, list, seq_len=16)
    assert isinstance(text, TokenCorpus) and isinstance(text.train_tokens, np.memmap)
    assert text.train_tokens.dtype == np.uint16
    tok = text.tokenizer
    # a 90/10 split by bytes, on a character boundary, that decodes back to the text
    train, valid = tok.decode(text.train_tokens.tolist()), tok.decode(text.valid_tokens.tolist())
    assert train + valid == CORPUS + UNICODE
    assert abs(len(train.encode('utf-8')) - 0.9 * len((CORPUS + UNICODE).encode('utf-8'))) < 4
    # windows gathered from the memmap are the text's shifted pairs
    x, y = next(iter(ShuffledWindows(text.train_tokens, batch_size=4, seq_len=16)))
    assert x.dtype == torch.long and x.shape == (16, 4)
    assert torch.equal(x[1:], y[:-1])


def test_u32_when_the_vocabulary_is_large(tmp_path):
    # 67,952 characters: more ids than uint16 holds
    tok = tokenizers.CharacterTokenizer([chr(i) for i in range(0x100, 0x100 + 70000) if not 0xd800 <= i < 0xe000])
    path = tmp_path / 'tokens.u32'
    text = ''.join(tok.itos[-50:])
    (tmp_path / 'a.txt').write_text(text, encoding='utf-8')
    files = [tmp_path / 'a.txt']
    tokens = corpus.tokenise_to_file((files, 0, files[0].stat().st_size), tok, path, 'test')
    assert tokens.dtype == np.uint32 and tokens.tolist() == tok.encode(text)
    assert max(tokens) > 2 ** 16


def test_streamed_non_utf8_names_file_and_offset(tmp_path):
    folder = tmp_path / 'books'
    folder.mkdir()
    (folder / 'a.txt').write_text('fine text\n', encoding='utf-8')
    (folder / 'b.txt').write_bytes(('é' * 40).encode('utf-8') + b'abc\xe9def')
    files = sorted(folder.glob('*.txt'))
    with pytest.raises(UserError) as e:
        # tiny chunks, so that the bad byte is found after characters cut across chunks
        list(stream_text((files, 0, sum(f.stat().st_size for f in files)), chunk_bytes=7))
    assert str(folder / 'b.txt') in str(e.value) and 'offset 83' in str(e.value) and '0xe9' in str(e.value)
    with pytest.raises(UserError, match='offset 83'):
        load_token_corpus(folder, BPE(300, 10 ** 8), seq_len=4)


@pytest.mark.parametrize('make, fragment', [
    (lambda p: p / 'missing.txt', 'corpus not found'),
    (lambda p: (p / 'empty').mkdir() or p / 'empty', 'no .txt files'),
    (lambda p: (p / 'e.txt').write_text('') and None or p / 'e.txt', 'corpus is empty'),
    (lambda p: (p / 's.txt').write_text('short text') and p / 's.txt', 'seq_len=16 needs at least 17'),
])
def test_bad_corpora_with_bpe_are_user_errors(tmp_path, make, fragment):
    with pytest.raises(UserError, match=fragment):
        load_token_corpus(make(tmp_path), BPE(300, 10 ** 8), seq_len=16)


def test_bpe_option_trains_on_the_corpus(tiny_configs):
    conf = tiny_configs(tokenizer='bpe', bpe_vocab_size=300)
    assert isinstance(conf.text, TokenCorpus)
    assert conf.n_tokens == conf.text.tokenizer.n_tokens <= 300
    x, y = next(iter(conf.train_loader))
    logits, _ = conf.model(x)
    assert logits.shape == (16, 8, conf.n_tokens)
