"""The HTTP contract against a real uvicorn server on 127.0.0.1: auth, limits, bad input, results, events."""

from __future__ import annotations

import logging
import os

import httpx
import pytest

from shared.data.schema import read_interactions

PROTECTED = [
    ("GET", "/ready", None),
    ("GET", "/v1/model", None),
    ("GET", "/v1/status", None),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/v1/customers/c1/recommendations", None),
    ("GET", "/v1/customers/c1/history", None),
    ("POST", "/v1/sessions/recommendations", {"items": []}),
    ("POST", "/v1/events", {"events": [{"customer_id": "c", "item_id": "i000001"}]}),
]


@pytest.fixture
def running(serve):
    return serve()


def known_customer(running) -> str:
    counts = running.store.interactions["user_id"].value_counts()
    return str(counts.index[0])  # the longest history


def test_health_is_open_and_everything_else_needs_the_key(running, caplog, api_key):
    caplog.set_level(logging.DEBUG)
    assert httpx.get(running.url + "/health").json() == {"status": "ok"}
    for method, path, body in PROTECTED:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-key-wrong-key"},
            {"Authorization": f"Basic {api_key}"},
        ):
            reply = httpx.request(method, running.url + path, json=body, headers=headers)
            assert reply.status_code == 401, (method, path, headers)
            assert reply.headers["www-authenticate"] == "Bearer"
            assert api_key not in reply.text
        ok = running.client.request(method, path, json=body)
        assert ok.status_code in (200, 201), (method, path, ok.text)
    assert all(api_key not in record.getMessage() for record in caplog.records)


def test_page_shell_is_served_without_data(running):
    page = httpx.get(running.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert running.store.catalog.item_ids[0] not in page.text  # data only through the keyed API


def test_oversized_bodies_get_413_with_or_without_content_length(running):
    big = b'{"items": ["' + b"x" * 70_000 + b'"]}'
    reply = running.client.post(
        "/v1/sessions/recommendations", content=big, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 413
    assert "exceeds" in reply.json()["detail"]

    def chunks():
        for _ in range(20):
            yield b"x" * 8192

    chunked = running.client.post(
        "/v1/events", content=chunks(), headers={"content-type": "application/json"}
    )  # a generator body is sent chunked: no Content-Length to refuse early
    assert chunked.status_code == 413


def test_malformed_json_gets_a_clear_4xx_and_no_stack_trace(running):
    cases = [
        b'{"items": ["i000001",',  # truncated
        b"not json at all",
        b"\xff\xfe\x00garbage",  # not UTF-8
    ]
    for body in cases:
        reply = running.client.post(
            "/v1/sessions/recommendations", content=body, headers={"content-type": "application/json"}
        )
        assert 400 <= reply.status_code < 500, body
        assert "Traceback" not in reply.text and 'File "' not in reply.text
        detail = reply.json()["detail"]
        text = detail if isinstance(detail, str) else " ".join(d["msg"] for d in detail)
        assert "JSON" in text or "parsing the body" in text
    wrong_type = running.client.post("/v1/sessions/recommendations", json={"items": "i000001"})
    assert wrong_type.status_code == 422
    assert wrong_type.json()["detail"][0]["loc"] == ["body", "items"]
    extra = running.client.post("/v1/sessions/recommendations", json={"items": [], "nn": 3})
    assert extra.status_code == 422 and "nn" in extra.json()["detail"][0]["loc"]


def test_n_out_of_range_is_422_and_the_bounds_hold(running):
    customer = known_customer(running)
    for n in ("0", "1001", "-3", "ten", "2.5"):
        reply = running.client.get(f"/v1/customers/{customer}/recommendations", params={"n": n})
        assert reply.status_code == 422, n
        assert reply.json()["detail"][0]["loc"] == ["query", "n"]
    for n in (0, 1001):
        assert running.client.post("/v1/sessions/recommendations", json={"n": n}).status_code == 422
    top = running.client.get(f"/v1/customers/{customer}/recommendations", params={"n": 1000}).json()
    seen = set(running.store.customer_items(customer))
    assert len(top["items"]) == min(1000, running.store.catalog.n_items - len(seen))


def test_oversized_history_and_bad_ids_are_422(running):
    too_long = running.client.post("/v1/sessions/recommendations", json={"items": ["i000001"] * 201})
    assert too_long.status_code == 422
    assert "at most 200" in too_long.json()["detail"][0]["msg"]
    control = running.client.post("/v1/sessions/recommendations", json={"items": ["bad\nid"]})
    assert control.status_code == 422
    newline_customer = running.client.get("/v1/customers/a%0Ab/recommendations")
    assert newline_customer.status_code == 422  # reaches validation instead of a bare routing 404
    too_many_events = running.client.post(
        "/v1/events", json={"events": [{"customer_id": "c", "item_id": "i000001"}] * 101}
    )
    assert too_many_events.status_code == 422


def test_unknown_items_are_ignored_and_reported(running):
    reply = running.client.post(
        "/v1/sessions/recommendations", json={"items": ["nope-1", "i000003", "nope-2", "nope-1"], "n": 5}
    ).json()
    assert reply["strategy"] == "model"
    assert reply["unknown_items"] == ["nope-1", "nope-2"]
    assert reply["history_length"] == 1
    assert "i000003" not in [i["item_id"] for i in reply["items"]]  # the session's own item is excluded
    only_unknown = running.client.post(
        "/v1/sessions/recommendations", json={"items": ["nope"], "n": 5}
    ).json()
    assert only_unknown["strategy"] == "popularity" and only_unknown["unknown_items"] == ["nope"]


def test_unknown_customer_gets_this_stores_popular_items(running):
    reply = running.client.get("/v1/customers/never-seen-before/recommendations", params={"n": 5}).json()
    assert reply["strategy"] == "popularity" and reply["history_length"] == 0
    counts = running.store.interactions["item_id"].value_counts()
    got = [(i["item_id"], i["score"]) for i in reply["items"]]
    assert [score for _, score in got] == sorted(counts.to_numpy()[:5].astype(float), reverse=True)
    assert all(counts[item] == score for item, score in got)


def test_known_customer_gets_model_results_without_seen_items(running):
    customer = known_customer(running)
    seen = set(running.store.customer_items(customer))
    reply = running.client.get(f"/v1/customers/{customer}/recommendations", params={"n": 50}).json()
    assert reply["strategy"] == "model" and reply["model_version"] == "v000001"
    assert reply["history_length"] == min(len(running.store.customer_items(customer)), 200)
    items = [i["item_id"] for i in reply["items"]]
    assert len(items) == 50 and not seen & set(items)
    assert all(i["title"] for i in reply["items"])  # the synthetic catalog has titles
    scores = [i["score"] for i in reply["items"]]
    assert scores == sorted(scores, reverse=True)
    with_seen = running.client.get(
        f"/v1/customers/{customer}/recommendations", params={"n": 300, "exclude_seen": "false"}
    ).json()
    assert seen <= {i["item_id"] for i in with_seen["items"]}


def test_an_event_is_fsynced_before_201_and_the_next_recommendation_reflects_it(running, monkeypatch):
    events_path = running.store.root / "events.csv"
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        try:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            synced.append("?")

    monkeypatch.setattr(os, "fsync", recording_fsync)
    customer = "walk-in-42"
    before = running.client.get(f"/v1/customers/{customer}/recommendations", params={"n": 10}).json()
    assert before["strategy"] == "popularity"
    target = before["items"][0]["item_id"]  # the item they would have been shown
    reply = running.client.post(
        "/v1/events", json={"events": [{"customer_id": customer, "item_id": target, "event": "cart"}]}
    )
    assert reply.status_code == 201
    assert reply.json() == {"recorded": 1, "applied": 1, "unknown_items": []}
    assert str(events_path) in synced  # fsync ran on the event log before the reply came back
    frame, _ = read_interactions(events_path)
    assert frame.iloc[-1][["user_id", "item_id", "event"]].tolist() == [customer, target, "cart"]

    after = running.client.get(f"/v1/customers/{customer}/recommendations", params={"n": 10}).json()
    assert after["strategy"] == "model" and after["history_length"] == 1
    assert target not in [i["item_id"] for i in after["items"]]
    history = running.client.get(f"/v1/customers/{customer}/history").json()
    assert (
        history["known"]
        and history["items"][0]["item_id"] == target
        and history["items"][0]["event"] == "cart"
    )


def test_events_with_unknown_items_are_logged_but_not_applied(running):
    reply = running.client.post(
        "/v1/events",
        json={
            "events": [{"customer_id": "c9", "item_id": "i000002"}, {"customer_id": "c9", "item_id": "??"}]
        },
    ).json()
    assert reply == {"recorded": 2, "applied": 1, "unknown_items": ["??"]}
    frame, _ = read_interactions(running.store.root / "events.csv")
    assert frame["item_id"].tolist()[-2:] == ["i000002", "??"]


def test_events_survive_a_restart(serve, make_store):
    store = make_store()
    first = serve(store)
    first.client.post("/v1/events", json={"events": [{"customer_id": "back-again", "item_id": "i000010"}]})
    second = serve(store)  # a new process reading the same state dir
    history = second.client.get("/v1/customers/back-again/history").json()
    assert [i["item_id"] for i in history["items"]] == ["i000010"]


def test_metrics_expose_counts_latency_and_model_version(running):
    customer = known_customer(running)
    running.client.get(f"/v1/customers/{customer}/recommendations")
    running.client.get("/v1/customers/nobody/recommendations")
    running.client.post("/v1/events", json={"events": [{"customer_id": "m1", "item_id": "i000001"}]})
    httpx.get(running.url + "/v1/model")  # a 401
    text = running.client.get("/metrics").text
    route = "/v1/customers/{customer_id}/recommendations"
    assert f'fedrec_http_requests_total{{method="GET",route="{route}",status="200"}} 2.0' in text
    assert 'fedrec_http_requests_total{method="GET",route="/v1/model",status="401"} 1.0' in text
    assert f'fedrec_http_request_duration_seconds_bucket{{le="0.01",route="{route}"}}' in text
    assert 'fedrec_model_info{kind="transformer",origin="personalized",version="v000001"} 1.0' in text
    assert 'fedrec_recommendations_total{strategy="model"} 1.0' in text
    assert 'fedrec_recommendations_total{strategy="popularity"} 1.0' in text
    assert "fedrec_events_total 1.0" in text
    assert customer not in text  # route templates only: no customer id in metric labels


def test_an_internal_error_is_a_500_without_internals(running, monkeypatch):
    def boom(customer_id: str):
        raise RuntimeError("secret internals /srv/path")

    monkeypatch.setattr(running.services.histories, "snapshot", boom)
    reply = running.client.get("/v1/customers/x/history")
    assert reply.status_code == 500
    assert reply.json() == {"detail": "internal server error"}


def test_a_restart_with_an_empty_event_log_works(serve, make_store):
    store = make_store()
    serve(store)  # creates events.csv with only its header
    assert (store.root / "events.csv").read_text().count("\n") == 1
    again = serve(store)
    assert again.client.get("/ready").status_code == 200
