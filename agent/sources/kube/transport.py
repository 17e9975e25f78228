"""Talking to the API server: raw JSON requests and watch streams, and what a failure means.

Requests are raw JSON through the kubernetes client's ``ApiClient`` (its authentication,
TLS and token refresh), not its typed models: client 37 has no models for
discovery.k8s.io/v1beta1 (all that 1.20 serves), the typed watch re-serializes every event,
and the plain dicts are what ``Snapshot`` takes.

Every failure is one of two exceptions, because the callers treat them differently:
``ApiError`` when the server answered with a failure Status (an HTTP error, or an ERROR
event inside a watch), ``Unreachable`` when there was no answer at all (refused, reset,
TLS, timeout, a truncated stream).  Nothing here retries; the caller decides.
"""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import urllib3

from agent.settings import Settings

Query = Sequence[tuple[str, str]]

CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 60.0


class ApiError(Exception):
    """The API server answered with a failure Status (HTTP status or a watch ERROR event)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Unreachable(Exception):
    """No answer: connection refused or reset, TLS failure, timeout, a truncated stream."""


def _status_error(status: int, *, body: bytes, fallback: str) -> ApiError:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, Mapping) and parsed.get("kind") == "Status":
        return ApiError(
            int(parsed.get("code") or status),
            str(parsed.get("reason") or fallback),
            str(parsed.get("message") or ""),
        )
    return ApiError(status, fallback, body[:200].decode("utf-8", errors="replace"))


# Everything that means "the API server did not answer" rather than "it said no".
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError,
    OSError,
    http.client.HTTPException,
)


def _reason(err: BaseException) -> str:
    """The cause of a network failure, without the URL: the same outage gives the same
    text on every retry, so the log says it once (the query varies by timeoutSeconds)."""
    while isinstance(err, urllib3.exceptions.MaxRetryError) and err.reason is not None:
        err = err.reason
    text = str(err)
    if isinstance(err, urllib3.exceptions.NewConnectionError):
        text = text.partition("): ")[2] or text  # drop "HTTPSConnection(host=..., port=...)"
    return text


class WatchStream:
    """The events of one open watch; ``close()`` from another thread unblocks the reader."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        buffer = bytearray()
        try:
            # The API server writes one JSON object per line and flushes each as an HTTP
            # chunk; stream(None) hands over every chunk as soon as it arrives.
            for chunk in self._response.stream(amt=None, decode_content=True):
                buffer.extend(chunk)
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[: end + 1]
                    if line.strip():
                        yield _event(line)
        except _NETWORK_ERRORS as err:
            raise Unreachable(f"watch stream broken: {_reason(err)}") from err
        if buffer.strip():
            yield _event(bytes(buffer))

    def close(self) -> None:
        # shutdown() interrupts a read blocked in another thread (urllib3 >= 2.3);
        # close() alone would wait for it.
        with contextlib.suppress(Exception):
            self._response.shutdown()
        with contextlib.suppress(Exception):
            self._response.release_conn()
            self._response.close()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _event(line: bytes) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError as err:
        raise Unreachable(f"watch stream sent a line that is not JSON: {err}") from err
    if not isinstance(event, dict):
        raise Unreachable("watch stream sent a line that is not an event object")
    return event


class KubeApi:
    """Raw JSON requests through a ``kubernetes.client.ApiClient``.

    The client brings authentication (bearer token with in-cluster refresh, client
    certificates, exec plugins via kubeconfig), TLS and proxy settings; this class only
    builds paths and reads JSON, so it works for any group/version the server has,
    whatever models the client library was generated with.
    """

    def __init__(
        self,
        api_client: Any,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        if not callable(getattr(api_client, "param_serialize", None)):
            # clients generated before openapi-generator 7 (kubernetes < 37) build and send
            # requests through a different call_api signature
            raise TypeError("KubeApi needs a kubernetes.client.ApiClient from kubernetes >= 37")
        self.api_client = api_client
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Query,
        body: object,
        content_type: str | None,
        read_timeout: float,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            request = self.api_client.param_serialize(
                method=method,
                resource_path=path,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self.api_client.call_api(
                *request, _request_timeout=(self.connect_timeout, read_timeout)
            )
        except _NETWORK_ERRORS as err:
            raise Unreachable(f"{method} {path}: {_reason(err)}") from err
        except Exception as err:
            # kubernetes.client raises ApiException(status=0) for TLS failures
            if getattr(err, "status", None) == 0:
                raise Unreachable(f"{method} {path}: {getattr(err, 'reason', err)}") from err
            raise
        return response

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Query = (),
        body: object = None,
        content_type: str | None = None,
    ) -> Any:
        """One request; the decoded JSON answer, or ApiError / Unreachable."""
        response = self._send(
            method,
            path,
            query=query,
            body=body,
            content_type=content_type,
            read_timeout=self.request_timeout,
        )
        try:
            data = response.read()
        except _NETWORK_ERRORS as err:
            raise Unreachable(f"{method} {path}: {_reason(err)}") from err
        finally:
            with contextlib.suppress(Exception):
                response.response.release_conn()
        if not 200 <= response.status <= 299:
            raise _status_error(response.status, body=data or b"", fallback=str(response.reason))
        try:
            return json.loads(data) if data else None
        except ValueError as err:
            raise Unreachable(f"{method} {path}: answer is not JSON: {err}") from err

    def watch(self, path: str, query: Query, *, read_timeout: float) -> WatchStream:
        """Open a watch; raises ApiError when the server refuses it (403, 410 ...)."""
        response = self._send(
            "GET", path, query=query, body=None, content_type=None, read_timeout=read_timeout
        )
        if not 200 <= response.status <= 299:
            try:
                data = response.read()
            except _NETWORK_ERRORS:
                data = b""
            with contextlib.suppress(Exception):
                response.response.release_conn()
            raise _status_error(response.status, body=data or b"", fallback=str(response.reason))
        return WatchStream(response.response)


def api_client_for(settings: Settings) -> Any:
    """A ``kubernetes.client.ApiClient`` for the agent.

    ``kubeconfig`` when the operator set one (an explicit file wins), else the in-cluster
    service account (DaemonSet / static pod with a token mounted), else the default
    kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``; bare-metal systemd service).
    """
    from kubernetes import client
    from kubernetes import config as config_mod

    # the loaders are untyped; one Any keeps mypy --strict quiet without hiding more
    config: Any = config_mod
    configuration = client.Configuration()
    if settings.kubeconfig:
        config.load_kube_config(
            config_file=settings.kubeconfig,
            client_configuration=configuration,
            persist_config=False,
        )
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration, persist_config=False)
    return client.ApiClient(configuration)
