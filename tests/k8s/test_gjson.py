"""The GJSON subset Katib's successCondition and failureCondition use."""

from __future__ import annotations

from typing import Any

import pytest

from natib.actors.launcher.gjson import MISSING, GJSONError, compile_path, get, matches
from natib.messages.spec import (
    JOB_FAILURE_CONDITION,
    JOB_SUCCESS_CONDITION,
    KUBEFLOW_JOB_FAILURE_CONDITION,
    KUBEFLOW_JOB_SUCCESS_CONDITION,
)


def job(*conditions: tuple[str, str], **status: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
            "status": {"conditions": [{"type": t, "status": s, "reason": f"{t}Reason", "message": f"{t} happened"}
                                      for t, s in conditions], **status}}


def test_job_defaults() -> None:
    done = job(("Complete", "True"))
    assert matches(done, JOB_SUCCESS_CONDITION) == done["status"]["conditions"][0]
    assert matches(done, JOB_FAILURE_CONDITION) is None
    failed = job(("Failed", "True"))
    assert matches(failed, JOB_FAILURE_CONDITION)["reason"] == "FailedReason"  # type: ignore[index]
    assert matches(failed, JOB_SUCCESS_CONDITION) is None


def test_status_false_is_no_match() -> None:
    assert matches(job(("Complete", "False")), JOB_SUCCESS_CONDITION) is None
    assert matches(job(("Failed", "False")), JOB_FAILURE_CONDITION) is None


def test_the_true_one_among_several_of_a_type() -> None:
    doc = job(("Complete", "False"), ("Suspended", "True"), ("Complete", "True"))
    assert matches(doc, JOB_SUCCESS_CONDITION) == doc["status"]["conditions"][2]


def test_no_status_or_no_conditions() -> None:
    assert matches({"kind": "Job"}, JOB_SUCCESS_CONDITION) is None
    assert matches({"status": {}}, JOB_SUCCESS_CONDITION) is None
    assert matches({"status": {"conditions": []}}, JOB_SUCCESS_CONDITION) is None
    assert matches({"status": {"conditions": "Complete"}}, JOB_SUCCESS_CONDITION) is None
    assert matches({"status": {"conditions": [None, 3, "x"]}}, JOB_SUCCESS_CONDITION) is None


def test_kubeflow_defaults() -> None:
    doc = job(("Created", "True"), ("Running", "False"), ("Succeeded", "True"))
    assert matches(doc, KUBEFLOW_JOB_SUCCESS_CONDITION) is not None
    assert matches(doc, KUBEFLOW_JOB_FAILURE_CONDITION) is None
    assert matches(job(("Complete", "True")), KUBEFLOW_JOB_SUCCESS_CONDITION) is None


def test_tekton_style_conditions() -> None:
    ok = 'status.conditions.#(type=="Succeeded")#|#(status=="True")#'
    bad = 'status.conditions.#(type=="Succeeded")#|#(status=="False")#'
    assert matches(job(("Succeeded", "True")), ok) is not None
    assert matches(job(("Succeeded", "True")), bad) is None
    assert matches(job(("Succeeded", "False")), bad) is not None


def test_argo_this_multipath() -> None:
    ok = 'status.[@this].#(phase=="Succeeded")#'
    assert matches({"status": {"phase": "Succeeded"}}, ok) == {"phase": "Succeeded"}
    assert matches({"status": {"phase": "Running"}}, ok) is None
    assert matches({}, ok) is None
    assert get({"status": {"phase": "x"}}, "status.[@this]") == [{"phase": "x"}]
    assert get({"a": 1, "b": 2}, "[a,b]") == [1, 2]
    assert get({"a": 1}, "[a,b]") == [1]


def test_a_match_is_an_object_or_a_non_empty_array() -> None:
    doc = {"status": {"phase": "Succeeded", "succeeded": 1, "ok": True, "list": [], "obj": {}, "names": ["a"]}}
    assert matches(doc, "status.phase") is None
    assert matches(doc, "status.succeeded") is None
    assert matches(doc, "status.ok") is None
    assert matches(doc, "status.list") is None
    assert matches(doc, "status.obj") == {}
    assert matches(doc, "status.names") == {}, "a scalar first element matches with no reason or message"


def test_first_match_query_and_projection() -> None:
    doc = {"items": [{"n": "a", "v": 1}, {"n": "b", "v": 5}, {"n": "c", "v": 9}]}
    assert get(doc, 'items.#(n=="b")') == {"n": "b", "v": 5}
    assert get(doc, 'items.#(n=="b").v') == 5
    assert get(doc, 'items.#(n=="z")') is MISSING
    assert get(doc, "items.#(v>4)#.n") == ["b", "c"]
    assert get(doc, "items.#(v>=5)#.n") == ["b", "c"]
    assert get(doc, "items.#(v<5)#.n") == ["a"]
    assert get(doc, "items.#(v<=5)#.n") == ["a", "b"]
    assert get(doc, 'items.#(n!="a")#.n') == ["b", "c"]
    assert get(doc, "items.#(v==5)#.n") == ["b"]
    assert get(doc, "items.#(v=5)#.n") == ["b"]
    assert get(doc, "items.#") == 3
    assert get(doc, "items.#.n") == ["a", "b", "c"]
    assert get(doc, "items.1.n") == "b"
    assert get(doc, "items.7.n") is MISSING


def test_types_are_not_coerced() -> None:
    doc = {"c": [{"status": "True"}, {"status": True}, {"n": "1"}, {"n": 1}]}
    assert get(doc, 'c.#(status=="True")#') == [{"status": "True"}]
    assert get(doc, "c.#(status==true)#") == [{"status": True}]
    assert get(doc, 'c.#(n=="1")#') == [{"n": "1"}]
    assert get(doc, "c.#(n==1)#") == [{"n": 1}]
    assert get(doc, 'c.#(n>"0")#') == [{"n": "1"}], "strings compare with strings"


def test_glob_existence_nested_and_element_queries() -> None:
    doc = {"c": [{"type": "JobComplete", "meta": {"x": "y"}}, {"type": "Other"}], "tags": ["fb", "tw"]}
    assert get(doc, 'c.#(type%"Job*")#.type') == ["JobComplete"]
    assert get(doc, 'c.#(type!%"Job*")#.type') == ["Other"]
    assert get(doc, "c.#(meta)#.type") == ["JobComplete"]
    assert get(doc, 'c.#(meta.x=="y")#.type') == ["JobComplete"]
    assert get(doc, 'tags.#(=="tw")') == "tw"
    assert get({"a": [{"tags": ["x", "y"]}, {"tags": ["z"]}]}, 'a.#(tags.#(=="z"))#') == [{"tags": ["z"]}]


def test_escapes_and_quotes() -> None:
    doc = {"metadata": {"labels": {"katib.kubeflow.org/trial": "t1"}}, "c": [{"m": 'say "hi". ok|no'}]}
    assert get(doc, r"metadata.labels.katib\.kubeflow\.org/trial") == "t1"
    assert get(doc, r'c.#(m=="say \"hi\". ok|no")#') == doc["c"]


def test_pipe_applies_to_the_whole_result() -> None:
    doc = {"c": [{"t": "a", "s": "1"}, {"t": "a", "s": "2"}]}
    assert get(doc, 'c.#(t=="a")#|#') == 2
    assert get(doc, 'c.#(t=="a")#|0.s') == "1"
    assert get(doc, 'c.#(t=="a")#.s') == ["1", "2"]


def test_queries_on_non_arrays_are_missing() -> None:
    assert get({"c": {"type": "Complete"}}, 'c.#(type=="Complete")#') is MISSING
    assert get({"c": 3}, "c.#") is MISSING
    assert get({"c": "x"}, "c.y") is MISSING


@pytest.mark.parametrize(("path", "reason"), [
    ("", "empty path"),
    ("status..conditions", "empty path component at position 7"),
    ("status.conditions.#(type==)", "expected a string, number, true, false or null"),
    ("status.conditions.#(type==\"Complete\"", "unbalanced parentheses or brackets"),
    ("status.conditions.#(type==\"Complete)", "unterminated string"),
    ("status)", "unbalanced ')' at position 6"),
    ("status.#()", "empty query at position 7"),
    ("status.@reverse", "unsupported modifier '@reverse'"),
    ("status.{a,b}", "object multipaths are not supported"),
    ("status.cond*", "wildcards are not supported"),
    ("status.[a,b", "unbalanced"),
    ("status.conditions.#(type==bogus)", "expected a string, number, true, false or null at position 26"),
])
def test_bad_paths_name_the_reason(path: str, reason: str) -> None:
    with pytest.raises(GJSONError, match=reason.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        compile_path(path)


def test_compile_is_cached_and_rejects_non_strings() -> None:
    assert compile_path(JOB_SUCCESS_CONDITION) is compile_path(JOB_SUCCESS_CONDITION)
    with pytest.raises(GJSONError, match="expected a string, got int"):
        compile_path(3)  # type: ignore[arg-type]
