"""Flax linen models: HashNet and its backbones."""

from hashjax.models.backbones import BACKBONES, make_backbone
from hashjax.models.hashnet import HashNet, hash_activation

__all__ = ['BACKBONES', 'HashNet', 'hash_activation', 'make_backbone']
