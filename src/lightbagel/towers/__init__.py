"""Pretrained tiny towers shipped with lightbagel, one folder each in `save_pretrained` layout (what a
hub download gives): a card names one in `pretrained:` like a hub id (backbones/loading.py
`resolve_pretrained`). Each is rebuilt by a recipe under recipes/pretrain/ (docs/tiny.md)."""
