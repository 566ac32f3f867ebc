"""Split rules of the real data sets that both their loaders and the synthetic layout writers follow
(no imports of the project: the generator package and the data modules can both use them without
importing each other).

>>> [cub_few_shot_split(i) for i in range(8)]
['train', 'val', 'train', 'test', 'train', 'val', 'train', 'test']
>>> msmt17_camera("0000/0000_000_01_0303morning_0015_0.jpg")
1
>>> msmt17_camera("0086_020_14_0303morning_1718_3_ex.jpg"), msmt17_camera("0001_c2_f0046182.jpg")
(14, None)
"""

from __future__ import annotations

import re

__all__ = ["MSMT17_FOLDERS", "MSMT17_LISTS", "cub_few_shot_split", "msmt17_camera"]

#: MSMT17's releases (Wei et al., CVPR 2018): ``MSMT17_<version>/`` holds the training and the test
#: image folder (V2, with blurred faces, names them as torchreid and fast-reid read them) and the lists
MSMT17_FOLDERS: dict[str, tuple[str, str]] = {"V1": ("train", "test"),
                                              "V2": ("mask_train_v2", "mask_test_v2")}
#: the list files, ``(list, folder)``: each line ``<path relative to the folder> <0-based pid>``;
#: folder 0 is the training image folder, 1 the test one. The training set is list_train + list_val.
MSMT17_LISTS: tuple[tuple[str, int], ...] = (("list_train.txt", 0), ("list_val.txt", 0),
                                             ("list_query.txt", 1), ("list_gallery.txt", 1))
_MSMT17_NAME = re.compile(r"^\d+_\d+_(\d+)_")


def msmt17_camera(path: str) -> int | None:
    """The 1-based camera of an MSMT17 image, the third ``_`` field of its file name
    (``<pid>_<index>_<camera>_<date><time>_<frame>_<n>.jpg``); ``None`` if the name does not have it."""
    match = _MSMT17_NAME.match(path.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def cub_few_shot_split(class_position: int) -> str:
    """Chen et al.'s few-shot split of CUB-200-2011's ``i``-th class (by position in ``classes.txt``):
    ``i % 2 == 0`` train, ``i % 4 == 1`` val, ``i % 4 == 3`` test (100 / 50 / 50 classes)."""
    if class_position % 2 == 0:
        return "train"
    return "val" if class_position % 4 == 1 else "test"
