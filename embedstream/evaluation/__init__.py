"""Retrieval evaluation of served models (`embedstream eval`): datasets, exact search, IR measures, reports.

Public surface: :func:`load` and :func:`sample` (datasets), :func:`search` and the
scorers (exact dense, sparse and MaxSim search), :func:`compute` (nDCG@10, MRR@10,
recall@1/10/100 by ir-measures), and :class:`Options` with :func:`run` (the command).
"""

from embedstream.evaluation.dataset import Dataset, DatasetError, load, sample
from embedstream.evaluation.metrics import MEASURES, compute
from embedstream.evaluation.runner import CandidateError, Options, run
from embedstream.evaluation.scoring import dense_scores, maxsim_scores, search, sparse_scores

__all__ = [
    "MEASURES",
    "CandidateError",
    "Dataset",
    "DatasetError",
    "Options",
    "compute",
    "dense_scores",
    "load",
    "maxsim_scores",
    "run",
    "sample",
    "search",
    "sparse_scores",
]
