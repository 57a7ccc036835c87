"""Retrieval quality from a run and its relevance labels, computed by ir-measures.

ir-measures (pinned in requirements.txt) names measures in one standard notation and
computes nDCG, RR and recall with pytrec_eval, the Python binding of TREC's own
``trec_eval``: the figures are the ones published IR results are computed with.
Relevance grades count as gains for nDCG; any grade above zero is relevant for RR and recall.
"""

from __future__ import annotations

import ir_measures
from ir_measures import RR, R, nDCG

#: Reported name -> ir-measures measure. MRR@10 is ir-measures' RR@10 averaged over queries.
MEASURES = {"nDCG@10": nDCG @ 10, "MRR@10": RR @ 10, "R@1": R @ 1, "R@10": R @ 10, "R@100": R @ 100}


def compute(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each measure of :data:`MEASURES`, averaged over the queries of ``qrels``.

    A labelled query the run did not answer scores zero instead of being left out,
    which would raise the average.
    """
    full = {qid: run.get(qid, {}) for qid in qrels}
    per_query: dict[str, dict[str, float]] = {name: {} for name in MEASURES}
    names = {measure: name for name, measure in MEASURES.items()}
    for metric in ir_measures.iter_calc(list(MEASURES.values()), qrels, full):
        per_query[names[metric.measure]][metric.query_id] = float(metric.value)
    return {name: sum(values.get(q, 0.0) for q in qrels) / len(qrels) for name, values in per_query.items()}
