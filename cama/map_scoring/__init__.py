"""Scoring explanation maps of chosen probes: the work of the scoring callbacks, without Lightning.

* :mod:`cama.map_scoring.sharing` -- which process scores which probe (:func:`probe_owners`,
  :func:`owned_positions`): the first process that kept a probe's maps scores it, the others are dealt
  round-robin, so every probe is scored exactly once over the processes;
* :mod:`cama.map_scoring.features` -- the probes' :class:`~cama.viz.Features` from the maps a
  validation step returned, completed by forwarding the others (:func:`complete_features`), and the
  masked images of AD / IC embedded in one forward (:func:`masked_embeddings`);
* :mod:`cama.map_scoring.curves` -- :class:`CurveOptions`: the deletion / insertion curves of the first
  probes' maps next to a random map's and a centred prior's, and the ranking scores they read;
* :mod:`cama.map_scoring.probes` -- :class:`ProbeScorer`: every method's maps of a set of probes
  against their references, scored into a :class:`~cama.metrics.map_scores.MapScores`;
* :mod:`cama.map_scoring.episodes` -- :class:`EpisodeScorer`: the same for few-shot queries against
  their predicted class's prototype.

Plain modules, tensors and callables in; the callers (the callbacks, the benches) decide when to
score, on which threads, and where the numbers go.
"""

from cama.map_scoring.curves import RANKING_SCORES, CurveOptions, ranking_scores
from cama.map_scoring.episodes import EpisodeScorer
from cama.map_scoring.features import (
    complete_features,
    masked_embeddings,
    stack_captured,
)
from cama.map_scoring.probes import EVIDENCE, ProbeScorer
from cama.map_scoring.sharing import captured_flags, owned_positions, probe_owners

__all__ = [
    "EVIDENCE",
    "RANKING_SCORES",
    "CurveOptions",
    "EpisodeScorer",
    "ProbeScorer",
    "captured_flags",
    "complete_features",
    "masked_embeddings",
    "owned_positions",
    "probe_owners",
    "ranking_scores",
    "stack_captured",
]
