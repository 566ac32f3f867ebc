"""``SanityChecks``: do the maps depend on the trained weights? Adebayo et al.'s test during validation.

Adebayo et al. 2018, "Sanity Checks for Saliency Maps" (NeurIPS), Sec. 3: the cascading
model-parameter randomization test. On the chosen validation epochs the callback takes a fixed,
seeded set of validation queries (``num_samples``, chosen once among the probes of the task's
reference provider and kept in ``state_dict``, as
:class:`~callbacks.localization_metrics.LocalizationMetrics` does), finds each one's reference with
the provider (:mod:`cama.references`: the top-ranked gallery image under the re-ID protocol, the
nearest other image for retrieval) ranked with the embeddings of the model's own validation loop,
and runs :func:`cama.explain.sanity_check`: the model's blocks (``randomization_blocks()``,
:class:`cama.protocols.HasRandomizationBlocks`, top first: e.g. ``head``, ``conv5`` .. ``conv1``)
are re-initialised cumulatively, and after each step every method's map of every query is compared
with the trained model's map. Afterwards the model is exactly the trained one again (every parameter
and buffer, every train/eval flag).

The maps compared (:func:`sanity_maps`) are the summed map over the branches on the query image, at
image size: for the forward-only methods the **raw, signed** map (bilinearly upsampled, no ReLU, no
min-max), so the signed and the absolute Spearman correlation differ as in the paper; for the
layer methods (gradient and gradient-free) their ``[0, 1]`` maps. The references are the trained
model's; their embeddings are recomputed by the randomized model at every step (Dist-CAM, FAM and
the layer methods are explained against the reference, RAM is the query's own ``R_q^q``).

Logged (``prefix="sanity"``, :class:`~callbacks.score_logging.ScoreLogger`), per method and per
step (named by the lowest block randomized so far):
``sanity/<method>/spearman_<block>`` (signed maps), ``sanity/<method>/spearman_abs_<block>`` and
``sanity/<method>/ssim_<block>`` (absolute maps). A method passes when these fall towards 0 as more
blocks are randomized; one that stays near 1 does not explain the model.

**Max-sensitivity** (Yeh et al. 2019, ``SENS_MAX``; :func:`cama.explain.max_sensitivity`): with
the trained model, before the randomization, each query is perturbed ``sensitivity_samples`` times by
uniform noise in the L-inf ball of radius ``sensitivity_radius`` on the ``[0, 1]`` picture scale (the
data module's ``std``, :class:`cama.protocols.ShowsImages`; else in the input's units), each method's
map of the perturbed query is computed as above against the same fixed reference embedding, and the
largest Frobenius change of the map relative to the unperturbed map's norm is kept. Logged per method
as the mean over the queries with its 95% interval (:class:`cama.metrics.MaxSensitivity`):
``sanity/<method>/max_sensitivity`` and ``sanity/<method>/max_sensitivity_ci95``. Lower is more
robust; Dist-CAM's inverse-distance weights are expected to be ill-conditioned
(docs/explanations.md#max-sensitivity). The noise comes from a generator seeded with ``seed``: the
same queries and weights give the same numbers.

Cost per run: one forward of the queries and their references before and after each of the
blocks' steps, and every method's maps each time; for the max-sensitivity, one pass of every
method on ``sensitivity_samples`` perturbed copies of each query (``sensitivity_samples=0``: none):
off by default (``every_n_epochs=0``). Every process runs the same check on the same queries (no
collective but the gallery gathering). The sanity-check epoch of the trainer is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from callbacks.base import (
    EpochSchedule,
    OnceWarnings,
    RankingProbes,
    cpu_threads,
    joint_state,
    load_items,
    load_joint_state,
)
from callbacks.score_logging import ScoreLogger
from cama.explain import SanityCheckResult, check_layer_norm, max_sensitivity, sanity_check
from cama.metrics import MaxSensitivity
from cama.protocols import HasRandomizationBlocks, ShowsImages
from cama.viz import LAYER_METHODS, Features, ModelExplainer, ProbeAgainst, check_methods

__all__ = ["SanityChecks", "maps_against", "sanity_maps"]


def sanity_maps(
    model: nn.Module,
    images: Tensor,
    references: Tensor,
    methods: Sequence[str],
    gradient_layers: Sequence[str] | None = None,
    truncation: float | None = None,
    truncation_per_channel: bool = False,
    layer_norm: str = "minmax",
) -> dict[str, Tensor]:
    """Each method's summed map ``[B, H, W]`` of ``images`` against ``references`` (one per image),
    both forwarded through ``model`` as it is now (module docstring: raw signed maps for the
    forward-only methods, ``[0, 1]`` maps for the layer methods)."""
    explainer = ModelExplainer(model, gradient_layers, truncation, truncation_per_channel, layer_norm)
    count = images.shape[0]
    features = explainer.features(torch.cat([images, references.to(images.dtype)]))
    return maps_against(explainer, features.select(range(count)), features.embedding[count:], methods)


def maps_against(
    explainer: ModelExplainer, queries: Features, reference_embeddings: Tensor, methods: Sequence[str]
) -> dict[str, Tensor]:
    """Each method's summed map ``[B, H, W]`` (at the queries' image size) of ``queries``
    (:meth:`ModelExplainer.features`) against ``reference_embeddings`` ``[B, D]``, one per query: the
    maps of :func:`sanity_maps`."""
    size = tuple(queries.images.shape[-2:])
    target = ProbeAgainst(reference_embeddings)
    maps: dict[str, Tensor] = {}
    for method in methods:
        if method in LAYER_METHODS:
            maps[method] = explainer.explain(method, queries, target, branches=False)[:, 0]
            continue
        raw = explainer.raw_maps(method, queries, target).sum(dim=1, keepdim=True)
        maps[method] = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)[:, 0]
    return maps


class SanityChecks(Callback):
    """Cascading model-parameter randomization of the explanation maps (module docstring).

    Args:
        methods: explanation methods to check (:mod:`cama.viz.model_explainer`).
        every_n_epochs: run on every n-th validation epoch (the first one included); 0 (the
            default) never runs.
        num_samples: queries checked (a fixed subset).
        seed: seed of the subset (a private generator) and of the re-initialisation.
        gradient_layers, truncation, truncation_per_channel, layer_norm: the gradient methods'
            options (:class:`cama.viz.ModelExplainer`).
        sensitivity_radius: the L-inf radius of the max-sensitivity's noise, on the ``[0, 1]``
            picture scale (module docstring), ``>= 0``.
        sensitivity_samples: its Monte-Carlo samples per query; 0 turns it off.
        sensitivity_chunk_size: most perturbed queries explained at once (bounds the memory).
        prefix: logged names start with it.
        cpu_threads: intra-op threads for the callback's own work on CPU; ``None`` keeps torch's.
    """

    def __init__(
        self,
        methods: Sequence[str] = ("dist_cam", "ram", "fam"),
        every_n_epochs: int = 0,
        num_samples: int = 16,
        seed: int = 0,
        gradient_layers: list[str] | None = None,
        truncation: float | None = None,
        truncation_per_channel: bool = False,
        layer_norm: str = "minmax",
        sensitivity_radius: float = 0.02,
        sensitivity_samples: int = 8,
        sensitivity_chunk_size: int = 64,
        prefix: str = "sanity",
        cpu_threads: int | None = 1,
    ) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0 (0: off), got {every_n_epochs}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not (0 <= sensitivity_radius < float("inf")):
            raise ValueError(f"sensitivity_radius must be a finite number >= 0, got {sensitivity_radius}")
        if sensitivity_samples < 0:
            raise ValueError(f"sensitivity_samples must be >= 0 (0: off), got {sensitivity_samples}")
        if sensitivity_chunk_size < 1:
            raise ValueError(f"sensitivity_chunk_size must be >= 1, got {sensitivity_chunk_size}")
        self.methods = check_methods(methods)
        self.seed = int(seed)
        self.gradient_layers = gradient_layers
        self.truncation = truncation
        self.truncation_per_channel = truncation_per_channel
        self.layer_norm = check_layer_norm(layer_norm)
        self.sensitivity_radius = float(sensitivity_radius)
        self.sensitivity_samples = int(sensitivity_samples)
        self.sensitivity_chunk_size = int(sensitivity_chunk_size)
        self.prefix = prefix.rstrip("/")
        self.cpu_threads = cpu_threads
        self.schedule = EpochSchedule(every_n_epochs)  # 0: never due (the epochs are still counted)
        self.probes = RankingProbes(num_samples, self.seed)
        self.score_logger = ScoreLogger(self.prefix)
        self.warnings = OnceWarnings(type(self).__name__)
        self.last_result: SanityCheckResult | None = None
        self.last_results: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def state_dict(self) -> dict[str, Any]:
        return joint_state(self.schedule, self.probes)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_joint_state(state_dict, self.schedule, self.probes)

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.schedule.end_epoch(trainer):
            return
        if not isinstance(pl_module, HasRandomizationBlocks):
            self.warnings.warn(
                f"{type(pl_module).__name__} does not list its blocks (`randomization_blocks()`, "
                "cama.protocols.HasRandomizationBlocks); nothing is logged"
            )
            return
        inputs = self.probes.epoch_inputs(trainer, pl_module, self.warnings.warn)  # collective: every rank
        if inputs is None:
            return
        datamodule = trainer.datamodule
        std = datamodule.std if isinstance(datamodule, ShowsImages) else None
        with cpu_threads(self.cpu_threads, pl_module.device):
            pairs = self.queries(pl_module, *inputs)
            if pairs is None:
                return
            sensitivity = self.sensitivity(pl_module, *pairs, std)
            result = self.check(pl_module, *pairs)
        self.last_result = result
        self.last_results = {**result.scalars(self.prefix), **sensitivity}
        device = pl_module.device
        scores = {name: torch.tensor(value, device=device) for name, value in self.last_results.items()}
        self.score_logger.log(trainer, pl_module, scores)

    # ------------------------------------------------------------------ the check
    def queries(
        self, pl_module: pl.LightningModule, provider: Any, gallery: Any
    ) -> tuple[Tensor, Tensor] | None:
        """This epoch's query images that have a reference and their references' images (``provider``
        and ``gallery`` from :meth:`RankingProbes.epoch_inputs`); None when no query has one."""
        device = pl_module.device
        samples = self.probes.choose(provider, self.warnings.warn)
        if not samples:
            self.warnings.warn("no query has a true match in the gallery; nothing is logged")
            return None
        dataset = self.probes.dataset
        images = load_items(dataset, samples, device)["image"]
        embeddings = ModelExplainer(pl_module).features(images).embedding
        references, _ = provider.rank(gallery.to(device), embeddings, torch.tensor(samples, device=device), 1)
        found = references[:, 0] >= 0
        if not bool(found.any()):
            self.warnings.warn("no query has a reference in this epoch's gallery; nothing is logged")
            return None
        reference_images = load_items(dataset, references[found, 0].tolist(), device)["image"]
        return images[found], reference_images

    def check(self, pl_module: pl.LightningModule, images: Tensor, references: Tensor) -> SanityCheckResult:
        """The randomization test of ``images`` against ``references`` (:meth:`queries`); ``pl_module``
        is exactly as before afterwards."""
        names, blocks = zip(*pl_module.randomization_blocks())

        def explain(model: nn.Module, queries: Tensor) -> dict[str, Tensor]:
            return sanity_maps(
                model, queries, references, self.methods,
                self.gradient_layers, self.truncation, self.truncation_per_channel, self.layer_norm,
            )

        return sanity_check(explain, pl_module, list(blocks), list(names), images, seed=self.seed)

    def sensitivity(
        self, pl_module: pl.LightningModule, images: Tensor, references: Tensor, std: Sequence[float] | None
    ) -> dict[str, float]:
        """``{"<prefix>/<method>/max_sensitivity[_ci95]": value}`` of ``images`` against ``references``
        (module docstring); empty with ``sensitivity_samples=0``."""
        if self.sensitivity_samples == 0:
            return {}
        explainer = ModelExplainer(
            pl_module, self.gradient_layers, self.truncation, self.truncation_per_channel, self.layer_norm
        )
        reference_embeddings = explainer.features(references).embedding

        def explain(perturbed: Tensor, rows: Tensor) -> dict[str, Tensor]:
            features = explainer.features(perturbed)
            return maps_against(explainer, features, reference_embeddings[rows], self.methods)

        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        values = max_sensitivity(
            explain, images, self.sensitivity_radius, self.sensitivity_samples, generator, std=std,
            chunk_size=self.sensitivity_chunk_size,
        )
        out: dict[str, float] = {}
        for method, sensitivities in values.items():
            # every process checks the same queries: no sum over the processes
            metric = MaxSensitivity(sync_on_compute=False).to(images.device)
            metric.update(sensitivities)
            out.update({f"{self.prefix}/{method}/{name}": float(v) for name, v in metric.compute().items()})
        return out
