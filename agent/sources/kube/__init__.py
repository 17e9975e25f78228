"""Cluster objects from a live Kubernetes API server: list, then watch, the way kopf does.

Split as kopf splits its clients (``kopf/_cogs/clients``), each module importing only
those above it:

    transport   KubeApi, WatchStream: raw JSON through the kubernetes ApiClient;
                ApiError (the server said no) and Unreachable (no answer)
    resources   what is watched (Resource, the catalogue, the Endpoints/EndpointSlices
                discovery) and what of each object is kept (slim, store_key)
    watching    Watch: the list-then-watch loop of one resource, with its backoff and its
                410 relist; it only yields events (Listed, Upserted, Deleted, Failed,
                Recovered, Restarted) and holds no objects
    source      KubeSource: one store per kind, each fed by its kind's Watch on its own
                thread; the Snapshot, ``error``, notifying the agent

No back-references: a Watch is given what it needs (the API, pacing, a stop flag, sleep,
jitter, a clock) and never sees the source that consumes its events.
"""

from __future__ import annotations

from agent.sources.kube.resources import (
    ENDPOINT_SLICES,
    ENDPOINTS,
    NODES,
    SERVICES,
    Resource,
    StoreKey,
    configmap_resource,
    endpoints_resource,
    slim,
    store_key,
)
from agent.sources.kube.source import Kind, KubeSource
from agent.sources.kube.transport import (
    CONNECT_TIMEOUT,
    REQUEST_TIMEOUT,
    ApiError,
    KubeApi,
    Query,
    Unreachable,
    WatchStream,
    api_client_for,
)
from agent.sources.kube.watching import LIST_PAGE_SIZE, WATCH_TIMEOUT_SECONDS, Backoff, Watch

__all__ = [
    "CONNECT_TIMEOUT",
    "ENDPOINTS",
    "ENDPOINT_SLICES",
    "LIST_PAGE_SIZE",
    "NODES",
    "REQUEST_TIMEOUT",
    "SERVICES",
    "WATCH_TIMEOUT_SECONDS",
    "ApiError",
    "Backoff",
    "Kind",
    "KubeApi",
    "KubeSource",
    "Query",
    "Resource",
    "StoreKey",
    "Unreachable",
    "Watch",
    "WatchStream",
    "api_client_for",
    "configmap_resource",
    "endpoints_resource",
    "slim",
    "store_key",
]
