"""BPE and character tokenizers (gpt_experiment.tokenizers), and corpora tokenised with them."""

import io

import numpy as np
import pytest
import torch

from gpt_experiment import UserError, corpus, tokenizers
from gpt_experiment.corpus import ShuffledWindows
from gpt_experiment.corpus import BPE, Corpus, Span, stream_text

from conftest import CORPUS

def load_token_corpus(path, spec, *, seq_len):
    return corpus.load(corpus.source(path), spec, seq_len=seq_len)


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
    whole = tok.decode(np.concatenate([text.train, text.valid]).tolist())
    assert whole == (CORPUS + UNICODE) * 2
    # saved and reloaded (as a run does) it encodes the same
    tokenizers.save(tok, tmp_path)
    again = tokenizers.load(tmp_path)
    assert again.encode(UNICODE) == tok.encode(UNICODE)


def test_stream_decoder_holds_back_partial_characters(tmp_path):
    path = tmp_path / 'text.txt'
    path.write_text(CORPUS + UNICODE, encoding='utf-8')
    tok = load_token_corpus(path, BPE(300, 10 ** 8), seq_len=16).tokenizer
    decoder = tokenizers.StreamDecoder(tok)
    pieces = [decoder.add(t) for t in tok.encode(UNICODE)] + [decoder.flush()]
    assert ''.join(pieces) == UNICODE
    assert not any('\ufffd' in p for p in pieces)


def test_large_bpe_corpus_is_cached_and_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, 'IN_MEMORY_BYTES', 100)
    path = tmp_path / 'text.txt'
    path.write_text(CORPUS + UNICODE, encoding='utf-8')
    first = load_token_corpus(path, BPE(300, 10 ** 8), seq_len=16)
    assert isinstance(first.train, np.memmap) and first.train.dtype == np.uint16

    cache = tmp_path / 'text.txt.cache'
    saved = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in cache.glob('tokenizer-*.json')}
    assert len(saved) == 1
    second = load_token_corpus(path, BPE(300, 10 ** 8), seq_len=16)
    # the tokenizer is the cached one, not trained and written again
    assert {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in cache.glob('tokenizer-*.json')} == saved
    assert second.tokenizer.to_json() == first.tokenizer.to_json()
    assert np.array_equal(second.train, first.train)
    # another vocabulary size is another tokenizer
    third = load_token_corpus(path, BPE(280, 10 ** 8), seq_len=16)
    assert len(list(cache.glob('tokenizer-*.json'))) == 2 and third.tokenizer.n_tokens == 280
    # windows gathered from the memmap are the text's shifted pairs
    x, y, _ = next(ShuffledWindows(second.train, batch_size=4, seq_len=16).epoch(0))
    assert x.dtype == torch.long and x.shape == (16, 4)
    assert torch.equal(x[1:], y[:-1])


def test_u32_when_the_vocabulary_is_large(tmp_path):
    # 67,952 characters: more ids than uint16 holds
    tok = tokenizers.CharacterTokenizer([chr(i) for i in range(0x100, 0x100 + 70000) if not 0xd800 <= i < 0xe000])
    text = ''.join(tok.itos[-50:])
    (tmp_path / 'a.txt').write_text(text, encoding='utf-8')
    src = corpus.source(tmp_path / 'a.txt')
    out = io.BytesIO()
    corpus.tokenise(Span(src, 0, src.size), tok, out, 'test')
    tokens = np.frombuffer(out.getvalue(), dtype=corpus.token_dtype(tok))
    assert tokens.dtype == np.uint32 and tokens.tolist() == tok.encode(text)
    assert max(tokens) > 2 ** 16


def test_streamed_non_utf8_names_file_and_offset(tmp_path):
    folder = tmp_path / 'books'
    folder.mkdir()
    (folder / 'a.txt').write_text('fine text\n', encoding='utf-8')
    (folder / 'b.txt').write_bytes(('é' * 40).encode('utf-8') + b'abc\xe9def')
    src = corpus.source(folder)
    with pytest.raises(UserError) as e:
        # tiny chunks, so that the bad byte is found after characters cut across chunks
        list(stream_text(Span(src, 0, src.size), chunk_bytes=7))
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
    assert isinstance(conf.text, Corpus)
    assert conf.n_tokens == conf.text.tokenizer.n_tokens <= 300
    x, y, _ = next(conf.train_loader.epoch(0))
    logits, _ = conf.model(x)
    assert logits.shape == (16, 8, conf.n_tokens)
