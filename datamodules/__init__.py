"""LightningDataModules: real on-disk layouts and an embedded synthetic generator with ground truth."""

from .reid import DatasetLayoutError, ReIDDataModule, UnreadableImageError
from .samplers import PKSampler
from .synthetic import PART_NAMES, SyntheticReID, SyntheticReIDConfig, write_reid_folders, write_reid_layout

__all__ = [
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
from .episodes import EpisodeCollate, EpisodeSampler, episode_layout
from .fewshot import FewShotDataModule
from .synthetic_classes import SyntheticClasses, SyntheticClassesConfig, write_classes_layout

__all__ += [
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
