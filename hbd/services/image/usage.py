"""How much space images take, accounted as dockerd does: by layer.

A layer is known by its chain ID (itself and every layer under it), so two
images share a layer only where their stacks agree up to it, and a layer that
several images have is counted once. Sizes are what `docker images` shows (a
layer's uncompressed content), so that `system df` totals, each image's Size
and what a prune reports add up. The guest disk hbd flattens each image into
is a cache of those layers, rebuilt when needed; it is not counted.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from hbd.services.image.model import Image, chain_id


def layer_chains(img: Image) -> dict[str, int]:
    """The image's layers: chain ID -> size of that layer."""
    diff_ids = [layer.diff_id for layer in img.layers]
    return {chain_id(diff_ids[:i + 1]): layer.size for i, layer in enumerate(img.layers)}


def layers_size(images: Iterable[Image]) -> int:
    """All the layers these images have, each counted once (dockerd's LayersSize)."""
    chains: dict[str, int] = {}
    for img in images:
        chains.update(layer_chains(img))
    return sum(chains.values())


def shared_sizes(images: list[Image]) -> dict[str, int]:
    """Per image, the size of its layers that another of `images` has too."""
    refs: collections.Counter[str] = collections.Counter()
    for img in images:
        refs.update(layer_chains(img).keys())
    return {img.id: sum(size for chain, size in layer_chains(img).items() if refs[chain] > 1)
            for img in images}


def unique_size(img: Image, others: Iterable[Image]) -> int:
    """The size of the image's layers that none of `others` has."""
    elsewhere: set[str] = set()
    for other in others:
        if other.id != img.id:
            elsewhere.update(layer_chains(other))
    return sum(size for chain, size in layer_chains(img).items() if chain not in elsewhere)


def freed(before: Iterable[Image], after: Iterable[Image]) -> int:
    """What removing images freed: the layers only the removed ones had."""
    kept: set[str] = set()
    for img in after:
        kept.update(layer_chains(img))
    gone: dict[str, int] = {}
    for img in before:
        gone.update({c: s for c, s in layer_chains(img).items() if c not in kept})
    return sum(gone.values())
