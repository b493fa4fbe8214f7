"""ImageNet-pretrained backbones: torchvision state dicts → HashNet variables.

HashNet fine-tunes an ImageNet-pretrained AlexNet or ResNet-50. This module reads such weights
from a local file with torchvision's parameter names (`features.0.weight` [64, 3, 11, 11],
`classifier.1.weight` [4096, 9216], `conv1.weight`, `bn1.running_mean`,
`layer1.0.downsample.0.weight`, ...) — an `.npz` (always) or a `.safetensors` file (when the
`safetensors` package is installed) — and writes them into the variables of
`HashNet(backbone=...)` (params['backbone'], batch_stats['backbone']); the hash layer keeps
its initialisation. The classification head (`classifier.6.*`, `fc.*`) and
`*.num_batches_tracked` are ignored.

Layouts: conv [O, I, H, W] → flax [H, W, I, O]; linear [O, I] → [I, O]; BatchNorm weight →
scale, bias → bias, running_mean → mean, running_var → var. The flax AlexNet flattens in NCHW
order like torchvision, so `classifier.1.weight` needs only the transpose.

Use:

  python -m hashjax.commands.pretrained alexnet-owt-7be5be79.pth alexnet.npz   # needs torch

  state = step.create_train_state(cfg, (224, 224, 3), rng)
  variables = load_pretrained(state.variables(), 'alexnet.npz', 'alexnet')
  state = state.replace(params=variables['params'],
                        batch_stats=variables.get('batch_stats', state.batch_stats))

The optimizer state built by `create_train_state` does not depend on parameter values (SGD
momentum and Adam moments start at zero), so replacing params afterwards is sound.
torchvision's weights expect inputs normalised with the ImageNet mean/std on [0, 1]; hashjax
feeds [−1, 1], which fine-tuning absorbs (an input-normalisation option would match exactly).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from hashjax.runtime.errors import PretrainedError

BACKBONES = ('alexnet', 'resnet18', 'resnet50')
_ALEXNET_CONVS = ('features.0', 'features.3', 'features.6', 'features.8', 'features.10')
_ALEXNET_FCS = ('classifier.1', 'classifier.4')
_RESNET_STAGES = {'resnet18': (2, 2, 2, 2), 'resnet50': (3, 4, 6, 3)}
_IGNORED_PREFIXES = ('classifier.6.', 'fc.')


# A mapping entry: torch name → (collection, path inside HashNet variables, torch → flax).
Entry = tuple[str, tuple[str, ...], Callable[[np.ndarray], np.ndarray]]


def _conv(a):
  return np.transpose(a, (2, 3, 1, 0))


def _linear(a):
  return np.transpose(a)


def _same(a):
  return a


def _conv_entries(torch_prefix: str, flax_path: tuple[str, ...], bias: bool) -> dict[str, Entry]:
  out = {f'{torch_prefix}.weight': ('params', flax_path + ('kernel',), _conv)}
  if bias:
    out[f'{torch_prefix}.bias'] = ('params', flax_path + ('bias',), _same)
  return out


def _bn_entries(torch_prefix: str, flax_path: tuple[str, ...]) -> dict[str, Entry]:
  return {f'{torch_prefix}.weight': ('params', flax_path + ('scale',), _same),
          f'{torch_prefix}.bias': ('params', flax_path + ('bias',), _same),
          f'{torch_prefix}.running_mean': ('batch_stats', flax_path + ('mean',), _same),
          f'{torch_prefix}.running_var': ('batch_stats', flax_path + ('var',), _same)}


def torch_mapping(backbone: str) -> dict[str, Entry]:
  """torchvision name → (collection, path in HashNet variables, transform) for `backbone`."""
  root = ('backbone',)
  out: dict[str, Entry] = {}
  if backbone == 'alexnet':
    for i, name in enumerate(_ALEXNET_CONVS):
      out.update(_conv_entries(name, root + (f'Conv_{i}',), bias=True))
    for i, name in enumerate(_ALEXNET_FCS):
      out[f'{name}.weight'] = ('params', root + (f'Dense_{i}', 'kernel'), _linear)
      out[f'{name}.bias'] = ('params', root + (f'Dense_{i}', 'bias'), _same)
    return out
  if backbone not in _RESNET_STAGES:
    raise PretrainedError(f'no pretrained mapping for backbone {backbone!r}; accepted: '
                          f'{", ".join(BACKBONES)}')
  out.update(_conv_entries('conv1', root + ('conv1',), bias=False))
  out.update(_bn_entries('bn1', root + ('bn1',)))
  convs = 3 if backbone == 'resnet50' else 2
  for stage, blocks in enumerate(_RESNET_STAGES[backbone]):
    for b in range(blocks):
      t, f = f'layer{stage + 1}.{b}', root + (f'layer{stage + 1}_{b}',)
      for c in range(convs):
        out.update(_conv_entries(f'{t}.conv{c + 1}', f + (f'Conv_{c}',), bias=False))
        out.update(_bn_entries(f'{t}.bn{c + 1}', f + (f'BatchNorm_{c}',)))
      if b == 0 and (stage > 0 or backbone == 'resnet50'):  # where the shape changes
        out.update(_conv_entries(f'{t}.downsample.0', f + ('downsample_conv',), bias=False))
        out.update(_bn_entries(f'{t}.downsample.1', f + ('downsample_bn',)))
  return out


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path, value) -> dict:
  """A copy of nested dict `tree` with `path` set to `value` (other branches shared)."""
  head, *rest = path
  out = dict(tree)
  out[head] = _set(tree[head], rest, value) if rest else value
  return out


def to_torch_state_dict(variables: dict[str, Any], backbone: str) -> dict[str, np.ndarray]:
  """The backbone of HashNet `variables` as a torchvision-named state dict (numpy, torch
  layouts); the inverse of `load_pretrained` (used for tests and exports)."""
  out = {}
  for name, (collection, path, _) in torch_mapping(backbone).items():
    value = np.asarray(_get(variables[collection], path))
    if value.ndim == 4:
      value = np.transpose(value, (3, 2, 0, 1))
    elif value.ndim == 2:
      value = value.T
    out[name] = value
  return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Arrays of an `.npz` or `.safetensors` file, keyed by name."""
  if not os.path.isfile(path):
    raise PretrainedError(f'weight file {path!r} does not exist')
  if path.endswith('.safetensors'):
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise PretrainedError(f'{path!r} is a .safetensors file: `pip install safetensors`, or '
                            'convert it to .npz') from None
    return dict(load_file(path))
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    raise PretrainedError(f'{path!r} is not a readable .npz file ({e})') from None


def load_pretrained(variables: dict[str, Any], weights, backbone: str) -> dict[str, Any]:
  """HashNet `variables` with the backbone replaced by torchvision-named weights.

  Args:
    variables: {'params': ..., 'batch_stats': ...} of `HashNet(backbone=backbone)` (e.g.
      `state.variables()`); not modified.
    weights: a path (.npz / .safetensors) or a dict name → array with torchvision's names.
    backbone: 'alexnet', 'resnet18' or 'resnet50'.

  Returns:
    New variables (same structure, float32 weights). Raises `PretrainedError` naming the
    first missing, unexpected or wrongly shaped key.
  """
  state = read_state_dict(weights) if isinstance(weights, (str, os.PathLike)) else dict(weights)
  mapping = torch_mapping(backbone)
  unexpected = sorted(k for k in state if k not in mapping and not k.endswith(
      '.num_batches_tracked') and not k.startswith(_IGNORED_PREFIXES))
  if unexpected:
    raise PretrainedError(f'unexpected key {unexpected[0]!r} for backbone {backbone!r} '
                          f'({len(unexpected)} in all); is this a torchvision {backbone}?')
  out = {k: v for k, v in variables.items()}
  for name, (collection, path, transform) in mapping.items():
    if name not in state:
      raise PretrainedError(f'missing key {name!r} for backbone {backbone!r}')
    if collection not in out:
      raise PretrainedError(f'variables lack the {collection!r} collection needed for {name!r}')
    target = np.asarray(_get(out[collection], path))
    value = transform(np.asarray(state[name], np.float32))
    if value.shape != target.shape:
      raise PretrainedError(f'key {name!r} has shape {tuple(np.shape(state[name]))}, which '
                            f'gives {value.shape} but {backbone} needs {target.shape} at '
                            f'{collection}/{"/".join(path)}')
    out[collection] = _set(out[collection], path, value.astype(target.dtype))
  return out


def convert_torch(src: str, dst: str) -> int:
  """A torch checkpoint (.pth: a state dict, {'state_dict': ...}, or a module) → .npz;
  returns the number of arrays written."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise PretrainedError('converting a .pth file needs PyTorch: `pip install torch` '
                          '(CPU build is enough)') from None
  obj = torch.load(src, map_location='cpu', weights_only=False)
  if hasattr(obj, 'state_dict'):
    obj = obj.state_dict()
  if isinstance(obj, dict) and 'state_dict' in obj:
    obj = obj['state_dict']
  arrays = {k.removeprefix('module.'): v.detach().cpu().numpy() for k, v in obj.items()
            if hasattr(v, 'detach')}
  np.savez(dst, **arrays)
  return len(arrays)
