"""The rules that turn per-seed numbers into a claim's ``holds`` (``"yes"`` / ``"partly"`` / ``"no"``).

Every rule reads 95% t-intervals over seeds (:func:`claims_common.mean_ci`):

* :func:`direction` -- a claim that one thing is larger (or smaller) than another: ``yes`` when the
  interval of the per-seed differences lies entirely on the paper's side of 0, ``partly`` when only
  its mean does, ``no`` when the mean is on the other side (or exactly 0);
* :func:`no_change` -- a claim that something barely changes: ``yes`` when the interval of the
  differences lies inside ``+-tolerance``, ``partly`` when only its mean does, ``no`` otherwise;
* :func:`share` -- a claim about how often something happens (e.g. over seeds and methods):
  ``yes`` when always, ``no`` when never, else ``partly``;
* :func:`combine` -- a claim made of several parts: ``yes`` when every part holds, ``no`` when none
  holds even partly, else ``partly``.
"""

from __future__ import annotations

from collections.abc import Sequence

try:  # as a script's neighbour (python bench/claims_x.py) or as bench.claims_rules
    from claims_common import fmt, mean_ci
except ImportError:  # pragma: no cover
    from bench.claims_common import fmt, mean_ci

__all__ = ["direction", "no_change", "share", "combine", "differences", "fmt_difference", "pm", "with_seeds"]


def differences(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-seed ``a - b``."""
    if len(a) != len(b):
        raise ValueError(f"need one value per seed on both sides, got {len(a)} and {len(b)}")
    return [float(x) - float(y) for x, y in zip(a, b)]


def direction(diffs: Sequence[float], sign: int = 1) -> str:
    """``sign=+1``: the paper says the difference is positive; ``-1``: negative (module docstring)."""
    mean, half = mean_ci([sign * float(d) for d in diffs])
    if mean - half > 0:
        return "yes"
    return "partly" if mean > 0 else "no"


def no_change(diffs: Sequence[float], tolerance: float) -> str:
    """The difference stays within ``+-tolerance`` (module docstring)."""
    mean, half = mean_ci(diffs)
    if abs(mean) + half < tolerance:
        return "yes"
    return "partly" if abs(mean) < tolerance else "no"


def share(flags: Sequence[bool]) -> str:
    """``yes`` when every flag is set, ``no`` when none is, else ``partly``."""
    flags = [bool(f) for f in flags]
    if flags and all(flags):
        return "yes"
    return "partly" if any(flags) else "no"


def combine(verdicts: Sequence[str]) -> str:
    """``yes`` when every part is ``yes``, ``no`` when every part is ``no``, else ``partly``."""
    if all(v == "yes" for v in verdicts):
        return "yes"
    return "no" if all(v == "no" for v in verdicts) else "partly"


def fmt_difference(a: Sequence[float], b: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    """``mean +- half-width (n)`` of the per-seed differences ``a - b`` (times ``scale``)."""
    return fmt(differences(a, b), scale, digits)


def pm(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    """``mean +- half-width`` of the 95% t-interval of ``values * scale``, without the seed count (a row
    that quotes several numbers says ``n`` once: :func:`with_seeds`)."""
    mean, half = mean_ci([float(v) * scale for v in values])
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def with_seeds(rows: list[dict[str, str]], seeds: int) -> list[dict[str, str]]:
    """The rows with ``(n=<seeds>)`` after every ``ours``: each figure is a mean over that many seeds."""
    return [{**r, "ours": f"{r['ours']} (n={seeds})"} for r in rows]
