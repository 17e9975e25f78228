"""A real kube-apiserver (with its own etcd) for tests.

``scripts/build-kube-apiserver`` builds kube-apiserver 1.20.2 from Debian bookworm's
``kubernetes`` source package into ``${VIP_AGENT_CACHE:-/var/cache/vip-agent}/kube-1.20.2-rN``
(:func:`kube_dir`) and installs Debian's ``etcd-server``. :class:`ApiServer` starts both on
free 127.0.0.1 ports, with static bearer tokens, RBAC, a self-signed serving certificate, a
short etcd compaction interval and no watch cache for the resources the agent watches, so a
watch from an old resourceVersion really gets 410 Gone once etcd has compacted past it.

There is no controller-manager or scheduler: nothing creates EndpointSlices, default service
accounts or garbage-collects, and a deleted namespace stays Terminating. Tests create the
objects they need themselves.

Both processes are started and ended by pid only, get SIGKILL if the (starting) thread of
the test process dies (``PR_SET_PDEATHSIG``), and log to files in the server's temp dir.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import http.client
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml

from labkit.ports import free_ports

APISERVER_VERSION = "1.20.2"
# scripts/build-kube's REVISION: bumped when its recipe changes what it builds (2: reflect2
# 1.0.2 vendored, so pretty-printed responses no longer crash the server).
KUBE_BUILD_REVISION = 2
DEFAULT_CACHE = Path("/var/cache/vip-agent")
BUILD_SCRIPT = "scripts/build-kube-apiserver"

ADMIN_USER = "vip-agent-test-admin"
ADMIN_GROUPS: tuple[str, ...] = ("system:masters",)
# A user the session fixture gives a token but no RBAC binding.
NOBODY_USER = "vip-agent-test-nobody"
# Static tokens named as ServiceAccounts. No controller-manager runs to issue real
# ServiceAccount tokens, but RBAC matches a ServiceAccount subject by user name
# (system:serviceaccount:NAMESPACE:NAME), so container/rbac.yaml binds these unmodified.
AGENT_SA_USER = "system:serviceaccount:kube-system:vip-agent"
LIMITED_SA_USER = "system:serviceaccount:kube-system:vip-agent-limited"
SA_GROUPS: tuple[str, ...] = ("system:serviceaccounts", "system:serviceaccounts:kube-system")

# Watched by the agent; uncached watches go to etcd, where compaction produces 410 Gone.
# (With the watch cache, 410 depends on the cache window instead: any resourceVersion from
# before the cache was filled, e.g. before an apiserver restart, is "too old".)
DEFAULT_WATCH_CACHE_SIZES: Mapping[str, int] = {
    "configmaps": 0,
    "services": 0,
    "endpoints": 0,
    "endpointslices.discovery.k8s.io": 0,
    "nodes": 0,
}

_PR_SET_PDEATHSIG = 1

T = TypeVar("T")


class ApiServerError(RuntimeError):
    """etcd or kube-apiserver did not start (the message carries the log tail)."""


def cache_dir() -> Path:
    return Path(os.environ.get("VIP_AGENT_CACHE") or DEFAULT_CACHE)


def kube_dir() -> Path:
    """Where scripts/build-kube caches the Kubernetes programs it builds."""
    return cache_dir() / f"kube-{APISERVER_VERSION}-r{KUBE_BUILD_REVISION}"


def find_binaries() -> tuple[Path, Path] | None:
    """(kube-apiserver, etcd) when both are installed and runnable, else None."""
    apiserver = kube_dir() / "kube-apiserver"
    etcd = shutil.which("etcd")
    if etcd is None or not os.access(apiserver, os.X_OK):
        return None
    return apiserver, Path(etcd)


def watch_ends_in_gone(list_call: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """True when a watch through ``list_call`` (with ``resource_version=`` among the
    arguments) ends in 410 Gone, False when it replays an event or times out.

    A compaction that runs while the watch replays history can make kube-apiserver 1.20
    answer 500 "etcd event received with PrevKv=nil" for a DELETE whose previous value
    was just compacted away: that is compaction under way, not yet gone, so False."""
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    w = watch.Watch()  # type: ignore[no-untyped-call]
    try:
        for _event in w.stream(list_call, *args, **kwargs):  # type: ignore[no-untyped-call]
            w.stop()  # type: ignore[no-untyped-call]
            return False
    except ApiException as exc:
        if exc.status == 410:
            return True
        if exc.status == 500 and "PrevKv=nil" in str(exc.reason):
            return False
        raise
    return False


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll ``check`` until it returns something true, which is returned; bounded by
    ``timeout`` seconds and a matching count. An exception from ``check`` ends the wait."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:g}s")


def post_all(
    api: Any,
    groups: Iterable[Sequence[tuple[str, Mapping[str, Any]]]],
    *,
    deadline: float,
    workers: int = 8,
) -> None:
    """POST every ``(path, body)`` through ``api`` (agent.sources.kube.KubeApi): the groups
    concurrently on ``workers`` threads, each group's objects in its order; TimeoutError
    once ``deadline`` (``time.monotonic()``) has passed.  How benches load thousands of
    objects into a real API server."""

    def post(group: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        for path, body in group:
            if time.monotonic() > deadline:
                raise TimeoutError("creating the objects took too long")
            api.request("POST", path, body=body)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for future in concurrent.futures.as_completed([pool.submit(post, g) for g in groups]):
            future.result()


def write_kubeconfig(path: Path, *, server: str, ca_file: Path, token: str) -> Path:
    """A kubeconfig at ``path`` (mode 0600): ``server`` trusted through ``ca_file``, a
    bearer ``token`` as the user."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "vip-agent-test",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": "test-user", "user": {"token": token}}],
        "contexts": [
            {
                "name": "vip-agent-test",
                "context": {"cluster": "vip-agent-test", "user": "test-user"},
            }
        ],
        "current-context": "vip-agent-test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)
    return path


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the thread that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _check_csv_field(value: str) -> str:
    if not value or any(c in value for c in ',"\n\r'):
        raise ValueError(f'token file field {value!r} must be non-empty without , " or newline')
    return value


def etcd_argv(etcd: str, *, data_dir: Path, client_url: str, peer_url: str) -> list[str]:
    """A one-member etcd cluster, quiet but for warnings."""
    return [
        etcd,
        "--name=test",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=test={peer_url}",
        "--initial-cluster-state=new",
        "--log-level=warn",
    ]


def write_token_file(path: Path, tokens: Mapping[str, tuple[str, Sequence[str]]]) -> None:
    """kube-apiserver's --token-auth-file (mode 0600): token -> (user, groups)."""
    lines = []
    for token, (user, groups) in tokens.items():
        fields = [_check_csv_field(token), _check_csv_field(user), user]
        if groups:
            fields.append('"' + ",".join(_check_csv_field(g) for g in groups) + '"')
        lines.append(",".join(fields))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)


def write_service_account_key(path: Path) -> None:
    """An RSA key that signs (and verifies) ServiceAccount tokens."""
    subprocess.run(
        ["openssl", "genrsa", "-out", str(path), "2048"],
        check=True,
        capture_output=True,
        timeout=60,
    )


class Process:
    """A child process with its log file, ended by pid."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            out.write(f"--- starting {name}: {' '.join(argv)}\n".encode())
            out.flush()
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # tests start servers from the main thread
                close_fds=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL by pid and reap."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)

    def terminate(self, grace: float = 10.0) -> None:
        """SIGTERM by pid, SIGKILL after ``grace`` seconds; reaps the child."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()

    def failure(self, message: str) -> ApiServerError:
        status = self.popen.poll()
        state = "running" if status is None else f"exited with status {status}"
        return ApiServerError(
            f"{self.name} {message} ({state}); last lines of its log {self.log.name}:\n"
            f"{log_tail(self.log)}"
        )


class ApiServer:
    """etcd + kube-apiserver 1.20 on 127.0.0.1; a context manager.

    ``extra_tokens`` maps a bearer token to (user name, groups); the admin token (group
    system:masters) is always there. ``watch_cache_sizes`` maps ``resource[.group]`` to a
    watch cache size (0: none); ``compaction_interval`` is in seconds.
    """

    def __init__(
        self,
        *,
        extra_tokens: Mapping[str, tuple[str, Sequence[str]]] | None = None,
        compaction_interval: float = 10.0,
        watch_cache_sizes: Mapping[str, int] | None = None,
        service_cluster_ip_range: str = "10.96.0.0/24",
        ready_timeout: float = 60.0,
        binaries: tuple[Path, Path] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        found = binaries or find_binaries()
        if found is None:
            raise ApiServerError(
                f"kube-apiserver {APISERVER_VERSION} or etcd missing; run {BUILD_SCRIPT}"
            )
        self.apiserver_bin, self.etcd_bin = found
        self.admin_token = secrets.token_hex(16)
        self.tokens: dict[str, tuple[str, tuple[str, ...]]] = {
            self.admin_token: (ADMIN_USER, ADMIN_GROUPS)
        }
        for token, (user, groups) in (extra_tokens or {}).items():
            self.tokens[token] = (user, tuple(groups))
        self.compaction_interval = compaction_interval
        self.watch_cache_sizes = dict(
            DEFAULT_WATCH_CACHE_SIZES if watch_cache_sizes is None else watch_cache_sizes
        )
        self.service_cluster_ip_range = service_cluster_ip_range
        self.ready_timeout = ready_timeout
        self.extra_args = tuple(extra_args)

        self.tmp: Path | None = None
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.port = 0
        self._etcd: Process | None = None
        self._apiserver: Process | None = None
        self.start_seconds: float | None = None  # last apiserver start until /readyz ok

    # --- public surface ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def ca_file(self) -> Path:
        """Self-signed serving certificate and its CA (kube-apiserver writes both)."""
        return self._dir / "certs" / "apiserver.crt"

    @property
    def apiserver_log(self) -> Path:
        return self._dir / "kube-apiserver.log"

    @property
    def etcd_log(self) -> Path:
        return self._dir / "etcd.log"

    @property
    def apiserver_pid(self) -> int | None:
        return self._apiserver.pid if self._apiserver and self._apiserver.alive() else None

    def token_for(self, user: str) -> str:
        """The first token configured for ``user``."""
        for token, (name, _groups) in self.tokens.items():
            if name == user:
                return token
        raise KeyError(user)

    def start(self) -> ApiServer:
        if self.tmp is not None:
            raise ApiServerError("already started")
        self.tmp = Path(tempfile.mkdtemp(prefix="vip-agent-kube-"))
        try:
            self.etcd_port, self.etcd_peer_port, self.port = free_ports(3)
            write_token_file(self._dir / "tokens.csv", self.tokens)
            write_service_account_key(self._dir / "sa.key")
            self._start_etcd()
            self._start_apiserver()
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL kube-apiserver only (by pid); etcd keeps running."""
        if self._apiserver is not None:
            self._apiserver.kill()

    def restart(self) -> None:
        """(Re)start kube-apiserver on the same port, against the same etcd."""
        if self._apiserver is not None:
            self._apiserver.terminate()
        if self._etcd is None or not self._etcd.alive():
            raise ApiServerError("etcd is not running")
        self._start_apiserver()

    def stop(self) -> None:
        """Terminate kube-apiserver, then etcd (by pid), and remove the temp dir."""
        for proc in (self._apiserver, self._etcd):
            if proc is not None:
                proc.terminate()
        self._apiserver = self._etcd = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """Write a kubeconfig for ``token`` (default: admin) to ``path``."""
        return write_kubeconfig(
            path, server=self.url, ca_file=self.ca_file, token=token or self.admin_token
        )

    def api_client(self, token: str | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` authenticated with ``token`` (default: admin)."""
        from kubernetes import client

        configuration = client.Configuration(
            host=self.url,
            api_key={"authorization": token or self.admin_token},
            api_key_prefix={"authorization": "Bearer"},
            ssl_ca_cert=str(self.ca_file),
            no_proxy="127.0.0.1,localhost",
        )
        configuration.proxy = None  # never via an HTTP(S)_PROXY from the environment
        return client.ApiClient(configuration)

    def get(
        self,
        path: str,
        token: str | None = None,
        timeout: float = 5.0,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, str]:
        """GET ``path`` over verified TLS, with ``headers`` besides the token; (status, body)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=context)
        try:
            conn.request(
                "GET",
                path,
                headers={"Authorization": f"Bearer {token or self.admin_token}", **(headers or {})},
            )
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", errors="replace")
        finally:
            conn.close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals --------------------------------------------------------------------

    @property
    def _dir(self) -> Path:
        if self.tmp is None:
            raise ApiServerError("not started")
        return self.tmp

    def _start_etcd(self) -> None:
        argv = etcd_argv(
            str(self.etcd_bin),
            data_dir=self._dir / "etcd",
            client_url=self.etcd_url,
            peer_url=f"http://127.0.0.1:{self.etcd_peer_port}",
        )
        self._etcd = proc = Process("etcd", argv, self.etcd_log)
        try:
            wait_until(self._etcd_healthy, timeout=30, what="etcd /health")
        except TimeoutError:
            raise proc.failure("did not become healthy within 30s") from None

    def _etcd_healthy(self) -> bool:
        assert self._etcd is not None
        if not self._etcd.alive():
            raise self._etcd.failure("exited during start-up")
        conn = http.client.HTTPConnection("127.0.0.1", self.etcd_port, timeout=2)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            return response.status == 200 and '"true"' in response.read().decode()
        except OSError:
            return False
        finally:
            conn.close()

    def _apiserver_argv(self) -> list[str]:
        caches = ",".join(f"{res}#{size}" for res, size in sorted(self.watch_cache_sizes.items()))
        key = self._dir / "sa.key"
        argv = [
            str(self.apiserver_bin),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            "--insecure-port=0",
            f"--cert-dir={self._dir / 'certs'}",
            f"--token-auth-file={self._dir / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={key}",
            f"--service-account-signing-key-file={key}",
            f"--service-cluster-ip-range={self.service_cluster_ip_range}",
            f"--etcd-compaction-interval={self.compaction_interval:g}s",
            # No controller-manager creates the default ServiceAccounts pods would need.
            "--disable-admission-plugins=ServiceAccount",
            # Endpoints may not hold a loopback address: the reconciler would log an error
            # every 10s trying to publish 127.0.0.1 for the "kubernetes" Service.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=1",
        ]
        if caches:
            argv.append(f"--watch-cache-sizes={caches}")
        argv.extend(self.extra_args)
        return argv

    def _start_apiserver(self) -> None:
        started = time.monotonic()
        self._apiserver = proc = Process(
            "kube-apiserver", self._apiserver_argv(), self.apiserver_log
        )
        try:
            wait_until(self._apiserver_ready, timeout=self.ready_timeout, what="/readyz")
        except TimeoutError:
            raise proc.failure(f"not ready within {self.ready_timeout:g}s") from None
        self.start_seconds = time.monotonic() - started

    def _apiserver_ready(self) -> bool:
        assert self._apiserver is not None
        if not self._apiserver.alive():
            raise self._apiserver.failure("exited during start-up")
        if not self.ca_file.exists():
            return False
        try:
            status, body = self.get("/readyz", timeout=2)
        except (OSError, ssl.SSLError, http.client.HTTPException):
            return False
        return status == 200 and body.strip() == "ok"
