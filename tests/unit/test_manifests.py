"""Reading `kubectl get -o yaml|json` output: files, directories, stdin, lists, errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from agent.sources.manifests import ManifestError, load_snapshot, read_paths
from labkit.objects import configmap, node, service
from tests.conftest import EXAMPLES


def test_list_multi_document_and_typed_lists(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        yaml.safe_dump_all(
            [
                {"apiVersion": "v1", "kind": "List", "items": [node("n1", "198.51.100.1")]},
                service("web", []),
                None,
            ]
        )
    )
    # kubectl omits kind on the items of a typed list such as ServiceList
    typed = {"apiVersion": "v1", "kind": "ConfigMapList", "items": [configmap({})]}
    del typed["items"][0]["kind"]
    (tmp_path / "b.json").write_text(json.dumps(typed))
    (tmp_path / "ignored.txt").write_text("not: [yaml")
    snap = load_snapshot([str(tmp_path)])
    assert list(snap.nodes) == ["n1"]
    assert list(snap.services) == [("default", "web")]
    assert list(snap.configmaps) == [("kube-system", "vip-configmap")]
    assert snap.nodes_known


def test_stdin_and_files_combine() -> None:
    stdin = io.StringIO(yaml.safe_dump(service("extra", [])))
    objs = read_paths([str(EXAMPLES / "cluster.yaml"), "-"], stdin=stdin)
    assert objs[-1]["metadata"]["name"] == "extra"


def test_example_cluster_has_every_kind() -> None:
    snap = load_snapshot([str(EXAMPLES / "cluster.yaml")])
    assert len(snap.nodes) == 5
    assert ("default", "web") in snap.endpoint_slices
    assert len(snap.endpoint_slices[("default", "web")]) == 2
    assert ("default", "static-site") in snap.endpoints


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("kind: [unclosed", "not valid YAML"),
        ('{"kind": ', "not valid JSON"),
        ("- just\n- a list\n", "expected Kubernetes objects"),
        ("kind: List\nitems: 3\n", "items is not a list"),
    ],
)
def test_malformed_files_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ManifestError, match=message) as err:
        read_paths([str(path)])
    assert str(path) in str(err.value)


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such file"):
        read_paths([str(tmp_path / "nope.yaml")])
