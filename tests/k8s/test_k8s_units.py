"""Units of the fake cluster: the structural-schema validator, patches, selectors and quantities."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nni_ts.testing.k8s.patch import json_patch, merge_patch, strategic_merge_patch
from nni_ts.testing.k8s.schema import validate
from nni_ts.testing.k8s.util import ApiError, FieldSelector, LabelSelector, parse_quantity

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                "count": {"type": "integer", "minimum": 0, "maximum": 3, "default": 1},
                "mode": {"type": "string", "enum": ["A", "B"]},
                "ratio": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                "limits": {"type": "object", "additionalProperties": {"x-kubernetes-int-or-string": True}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "maybe": {"type": "string", "nullable": True},
            },
        },
    },
}


def causes(obj: dict[str, Any]) -> dict[str, str]:
    found, _ = validate(SCHEMA, obj)
    return {field: reason for field, reason, _ in found}


def test_valid_object_gets_defaults_and_pruning() -> None:
    obj = {
        "metadata": {"name": "x"},
        "spec": {
            "name": "abc",
            "unknown": 1,
            "free": {"anything": [1]},
            "limits": {"cpu": "1", "gpu": 2},
            "maybe": None,
        },
    }
    found, pruned = validate(SCHEMA, obj)
    assert found == [] and pruned == ["spec.unknown"]
    assert obj["spec"]["count"] == 1 and "unknown" not in obj["spec"] and obj["spec"]["free"] == {"anything": [1]}


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ({}, "spec.name", "FieldValueRequired"),
        ({"name": "ABC"}, "spec.name", "FieldValueInvalid"),
        ({"name": "abcdefg"}, "spec.name", "FieldValueTooLong"),
        ({"name": "a", "count": 4}, "spec.count", "FieldValueInvalid"),
        ({"name": "a", "count": "1"}, "spec.count", "FieldValueInvalid"),
        ({"name": "a", "count": True}, "spec.count", "FieldValueInvalid"),
        ({"name": "a", "mode": "C"}, "spec.mode", "FieldValueNotSupported"),
        ({"name": "a", "ratio": 0}, "spec.ratio", "FieldValueInvalid"),
        ({"name": "a", "tags": ["x", "y", "z"]}, "spec.tags", "FieldValueTooMany"),
        ({"name": "a", "tags": ["x", 2]}, "spec.tags[1]", "FieldValueInvalid"),
        ({"name": "a", "limits": {"cpu": [1]}}, "spec.limits[cpu]", "FieldValueInvalid"),
        ({"name": "a", "count": None}, "spec.count", "FieldValueInvalid"),
    ],
)
def test_invalid_fields_are_named(spec: dict[str, Any], field: str, reason: str) -> None:
    assert causes({"spec": spec}).get(field) == reason


def test_real_messages() -> None:
    found, _ = validate(SCHEMA, {"spec": {"name": "a", "mode": "C", "count": 9}})
    messages = {f: m for f, _, m in found}
    assert messages["spec.mode"] == 'Unsupported value: "C": supported values: "A", "B"'
    assert messages["spec.count"] == "Invalid value: 9: spec.count in body should be less than or equal to 3"


def _json_containers(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    # st.one_of, not `|`: hypothesis 6.15x's check that `extend` recurses does not see through `|`.
    return st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=3), children, max_size=3))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5), _json_containers, max_leaves=10
)
json_objects = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


@given(json_objects, json_objects)
@pytest.mark.slow
def test_merge_patch_properties(target: dict[str, Any], patch: dict[str, Any]) -> None:
    before = copy.deepcopy(target)
    result = merge_patch(target, patch)
    assert target == before  # the target is not changed in place
    for key, value in patch.items():
        if value is None:
            assert key not in result
        elif not isinstance(value, dict):
            assert result[key] == value
    assert merge_patch(result, patch) == result  # idempotent


def test_json_patch_operations_and_failures() -> None:
    doc = {"spec": {"a": [1, 2], "b": "x"}}
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/spec/a/-", "value": 3},
            {"op": "replace", "path": "/spec/b", "value": "y"},
            {"op": "move", "from": "/spec/b", "path": "/spec/c"},
            {"op": "copy", "from": "/spec/a", "path": "/spec/d"},
            {"op": "test", "path": "/spec/c", "value": "y"},
            {"op": "remove", "path": "/spec/a/0"},
            {"op": "add", "path": "/spec/x~1y", "value": 1},
        ],
    )
    assert out == {"spec": {"a": [2, 3], "c": "y", "d": [1, 2, 3], "x/y": 1}}
    assert doc == {"spec": {"a": [1, 2], "b": "x"}}
    for bad in (
        [{"op": "replace", "path": "/spec/zz", "value": 1}],
        [{"op": "remove", "path": "/nope"}],
        [{"op": "test", "path": "/spec/b", "value": "other"}],
    ):
        with pytest.raises(ApiError) as info:
            json_patch(doc, bad)
        assert info.value.code == 422
    with pytest.raises(ApiError):
        json_patch(doc, {"op": "add"})


def test_strategic_merge_patch_basics() -> None:
    pod = {
        "spec": {
            "containers": [
                {"name": "a", "image": "1", "env": [{"name": "X", "value": "1"}]},
                {"name": "b", "image": "1"},
            ]
        },
        "metadata": {"finalizers": ["f1"], "labels": {"k": "v"}},
    }
    out = strategic_merge_patch(
        pod,
        {
            "spec": {
                "containers": [
                    {"name": "a", "env": [{"name": "Y", "value": "2"}]},
                    {"name": "c", "image": "3"},
                    {"name": "b", "$patch": "delete"},
                ]
            },
            "metadata": {"finalizers": ["f2"], "labels": {"k": None}},
        },
    )
    assert [c["name"] for c in out["spec"]["containers"]] == ["a", "c"]
    assert out["spec"]["containers"][0]["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]
    assert out["metadata"] == {"finalizers": ["f1", "f2"], "labels": {}}
    replaced = strategic_merge_patch(pod, {"spec": {"$patch": "replace", "containers": []}})
    assert replaced["spec"] == {"containers": []}


def test_label_and_field_selectors() -> None:
    sel = LabelSelector.parse("app=web,tier!=db,env in (prod, staging),!legacy,team")
    assert sel.matches({"app": "web", "env": "prod", "team": "x"})
    assert not sel.matches({"app": "web", "env": "dev", "team": "x"})
    assert not sel.matches({"app": "web", "env": "prod", "team": "x", "legacy": "1"})
    assert LabelSelector.parse("tier notin (db)").matches({})
    with pytest.raises(ApiError):
        LabelSelector.parse("a in b")
    expr = LabelSelector.from_dict(
        {
            "matchLabels": {"a": "1"},
            "matchExpressions": [
                {"key": "b", "operator": "Exists"},
                {"key": "c", "operator": "NotIn", "values": ["x"]},
            ],
        }
    )
    assert expr.matches({"a": "1", "b": ""}) and not expr.matches({"a": "1"})
    fields = FieldSelector.parse("metadata.name=p,status.phase!=Failed", {"metadata.name", "status.phase"})
    assert fields.matches({"metadata": {"name": "p"}, "status": {"phase": "Running"}})
    assert not fields.matches({"metadata": {"name": "p"}, "status": {"phase": "Failed"}})
    with pytest.raises(ApiError) as info:
        FieldSelector.parse("spec.x=1", {"metadata.name"})
    assert info.value.code == 400


def test_quantities() -> None:
    assert parse_quantity("500m") == 0.5
    assert parse_quantity("1Gi") == 2**30
    assert parse_quantity("2k") == 2000
    assert parse_quantity(3) == 3.0
    assert parse_quantity("1e3") == 1000
    for bad in ("lots", True, "1Gb"):
        with pytest.raises(ValueError, match="is not a quantity"):
            parse_quantity(bad)


def test_package_all_resolves() -> None:
    import nni_ts.testing.k8s as package

    for name in package.__all__:
        assert getattr(package, name) is not None, name


def test_threaded_cluster_for_synchronous_code(tmp_path: Any) -> None:
    import json
    import urllib.request

    from nni_ts.testing.k8s import ThreadedCluster

    with ThreadedCluster(tmp_path / "c") as tc:
        tc.call(lambda c: c.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "t"}}))
        with urllib.request.urlopen(f"{tc.url}/api/v1/namespaces/default/configmaps/t", timeout=10) as resp:
            assert json.loads(resp.read())["metadata"]["name"] == "t"
        tc.run(lambda c: c.faults.restart_api(downtime=0.05))
        assert tc.call(lambda c: c.request_counts[("get", "configmaps")]) == 1
        assert tc.kubeconfig.exists()
