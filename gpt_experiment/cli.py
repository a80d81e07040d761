"""
# Command line

`python -m gpt_experiment.main [PRESET.yaml ...] [key=value ...]` builds one dictionary of
overrides for labml's `experiment.configs(conf, overrides)`: presets first, then `key=value`
arguments, later ones winning.

Nothing here is a second configuration system: the keys, their types, defaults and options
are read from the labml `Configs` classes themselves (including nested ones such as
`transformer.ffn`), and values are only *parsed* to the declared type before labml gets them.
An unknown key, a value of the wrong type or an option that is not registered is a
`UserError` with a suggestion, never a traceback.
"""

import difflib
import inspect
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional

import yaml

from labml.configs import BaseConfigs

from . import labml_glue
from .errors import UserError


class Key(NamedTuple):
    """A config key as labml declares it."""
    type: Any
    default: Any
    options: List[str]


def _sub_configs(value_type, default, options) -> Optional[type]:
    """The configs class a key expands into (`transformer.*`, `optimizer.*`, `device.*`), if any."""
    if isinstance(default, BaseConfigs):
        return type(default)
    if inspect.isclass(value_type) and issubclass(value_type, BaseConfigs):
        return value_type
    # An option (such as `optimizer`'s) that declares it returns configs.
    chosen = options.get(default) or next(iter(options.values()), None)
    returns = typing.get_type_hints(chosen.func).get('return') if chosen is not None else None
    if inspect.isclass(returns) and issubclass(returns, BaseConfigs):
        return returns
    return None


def config_keys(configs_class: type, prefix: str = '') -> Dict[str, Key]:
    """Every key that can be overridden, with dotted names for nested configs."""
    types, defaults, options, aggregates = labml_glue.configs_registry(configs_class())
    keys = {}
    for name, value_type in types.items():
        default = defaults.get(name)
        opts = list(options.get(name, {})) + sorted(aggregates.get(name, ()))
        keys[prefix + name] = Key(value_type, default, opts)
        sub = _sub_configs(value_type, default, options.get(name, {}))
        if sub is not None:
            keys.update(config_keys(sub, f'{prefix}{name}.'))
    return keys


_TRUE = {'true', 'yes', 'on', '1'}
_FALSE = {'false', 'no', 'off', '0'}


def _parse(key: str, value: Any, spec: Key):
    """Parse `value` (a string from the command line, or a YAML/Python value) to the key's type."""
    if isinstance(value, str) and value in spec.options:
        return value
    t = spec.type
    try:
        if t is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if t is int:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if isinstance(value, str) and not value.lstrip('+-').isdigit() else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        if t is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if t is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
        if typing.get_origin(t) is tuple:
            items = yaml.safe_load(value) if isinstance(value, str) else value
            item_types = typing.get_args(t)
            if not isinstance(items, (list, tuple)) or len(items) != len(item_types):
                raise ValueError
            return tuple(_parse(key, v, Key(it, None, [])) for v, it in zip(items, item_types))
    except (ValueError, TypeError, yaml.YAMLError):
        raise UserError(f'{key} expects {_type_name(t)}, got {value!r}') from None
    if spec.options:
        raise UserError(f'{key}={value!r} is not a registered option; choose one of: {", ".join(spec.options)}')
    raise UserError(f'{key} is computed and cannot be set')


def _type_name(t) -> str:
    return getattr(t, '__name__', None) or str(t).replace('typing.', '')


def suggest(key: str, keys: Iterable[str]) -> str:
    """`'; did you mean ...?'` for the closest known key, or nothing."""
    keys = list(keys)
    tail = key.rsplit('.', 1)[-1]

    def score(k: str) -> float:
        # The best of the whole name and the last part alone (`n_layers` -> `transformer.n_layers`),
        # a little ahead when the last parts agree exactly.
        whole = difflib.SequenceMatcher(None, key, k).ratio()
        part = difflib.SequenceMatcher(None, tail, k.rsplit('.', 1)[-1]).ratio()
        return max(whole, part + (0.1 if part == 1 else 0))

    best = max(keys, key=score, default=None)
    return f"; did you mean '{best}'?" if best is not None and score(best) >= 0.6 else ''


def _flatten(d: Dict, prefix: str = '') -> Dict[str, Any]:
    """`{'transformer': {'n_layers': 2}}` -> `{'transformer.n_layers': 2}`."""
    out = {}
    for k, v in d.items():
        if not isinstance(k, str):
            raise UserError(f'config keys must be strings, got {k!r}')
        if isinstance(v, dict):
            out.update(_flatten(v, f'{prefix}{k}.'))
        else:
            out[prefix + k] = v
    return out


def check_overrides(configs_class: type, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """
    Validate a dictionary of overrides against the declared keys and parse every value to its
    type. `text=<path>` (a path rather than a registered option) becomes `text=file` with
    `text_file=<path>`, and likewise for `valid_text`.
    """
    keys = config_keys(configs_class)
    checked = {}
    for key, value in _flatten(overrides).items():
        if key in ('text', 'valid_text') and isinstance(value, str) and value not in keys['text'].options:
            if key == 'text':
                checked['text'] = 'file'
            key = f'{key}_file'
        if key not in keys:
            raise UserError(f"unknown config key '{key}'{suggest(key, keys)}")
        checked[key] = _parse(key, value, keys[key])
    return checked


def load_yaml(path: str) -> Dict[str, Any]:
    """A preset: a YAML mapping of config keys to values."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f'config file not found: {path}')
    try:
        values = yaml.safe_load(p.read_text(encoding='utf-8'))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        detail = ' '.join(str(e).split())
        raise UserError(f'{path} is not valid YAML: {detail}') from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f'{path} must be a mapping of config keys to values, not a {type(values).__name__}')
    return _flatten(values)


def overrides_from_args(items: List[str]) -> Dict[str, Any]:
    """Presets and `key=value` arguments, in order, into one dictionary (later wins)."""
    overrides = {}
    for item in items:
        if '=' in item:
            key, value = item.split('=', 1)
            if not key:
                raise UserError(f'missing key in {item!r}; write key=value')
            overrides[key] = value
        elif item.endswith(('.yaml', '.yml')) or Path(item).is_file():
            overrides.update(load_yaml(item))
        else:
            raise UserError(f'{item!r} is neither a YAML preset nor key=value')
    return overrides


def _settable(spec: Key) -> bool:
    return bool(spec.options) or spec.type in (bool, int, float, str) or typing.get_origin(spec.type) is tuple


def describe(configs_class: type) -> str:
    """The `--help` listing: every settable key with its type, default and registered options."""
    lines = []
    for key, spec in sorted(config_keys(configs_class).items()):
        if not _settable(spec):
            continue
        default = spec.default if spec.default is not None else (spec.options[0] if spec.options else '(computed)')
        if isinstance(default, BaseConfigs):
            default = '(configs)'
        line = f'  {key:<40} {_type_name(spec.type):<18} default: {default}'
        if spec.options:
            line += f'   options: {", ".join(spec.options)}'
        lines.append(line)
    return '\n'.join(lines)
