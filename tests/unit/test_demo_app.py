"""The demo Flask app through Flask's test client (no sockets): what it reports, and its endpoints."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from demo_app import MAX_SLOW_SECONDS, create_app

PROXY_HEADERS = {
    "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "example.test",
    "Via": "1.1 twotier", "X-Request-ID": "rid-1",
}


@pytest.fixture
def client():
    return create_app().test_client()


def test_whoami_reports_the_client_as_the_proxy_described_it(client):
    seen = client.get("/api/whoami", headers=PROXY_HEADERS, environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_json()
    assert seen["remote_addr"] == "203.0.113.7"
    assert seen["peer_addr"] == "127.0.0.1"
    assert seen["scheme"] == "https"
    assert seen["host"] == "example.test"
    assert seen["url"] == "https://example.test/api/whoami"  # url_for(_external=True) is the client's
    assert seen["request_id"] == "rid-1"
    assert seen["via"] == "1.1 twotier"
    assert seen["protocol"] == "HTTP/1.1"  # what the app tier speaks, whatever the client spoke to the proxy
    assert seen["worker_pid"] == os.getpid()
    assert seen["thread"] and seen["hostname"]
    assert seen["headers"]["X-Forwarded-For"] == "203.0.113.7"


def test_exactly_one_hop_is_trusted(client):
    # A client-written address in front of the proxy's is ignored: x_for=1 takes the last one.
    seen = client.get("/api/whoami", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}).get_json()
    assert seen["remote_addr"] == "203.0.113.7"


def test_without_a_proxy_the_peer_is_the_client(client):
    seen = client.get("/api/whoami", environ_base={"REMOTE_ADDR": "192.0.2.1"}).get_json()
    assert seen["remote_addr"] == seen["peer_addr"] == "192.0.2.1"
    assert seen["scheme"] == "http"


def test_upload_reports_fields_and_file(client):
    data = os.urandom(100_000)
    response = client.post("/api/upload", data={"note": "hi", "file": (io.BytesIO(data), "blob.bin")},
                           content_type="multipart/form-data")
    assert response.status_code == 200
    body = response.get_json()
    assert body["fields"] == {"note": "hi"}
    assert body["files"] == [{"field": "file", "filename": "blob.bin", "content_type": "application/octet-stream",
                              "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    assert body["read_ms"] >= 0


def test_upload_is_post_only(client):
    assert client.get("/api/upload").status_code == 405


def test_slow_is_capped_and_checked(client, monkeypatch):
    slept = []
    monkeypatch.setattr("demo_app.time.sleep", slept.append)
    assert client.get("/api/slow?seconds=0.25").get_json()["slept"] == 0.25
    assert client.get("/api/slow?seconds=100000").get_json()["slept"] == MAX_SLOW_SECONDS
    assert client.get("/api/slow?seconds=-3").get_json()["slept"] == 0.0
    assert slept == [0.25, MAX_SLOW_SECONDS, 0.0]
    bad = client.get("/api/slow?seconds=nan")
    assert bad.status_code == 400 and "seconds must be a number" in bad.get_json()["error"]
    assert client.get("/api/slow?seconds=soon").status_code == 400


def test_stream_has_no_length_so_it_is_sent_in_chunks(client, monkeypatch):
    monkeypatch.setattr("demo_app.time.sleep", lambda s: None)
    response = client.get("/api/stream?chunks=3&interval=0.5")
    assert response.is_streamed
    assert "Content-Length" not in response.headers
    lines = response.get_data(as_text=True).splitlines()
    assert [line.split(" from ")[0] for line in lines] == ["chunk 1 of 3", "chunk 2 of 3", "chunk 3 of 3"]


def test_error_is_a_500_from_the_app(client):
    response = client.get("/api/error")
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal server error", "raised_by": "demo_app",
                                   "detail": "this 500 comes from the app, on purpose"}


def test_flask_serves_no_static_files():
    app = create_app()
    assert app.static_folder is None
    assert app.test_client().get("/static/app.css").status_code == 404


def test_the_page_and_its_assets_exist_and_use_nothing_from_outside():
    from pathlib import Path

    static = Path(__file__).resolve().parents[2] / "demo_app" / "static"
    page = (static / "index.html").read_text()
    for asset in ("/static/app.css", "/static/app.js", "/static/tiers.svg"):
        assert asset in page
        assert (static / asset.removeprefix("/static/")).is_file()
    for name in ("index.html", "app.css", "app.js", "tiers.svg"):
        text = (static / name).read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, name


def test_wsgi_module_keeps_app():
    from flask import Flask

    from demo_app.wsgi import app

    assert isinstance(app, Flask)


def test_every_static_file_is_part_of_the_page():
    """The proxy serves whatever lies in demo_app/static: a leftover (an editor's backup, an old copy)
    would be served too. Every file there is index.html or named by one of the page's files."""
    static = os.path.join(os.path.dirname(create_app.__code__.co_filename), "static")
    files = sorted(os.listdir(static))
    page = "".join(open(os.path.join(static, name), encoding="utf-8").read()
                   for name in ("index.html", "app.js", "app.css"))
    assert [name for name in files if name != "index.html" and f"/static/{name}" not in page] == []


def test_tally_counts_posts_per_process_and_reports_the_body(client):
    assert client.get("/api/tally").get_json()["tally"] == 0
    for expected in (1, 2):
        response = client.post("/api/tally", data=b"hello", headers={"X-Request-ID": f"rid-{expected}"})
        assert response.status_code == 200
        body = response.get_json()
        assert body["tally"] == expected
        assert body["request_id"] == f"rid-{expected}"
        assert (body["bytes"], body["sha256"]) == (5, hashlib.sha256(b"hello").hexdigest())
        assert body["worker_pid"] == os.getpid()
    assert client.get("/api/tally").get_json()["tally"] == 2


def test_tally_without_a_request_id_makes_one_and_refuses_an_unprintable_one(client):
    made = client.post("/api/tally").get_json()["request_id"]
    assert len(made) == 32
    refused = client.post("/api/tally", headers={"X-Request-ID": "a b"})
    assert refused.status_code == 400
    assert "X-Request-ID" in refused.get_json()["error"]
    assert client.get("/api/tally").get_json()["tally"] == 1


def test_tally_folder_records_every_post_once_per_process(tmp_path):
    client = create_app(tally_folder=str(tmp_path)).test_client()
    for rid in ("one", "two", "one"):  # the same id twice is recorded twice: that is how duplicates show
        assert client.post("/api/tally", headers={"X-Request-ID": rid}).status_code == 200
    [record] = tmp_path.iterdir()
    assert record.name.endswith(f"-{os.getpid()}.ids")
    assert record.read_text().splitlines() == ["one", "two", "one"]


def test_wsgi_module_takes_the_tally_folder_from_the_environment(tmp_path, monkeypatch):
    import importlib

    import demo_app.wsgi

    monkeypatch.setenv("DEMO_TALLY_DIR", str(tmp_path))
    try:
        app = importlib.reload(demo_app.wsgi).app
        assert app.test_client().post("/api/tally", headers={"X-Request-ID": "env"}).status_code == 200
        assert [p.read_text() for p in tmp_path.iterdir()] == ["env\n"]
    finally:
        monkeypatch.delenv("DEMO_TALLY_DIR")
        importlib.reload(demo_app.wsgi)


def test_the_cached_report_says_it_may_be_cached_and_counts_what_the_app_made(client):
    first = client.get("/api/cached/report")
    assert first.headers["Cache-Control"] == "public, max-age=10, stale-while-revalidate=60"
    body = first.get_json()
    assert body["made_by_this_process"] == 1 and body["worker_pid"] == os.getpid()
    second = client.get("/api/cached/report")
    assert second.get_json()["made_by_this_process"] == 2
    assert first.headers["ETag"] != second.headers["ETag"]
