r"""
# Hugging Face

Our GPT is, weight for weight, a model of Hugging Face `transformers`:

* the pre-LN GPT (the default) is **GPT-2** (`GPT2LMHeadModel`, `model_type: gpt2`);
* GPT-1's post-LN shape (`transformer.encoder_layer=post_ln`, `configs/gpt1.yaml`) is
  **OpenAI GPT** (`OpenAIGPTLMHeadModel`, `openai-gpt`), which normalises after each residual
  sum, as GPT-1 does, and has no final LayerNorm.

This module maps the weights both ways: `export` for [`gpt-export`](export.html), and
`source` for `init_from=hf:DIR` ([training](training.html)). The mapping is exact: the same
token ids give the same logits, up to float32 rounding. Where the two sides compute the same
function in different ways, the difference goes into the weights:

* **The embedding scale.** labml_nn's embedding is $\sqrt{d_{model}}\, W_e[x] + p_t$, HF's
  $W_{te}[x] + p_t$: so $W_{te} = \sqrt{d_{model}}\, W_e$.
* **Tied embeddings.** Our tied head computes $h W_e^\top$ and HF's $h W_{te}^\top$, which is
  $\sqrt{d_{model}}$ times as much: the LayerNorm that makes $h$ (the final one, or the last
  layer's in a post-LN stack) has its gain and shift divided by $\sqrt{d_{model}}$.
* **The generator's bias.** labml_nn's generator adds a bias $b$ per token; neither HF head
  has one. When $b = W c$ for some vector $c$, which is always so when the vocabulary is no
  larger than $d_{model}$ (characters), $h W^\top + b = (h + c) W^\top$, and $c$ goes into that
  LayerNorm's shift. Otherwise the export is refused: train with `generator_bias=false`.
* **Layouts.** HF's `Conv1D` keeps a weight as `[in, out]`, the transpose of `nn.Linear`'s
  `[out, in]`; its attention has one `c_attn` for the query, key and value where labml_nn has
  three linears (the heads are the same slices of each); its position table is
  `[n_positions, d_model]` where ours is `[seq_len, 1, d_model]`, or labml_nn's fixed
  sinusoids, whose first `seq_len` rows become the table. A GPT without positions
  (`transformer.src_embed=no_pos`) gets a table of zeros.

What neither model can compute is refused in one line that names the key: a gated
feed-forward layer, an activation HF's model lacks (OpenAI GPT's only GELU is the tanh
approximation), attention other than labml_nn's, a feed-forward width other than OpenAI GPT's
$4 d_{model}$. Our biases that are switched off are HF biases of zero.

The tokenizer goes along as a *fast* tokenizer, `tokenizer.json`: the byte-level BPE as it
is, and characters as a `WordLevel` model with the same ids (`hf_tokenizer`).

`init_from=hf:` reads the folder with `safetensors` and `tokenizers` alone; `gpt-export` needs
`transformers` too (the `[hf]` extra, `import_transformers`).
"""

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional

import torch
from torch import nn
from labml_nn.transformers.mha import MultiHeadAttention
from labml_nn.transformers.models import TransformerLayer

from . import checkpoints, files, tokenizers
from .errors import UserError
from .model import GPT, PostLNTransformerLayer

GPT2, OPENAI_GPT = 'gpt2', 'openai-gpt'
# HF's class of each, for messages
CLASSES = {GPT2: 'GPT2LMHeadModel', OPENAI_GPT: 'OpenAIGPTLMHeadModel'}
# HF's names of the token and position tables
TOKENS = {GPT2: 'wte', OPENAI_GPT: 'tokens_embed'}
POSITIONS = {GPT2: 'wpe', OPENAI_GPT: 'positions_embed'}
# Our activations (`transformer.ffn.activation`) by the names each HF model gives them.
# OpenAI GPT's `gelu` is the tanh approximation, and it has no exact GELU.
ACTIVATIONS = {GPT2: {'GELU': 'gelu', 'GELU_tanh': 'gelu_new', 'ReLU': 'relu'},
               OPENAI_GPT: {'GELU_tanh': 'gelu', 'ReLU': 'relu'}}
# Read back, with transformers' other name for torch's own tanh GELU
READ_ACTIVATIONS = {GPT2: {'gelu': 'GELU', 'gelu_new': 'GELU_tanh', 'gelu_pytorch_tanh': 'GELU_tanh', 'relu': 'ReLU'},
                    OPENAI_GPT: {'gelu': 'GELU_tanh', 'relu': 'ReLU'}}
# The rest of a layer: our module, HF's, and whether HF's is a `Conv1D` (a transposed weight).
# The names are the same in both models; in OpenAI GPT, `ln_1` and `ln_2` come after the sums.
LAYER = (('norm_self_attn', 'ln_1', False), ('self_attn.output', 'attn.c_proj', True),
         ('norm_ff', 'ln_2', False), ('feed_forward.layer1', 'mlp.c_fc', True),
         ('feed_forward.layer2', 'mlp.c_proj', True))
# `nn.LayerNorm`'s epsilon, which labml_nn's layer norms have
LAYER_NORM_EPS = 1e-5
# How far the folded generator bias may be from the run's (the logits are checked to 1e-4)
FOLD_TOLERANCE = 1e-5


def import_transformers():
    """
    `transformers`, or one line on how to install it. transformers imports torchvision
    whenever it is installed, and labml-nn's torchvision from PyPI does not load beside a CPU
    build of torch (`operator torchvision::nms does not exist`). A torchvision that cannot be
    imported is of no use to this process either, so it is hidden from transformers, which
    then does without it (it needs it only for images).
    """
    if 'torchvision' not in sys.modules and importlib.util.find_spec('torchvision') is not None:
        try:
            import torchvision  # noqa: F401
        except Exception:
            for name in [m for m in sys.modules if m == 'torchvision' or m.startswith('torchvision.')]:
                del sys.modules[name]
            # `import torchvision` now fails at once, and `find_spec` says there is none.
            sys.modules['torchvision'] = None
    try:
        import transformers
    except ImportError:
        raise UserError('this needs Hugging Face transformers: pip install "gpt-experiment[hf]"') from None
    return transformers


def _activation(module: nn.Module) -> Optional[str]:
    """Our option name (`transformer.ffn.activation`) of a feed-forward activation module."""
    if type(module) is nn.GELU:
        return {'none': 'GELU', 'tanh': 'GELU_tanh'}.get(module.approximate)
    return 'ReLU' if type(module) is nn.ReLU else None


def _conv(linear: nn.Linear) -> torch.Tensor:
    """An `nn.Linear` weight as HF's `Conv1D` keeps it, `[in, out]`."""
    return linear.weight.t()


def _bias(linear: nn.Linear) -> torch.Tensor:
    """A bias, or zeros where it is switched off (HF's layers always have one)."""
    return linear.bias if linear.bias is not None else torch.zeros(linear.out_features)


# ## Export

class Exported(NamedTuple):
    """An HF model: `model_type`, its config's values, and its weights under HF's names."""
    architecture: str
    config: Dict[str, Any]
    weights: Dict[str, torch.Tensor]


def _cannot(key: str, why: str):
    raise UserError(f'cannot export {key}: {why}')


def _fold_bias(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    r"""
    $c$ with $W c = b$: the shortest such vector (the pseudo-inverse's), in float64, checked
    in the float32 it is saved in. A bias the head's weight cannot make is refused.
    """
    w, b = weight.double(), bias.double()
    c = (torch.linalg.pinv(w) @ b).float()
    error = (w @ c.double() - b).abs().max().item()
    if error > FOLD_TOLERANCE:
        _cannot('generator_bias=true', f"HF's heads have no bias, and this one is not the head's weight times any "
                f'vector ({weight.shape[0]} tokens over {weight.shape[1]} dimensions; off by {error:.1e}), so it '
                f'cannot move into the last LayerNorm; a run trained with generator_bias=false exports')
    return c


def export(model: GPT, *, seq_len: int, dropout: float = 0.0, embedding_dropout: float = 0.0) -> Exported:
    """
    Our GPT (on the CPU, in float32) as GPT-2 or OpenAI GPT, with a context of `seq_len`
    tokens; the dropouts go into the config, for fine-tuning on HF's side.
    """
    layers = list(model.encoder.layers)
    post_ln = all(type(layer) is PostLNTransformerLayer for layer in layers)
    if not post_ln and not all(type(layer) is TransformerLayer for layer in layers):
        _cannot('transformer.encoder_layer',
                "only labml_nn's pre-LN layer (GPT-2) and post_ln (OpenAI GPT) have HF twins")
    arch = OPENAI_GPT if post_ln else GPT2

    # **The layers.** Each must be one HF can compute.
    ffn, attn = layers[0].feed_forward, layers[0].self_attn
    activation = _activation(ffn.activation)
    hf_activation = ACTIVATIONS[arch].get(activation)
    if ffn.is_gated:
        _cannot('transformer.ffn.is_gated=true', f'{CLASSES[arch]} has no gated feed-forward layer')
    if hf_activation is None:
        _cannot(f'transformer.ffn.activation={activation or type(ffn.activation).__name__}',
                f'{CLASSES[arch]} has {", ".join(ACTIVATIONS[arch])}' +
                ("; OpenAI GPT's GELU is the tanh approximation, GELU_tanh" if arch == OPENAI_GPT else ''))
    d_model, d_ff = ffn.layer1.in_features, ffn.layer1.out_features
    if arch == OPENAI_GPT and d_ff != 4 * d_model:
        _cannot(f'transformer.ffn.d_ff={d_ff}',
                f"OpenAI GPT's feed-forward layers are 4 x d_model = {4 * d_model} wide")
    if not isinstance(attn, MultiHeadAttention) or type(attn).get_scores is not MultiHeadAttention.get_scores:
        _cannot('transformer.encoder_attn', f"{type(attn).__name__} is not labml_nn's scaled dot-product attention")

    weights = {}
    for i, layer in enumerate(layers):
        prefix = f'transformer.h.{i}'
        # The query, key and value, side by side in one `Conv1D`: `[d_model, 3 d_model]`.
        qkv = (layer.self_attn.query.linear, layer.self_attn.key.linear, layer.self_attn.value.linear)
        weights[f'{prefix}.attn.c_attn.weight'] = torch.cat([_conv(linear) for linear in qkv], dim=1)
        weights[f'{prefix}.attn.c_attn.bias'] = torch.cat([_bias(linear) for linear in qkv])
        for ours, theirs, conv in LAYER:
            module = layer.get_submodule(ours)
            weights[f'{prefix}.{theirs}.weight'] = _conv(module) if conv else module.weight
            weights[f'{prefix}.{theirs}.bias'] = _bias(module)

    # **The embeddings.** labml_nn's scale $\sqrt{d_{model}}$ goes into the table; an
    # embedding without positions is a plain `nn.Embedding`, without the scale.
    embed = model.src_embed
    plain = type(embed) is nn.Embedding
    if not plain and not isinstance(getattr(embed, 'linear', None), nn.Embedding):
        _cannot('transformer.src_embed', f'{type(embed).__name__} is not one of fixed_pos, learned_pos, no_pos')
    table = embed.weight if plain else embed.linear.weight
    scale = 1.0 if plain else math.sqrt(embed.d_model)
    weights[f'transformer.{TOKENS[arch]}.weight'] = table * scale
    # Learned or fixed, the first `seq_len` rows of `[rows, 1, d_model]`; zeros without positions.
    positions = torch.zeros(seq_len, d_model) if plain else embed.positional_encodings[:seq_len, 0]
    weights[f'transformer.{POSITIONS[arch]}.weight'] = positions

    # **The head.** The LayerNorm that makes $h$, the generator's input: the final one, or the
    # last layer's own in a post-LN stack.
    final = f'transformer.h.{len(layers) - 1}.ln_2' if post_ln else 'transformer.ln_f'
    norm = layers[-1].norm_ff if post_ln else model.encoder.norm
    gain, shift = norm.weight, norm.bias
    head = model.generator.projection
    tied = head.weight is table
    if head.bias is not None:
        shift = shift + _fold_bias(head.weight, head.bias)
    if tied:
        # HF's head reads the scaled table: scale $h$ down to match.
        gain, shift = gain / scale, shift / scale
    else:
        weights['lm_head.weight'] = head.weight
    weights[f'{final}.weight'], weights[f'{final}.bias'] = gain, shift

    n_heads = attn.heads
    common = dict(vocab_size=table.shape[0], n_positions=seq_len, n_embd=d_model, n_layer=len(layers),
                  n_head=n_heads, resid_pdrop=dropout, attn_pdrop=dropout, embd_pdrop=embedding_dropout,
                  layer_norm_epsilon=LAYER_NORM_EPS, tie_word_embeddings=tied,
                  # no special tokens: HF's defaults (GPT-2's 50256) are not ids of ours
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if arch == GPT2:
        config = dict(common, n_inner=d_ff, activation_function=hf_activation)
    else:
        config = dict(common, afn=hf_activation)
    # Plain float32 tensors of their own (a tied table once), as safetensors saves them
    weights = {k: v.detach().float().contiguous().clone() for k, v in weights.items()}
    return Exported(arch, config, weights)


def to_transformers(exported: Exported):
    """The HF model of `export`, in eval mode; `generation_config` is gpt-generate's defaults."""
    transformers = import_transformers()
    if exported.architecture == GPT2:
        config, model_class = transformers.GPT2Config, transformers.GPT2LMHeadModel
    else:
        config, model_class = transformers.OpenAIGPTConfig, transformers.OpenAIGPTLMHeadModel
    model = model_class(config(**exported.config))
    weights = dict(exported.weights)
    if exported.config['tie_word_embeddings']:
        # HF's state dict names the tied table twice
        weights['lm_head.weight'] = weights[f'transformer.{TOKENS[exported.architecture]}.weight']
    model.load_state_dict(weights, strict=True)
    # gpt-generate's defaults: sampling at temperature 1 from the whole distribution, and at
    # most the context (HF's learned positions end there; gpt-generate slides its window).
    model.generation_config = transformers.GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_length=exported.config['n_positions'],
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return model.eval()


# ## Tokenizers

def hf_tokenizer(tokenizer):
    """
    Our tokenizer as a Hugging Face `tokenizers.Tokenizer` that gives the same ids and decodes
    them to the same text. A BPE run's is one already. Characters become a `WordLevel` model,
    one word per character, with our ids; our encoder drops characters outside the
    vocabulary, and so does its normaliser; its decoder joins the words without spaces.
    """
    if not isinstance(tokenizer, tokenizers.CharacterTokenizer):
        return tokenizer.hf
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    hf = Tokenizer(models.WordLevel({c: i for i, c in enumerate(tokenizer.itos)}, unk_token=None))
    # every character not in `[...]`, each written by its code point
    vocabulary = ''.join(f'\\x{{{ord(c):x}}}' for c in tokenizer.itos)
    hf.normalizer = normalizers.Replace(Regex(f'[^{vocabulary}]'), '')
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r'[\s\S]'), behavior='isolated')
    hf.decoder = decoders.Fuse()
    return hf


def save_tokenizer(tokenizer, folder: Path, seq_len: int):
    """`tokenizer.json` and `tokenizer_config.json`: what `AutoTokenizer.from_pretrained` loads."""
    transformers = import_transformers()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=hf_tokenizer(tokenizer), model_max_length=seq_len,
                                                # " ." stays " ." in decoded text
                                                clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(folder))
    # The class every transformers release knows (5.x writes its new name, `TokenizersBackend`)
    path = Path(folder) / 'tokenizer_config.json'
    config = json.loads(path.read_text(encoding='utf-8'))
    config['tokenizer_class'] = 'PreTrainedTokenizerFast'
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + '\n', encoding='utf-8')


def _our_tokenizer(folder: Path):
    """
    The tokenizer of an HF folder, from its `tokenizer.json`: characters when it is a
    `WordLevel` model of single characters with ids `0..n-1` (what `hf_tokenizer` writes),
    otherwise the tokenizer as it is, behind our BPE tokenizer's interface.
    """
    path = folder / 'tokenizer.json'
    if not path.exists():
        raise UserError(f'hf:{folder} has no tokenizer.json (a fast tokenizer); '
                        f'AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR) writes one')
    text = files.read_text(path)
    try:
        value = json.loads(text)
        model = value['model']
        if model.get('type') == 'WordLevel':
            itos = sorted(model['vocab'], key=model['vocab'].get)
            if [model['vocab'][c] for c in itos] == list(range(len(itos))) and all(len(c) == 1 for c in itos):
                return tokenizers.CharacterTokenizer(itos)
        from tokenizers import Tokenizer
        return tokenizers.BPETokenizer(Tokenizer.from_str(text))
    except Exception as e:  # not JSON, or not a tokenizer
        raise UserError(f'{path} is not a tokenizer ({checkpoints.detail(e)})') from None


# ## Import

# The values HF's config classes give the keys a `config.json` leaves out
DEFAULTS = {
    GPT2: dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
               activation_function='gelu_new', layer_norm_epsilon=1e-5, scale_attn_weights=True,
               scale_attn_by_inverse_layer_idx=False, add_cross_attention=False, tie_word_embeddings=True),
    OPENAI_GPT: dict(vocab_size=40478, n_positions=512, n_embd=768, n_layer=12, n_head=12, afn='gelu',
                     layer_norm_epsilon=1e-5, tie_word_embeddings=True),
}
# Config values our GPT computes only one way: (key, the value it must have)
FIXED = {GPT2: (('layer_norm_epsilon', LAYER_NORM_EPS), ('scale_attn_weights', True),
                ('scale_attn_by_inverse_layer_idx', False), ('add_cross_attention', False)),
         OPENAI_GPT: (('layer_norm_epsilon', LAYER_NORM_EPS),)}


class Source(NamedTuple):
    """
    What `init_from=hf:DIR` starts from: the folder, our keys of its shape, its tokenizer and
    its weights under our names. It answers as [training](training.html)'s `Start` does.
    """
    folder: Path
    shape: Dict[str, Any]
    vocabulary: Any
    weights: Dict[str, torch.Tensor]
    # no training state: a new run
    state = None

    @property
    def name(self) -> str:
        """`hf:<folder>`, as the run records it."""
        return f'hf:{self.folder}'

    def tokenizer(self):
        """The folder's tokenizer, which the new run encodes its corpus with."""
        return self.vocabulary

    def load_weights(self, model: GPT):
        """Load the weights into `model`, or say in one line why they do not fit it."""
        try:
            model.load_state_dict(self.weights)
        except (RuntimeError, KeyError, ValueError) as e:
            raise UserError(f'the weights of {self.name} do not fit the model of its config.json '
                            f'({checkpoints.detail(e)})') from None


def _read_weights(folder: Path) -> Dict[str, torch.Tensor]:
    """The weights of an HF folder in float32, under the names of `GPT2LMHeadModel` (`transformer.h.0...`)."""
    safetensors_file, pickle_file = folder / 'model.safetensors', folder / 'pytorch_model.bin'
    if safetensors_file.exists():
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError('reading model.safetensors needs safetensors: pip install "gpt-experiment[hf]"') from None
        try:
            weights = load_file(str(files.regular_file(safetensors_file)))
        except UserError:
            raise
        except Exception as e:
            raise UserError(f'{safetensors_file} is not a safetensors file ({checkpoints.detail(e)})') from None
    elif pickle_file.exists():
        weights = checkpoints.load_tensors(pickle_file)
    else:
        raise UserError(f'hf:{folder} has no model.safetensors (a sharded model, or none, is not read here)')
    if not isinstance(weights, dict):
        raise UserError(f'hf:{folder}: the weights are not a table of tensors')
    # Saved from the bare `GPT2Model`, as the Hub's own `gpt2` is, the names lack `transformer.`.
    return {(k if k.startswith(('transformer.', 'lm_head.')) else f'transformer.{k}'): v.float()
            for k, v in weights.items() if isinstance(v, torch.Tensor)}


def source(folder: str, seq_len: Optional[int] = None) -> Source:
    """
    Read an HF GPT-2 or OpenAI GPT folder as our GPT: the keys of its shape (`seq_len` its
    context, or the shorter `seq_len` given), its tokenizer, and its weights under our names.
    """
    folder = Path(folder).expanduser().absolute()
    if not folder.is_dir():
        raise UserError(f'init_from=hf:{folder}: no such folder')
    try:
        config = json.loads(files.read_text(folder / 'config.json'))
    except ValueError:
        raise UserError(f'{folder / "config.json"} is not JSON') from None
    arch = config.get('model_type') if isinstance(config, dict) else None
    if arch not in DEFAULTS:
        raise UserError(f'hf:{folder} holds a {arch!r} model (config.json model_type); '
                        f'init_from=hf: takes GPT-2 (gpt2) and OpenAI GPT (openai-gpt)')
    c = {**DEFAULTS[arch], **{k: v for k, v in config.items() if k in DEFAULTS[arch] and v is not None}}

    # **What our GPT can compute.**
    for key, value in FIXED[arch]:
        if c[key] != value:
            raise UserError(f'hf:{folder}: config.json has {key}={c[key]!r}, and our GPT computes only {key}={value!r}')
    act_key = 'activation_function' if arch == GPT2 else 'afn'
    if c[act_key] not in READ_ACTIVATIONS[arch]:
        raise UserError(f'hf:{folder}: config.json has {act_key}={c[act_key]!r}; our GPT has '
                        f'{", ".join(READ_ACTIVATIONS[arch])}')
    sizes = ('vocab_size', 'n_positions', 'n_embd', 'n_layer', 'n_head')
    if not all(isinstance(c[k], int) and c[k] > 0 for k in sizes) or c['n_embd'] % c['n_head']:
        raise UserError(f'hf:{folder}: config.json has sizes our GPT cannot take: '
                        f'{", ".join(f"{k}={c[k]!r}" for k in sizes)}')
    d, n_positions = c['n_embd'], c['n_positions']
    if seq_len is not None and not 1 <= seq_len <= n_positions:
        raise UserError(f'seq_len={seq_len}: hf:{folder} has {n_positions} positions')
    seq_len = seq_len or n_positions

    tokenizer = _our_tokenizer(folder)
    if tokenizer.n_tokens != c['vocab_size']:
        raise UserError(f'hf:{folder}: its tokenizer has {tokenizer.n_tokens} tokens and its model '
                        f'vocab_size={c["vocab_size"]}')
    tied = bool(c['tie_word_embeddings'])
    shape = {'transformer.d_model': d, 'transformer.n_heads': c['n_head'], 'transformer.n_layers': c['n_layer'],
             'transformer.ffn.d_ff': c.get('n_inner') or 4 * d,
             'transformer.ffn.activation': READ_ACTIVATIONS[arch][c[act_key]],
             'transformer.ffn.is_gated': False, 'transformer.ffn.bias1': True, 'transformer.ffn.bias2': True,
             'transformer.encoder_layer': 'post_ln' if arch == OPENAI_GPT else 'default',
             'transformer.src_embed': 'learned_pos', 'tie_embeddings': tied, 'generator_bias': False,
             'tokenizer': 'character' if isinstance(tokenizer, tokenizers.CharacterTokenizer) else 'bpe',
             'seq_len': seq_len}

    try:
        weights = _our_weights(_read_weights(folder), arch, c['n_layer'], d, seq_len, tied)
    except RuntimeError as e:  # a tensor of another shape than config.json says
        raise UserError(f'hf:{folder}: the weights do not fit its config.json ({checkpoints.detail(e)})') from None
    return Source(folder, shape, tokenizer, weights)


def _our_weights(hf: Dict[str, torch.Tensor], arch: str, n_layers: int, d: int, seq_len: int,
                 tied: bool) -> Dict[str, torch.Tensor]:
    """HF's weights under our names: `export`, the other way round."""
    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise UserError(f'the HF weights have no {name}')
        return hf[name]

    ours = {}
    for i in range(n_layers):
        prefix, layer = f'transformer.h.{i}', f'encoder.layers.{i}'
        # `c_attn`'s `[d, 3d]` is the query's, the key's and the value's `Conv1D` weights side by side.
        weights = take(f'{prefix}.attn.c_attn.weight').t().reshape(3, d, d)
        biases = take(f'{prefix}.attn.c_attn.bias').reshape(3, d)
        for j, name in enumerate(('query', 'key', 'value')):
            ours[f'{layer}.self_attn.{name}.linear.weight'], ours[f'{layer}.self_attn.{name}.linear.bias'] = \
                weights[j], biases[j]
        for our_name, theirs, conv in LAYER:
            weight = take(f'{prefix}.{theirs}.weight')
            ours[f'{layer}.{our_name}.weight'] = weight.t() if conv else weight
            ours[f'{layer}.{our_name}.bias'] = take(f'{prefix}.{theirs}.bias')
    # labml_nn scales the table by $\sqrt{d_{model}}$: it holds HF's divided by that.
    scale = math.sqrt(d)
    table = take(f'transformer.{TOKENS[arch]}.weight') / scale
    ours['src_embed.linear.weight'] = table
    ours['src_embed.positional_encodings'] = take(f'transformer.{POSITIONS[arch]}.weight')[:seq_len].unsqueeze(1)
    # The LayerNorm that makes $h$: GPT-2's final one, or OpenAI GPT's last `ln_2`.
    final = f'encoder.layers.{n_layers - 1}.norm_ff' if arch == OPENAI_GPT else 'encoder.norm'
    if arch == GPT2:
        ours['encoder.norm.weight'], ours['encoder.norm.bias'] = take('transformer.ln_f.weight'), \
            take('transformer.ln_f.bias')
    if tied:
        # Our tied head reads the unscaled table: scale $h$ up to match.
        ours[f'{final}.weight'], ours[f'{final}.bias'] = ours[f'{final}.weight'] * scale, ours[f'{final}.bias'] * scale
    ours['generator.projection.weight'] = table if tied else take('lm_head.weight')
    return {k: v.contiguous() for k, v in ours.items()}

