"""LightningDataModules: real on-disk layouts and an embedded synthetic generator with ground truth.

The synthetic generator writes a real data set's layout, which the real loader then reads as it
would read the data set (the tests and the real-size rehearsal work this way):

>>> import tempfile
>>> from datamodules import ReIDDataModule, write_reid_layout
>>> root = write_reid_layout(tempfile.mkdtemp(), "market1501", seed=0, progress=False,
...                          num_train_ids=4, num_test_ids=3, num_distractors=2, num_junk=1)
>>> sorted(p.name for p in root.iterdir() if p.is_dir())
['bounding_box_test', 'bounding_box_train', 'query']
>>> data = ReIDDataModule(dataset="market1501", root=str(root), image_size=(64, 32), num_workers=0)
>>> data.setup("fit")
>>> data.num_classes, data.eval_dataset.num_query   # 4 training identities, 1 held out; 3 test ones, 2 queries each
(3, 6)
>>> sorted(data.val_identities) == sorted(set(data.val_dataset.pids))   # the validation query + gallery
True

``dataset`` names a layout class in :mod:`datamodules.registry` (:mod:`datamodules.reid_layouts`,
:mod:`datamodules.class_layouts`, or your own, registered or named by its class path); the
generator's options are the nested ``synthetic`` object (:class:`SyntheticReIDOptions`,
:class:`SyntheticClassesOptions`).
"""

from .registry import (
    class_layout, class_layout_names, register_class_layout, register_reid_layout, reid_layout, reid_layout_names,
)
from .reid import DatasetLayoutError, ReIDDataModule, UnreadableImageError
from .reid_layouts import ReIDLayout, SyntheticReIDOptions
from .samplers import PKSampler
from .synthetic import PART_NAMES, SyntheticReID, SyntheticReIDConfig, write_reid_folders, write_reid_layout

__all__ = [
    "register_reid_layout",
    "register_class_layout",
    "reid_layout",
    "class_layout",
    "reid_layout_names",
    "class_layout_names",
    "ReIDLayout",
    "SyntheticReIDOptions",
    "DatasetLayoutError",
    "UnreadableImageError",
    "ReIDDataModule",
    "PKSampler",
    "PART_NAMES",
    "SyntheticReID",
    "SyntheticReIDConfig",
    "write_reid_layout",
    "write_reid_folders",
]
from .class_layouts import ClassLayout, SyntheticClassesOptions
from .episodes import EpisodeCollate, EpisodeSampler, episode_layout
from .fewshot import FewShotDataModule
from .synthetic import SyntheticClasses, SyntheticClassesConfig, write_classes_layout

__all__ += [
    "ClassLayout",
    "SyntheticClassesOptions",
    "EpisodeCollate",
    "EpisodeSampler",
    "episode_layout",
    "FewShotDataModule",
    "SyntheticClasses",
    "SyntheticClassesConfig",
    "write_classes_layout",
]
from .retrieval import MPerClassBatchSampler, RetrievalDataModule

__all__ += ["MPerClassBatchSampler", "RetrievalDataModule"]
from .classification import ClassificationDataModule

__all__ += ["ClassificationDataModule"]
