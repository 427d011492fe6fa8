"""The democratic filter: one voice per service in a cluster; a box needs several voices or a loud one."""

from __future__ import annotations

import numpy as np

from .runs import run_sizes, run_starts


def one_per_service(clusters: np.ndarray, service_ids: np.ndarray, confidences: np.ndarray) -> np.ndarray:
    """Index of the most confident detection of each (cluster, service), ordered by cluster, then service.

    Same-service extras are dropped rather than turned into instances (the crowd split runs before
    this). A tie goes to the smaller index: the canonical order, so content decides, not answer order.
    """
    order = np.lexsort((np.arange(len(clusters)), -confidences, service_ids, clusters))
    cluster_of, service_of = clusters[order], service_ids[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (cluster_of[1:] != cluster_of[:-1]) | (service_of[1:] != service_of[:-1])
    return order[first]


def elected(
    clusters: np.ndarray, confidences: np.ndarray, min_services: int, single_service_min_confidence: float
) -> np.ndarray:
    """Which rows of the kept detections (one per service, grouped by cluster) belong to a kept cluster.

    A cluster stays when `min_services` distinct services agree on it, whatever their confidence, or
    else when its best confidence reaches `single_service_min_confidence` (the reference's 0.85).
    """
    starts = run_starts(clusters)
    sizes = run_sizes(starts, len(clusters))
    loudest = np.maximum.reduceat(confidences, starts)
    keep = (sizes >= min_services) | (loudest >= single_service_min_confidence)
    return np.repeat(keep, sizes)
