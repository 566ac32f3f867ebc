"""Reference providers, embedding sets and predictions files, in process."""

from __future__ import annotations

from pathlib import Path

import torch

from cama.metrics import ReIDRankMetric
from cama.metrics.ranking import EmbeddingSet
from cama.references import RetrievalReferences


def test_retrieval_references_treat_label_minus_one_as_junk_and_accept_an_empty_set():
    labels = torch.tensor([3, -1, 3, -1, 5])
    references = RetrievalReferences(labels)
    assert references.probe_candidates().tolist() == [0, 2]  # -1 never a probe; class 5 alone
    gallery = EmbeddingSet(torch.tensor([[0.0], [0.1], [1.0], [0.2], [0.3]]), labels, torch.arange(5))
    found, _ = references.rank(gallery, gallery.embeddings[:1], torch.tensor([0]), k=4)
    assert found.tolist() == [[4, 2, -1, -1]]  # not itself, not the junk images 1 and 3
    assert RetrievalReferences(torch.zeros(0, dtype=torch.long)).probe_candidates().numel() == 0


def test_embedding_set_is_gathered_once_until_the_next_update():
    metric = ReIDRankMetric()
    metric.update(torch.ones(2, 3), torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([True, False]),
                  torch.tensor([0, 1]))
    first = metric.embedding_set()
    assert metric.embedding_set() is first  # the second callback of the epoch reuses the gather
    metric.update(torch.zeros(1, 3), torch.tensor([3]), torch.tensor([1]), torch.tensor([False]), torch.tensor([2]))
    assert len(metric.embedding_set()) == 3
    metric.reset()
    assert len(metric.embedding_set()) == 0


def test_merged_shares_keep_one_row_per_sample_in_index_order():
    from callbacks.embedding_writer import merge_predictions

    # two processes; DistributedSampler padded the second share with sample 0 again
    first = {"embedding": torch.tensor([[0.0], [2.0]]), "index": torch.tensor([0, 2]), "is_query": torch.tensor([1, 0])}
    second = {"embedding": torch.tensor([[1.0], [9.0]]), "index": torch.tensor([1, 0]), "is_query": torch.tensor([0, 1])}
    merged = merge_predictions([first, second])
    assert merged["index"].tolist() == [0, 1, 2]
    assert merged["embedding"].flatten().tolist() == [0.0, 1.0, 2.0]  # the first copy of sample 0


def test_evaluate_command_names_a_bad_file(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "p.pt"
    torch.save({"embedding": torch.zeros(2, 3)}, bad)
    result = subprocess.run([sys.executable, "evaluate.py", str(bad)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2
    assert str(bad) in result.stderr and "needs ['embedding', 'pid'" in result.stderr
