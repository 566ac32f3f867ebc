"""Split rules of the real data sets that both their loaders and the synthetic layout writers follow
(no imports: the generator package and the data modules can both use them without importing each other).

>>> [cub_few_shot_split(i) for i in range(8)]
['train', 'val', 'train', 'test', 'train', 'val', 'train', 'test']
"""

from __future__ import annotations

__all__ = ["cub_few_shot_split"]


def cub_few_shot_split(class_position: int) -> str:
    """Chen et al.'s few-shot split of CUB-200-2011's ``i``-th class (by position in ``classes.txt``):
    ``i % 2 == 0`` train, ``i % 4 == 1`` val, ``i % 4 == 3`` test (100 / 50 / 50 classes)."""
    if class_position % 2 == 0:
        return "train"
    return "val" if class_position % 4 == 1 else "test"
