"""The access log's two formats, from records: no sockets."""

from __future__ import annotations

import json

from proxy.accesslog import AccessRecord, format_combined, format_json


def record(**changes) -> AccessRecord:
    values = dict(remote_addr="192.0.2.7", time=0.0, request="GET /x HTTP/1.1", status=200, body_bytes_sent=5,
                  referer="", user_agent="curl/8", request_time=0.0123, request_id="rid-1", route="/",
                  handler="proxy", upstream_addr="127.0.0.1:8000", upstream_status="200",
                  upstream_connect_time=0.0, upstream_header_time=0.01, upstream_response_time=0.011)
    values.update(changes)
    return AccessRecord(**values)


def test_combined_line_fields():
    line = format_combined(record())
    assert line.startswith('192.0.2.7 - - [')
    assert '"GET /x HTTP/1.1" 200 5 "-" "curl/8" rt=0.012 uaddr=127.0.0.1:8000 us=200 ut=0.011 rid=rid-1' in line


def test_combined_escapes_what_could_forge_a_field_or_a_line():
    # Header values reach the record decoded as Latin-1; \\x85 is NEL, a line break to str.splitlines().
    line = format_combined(record(user_agent='x\x85" 500 1 "-" "fake', referer="a\\b\x1bc\xe9"))
    assert len(line.splitlines()) == 1
    assert '"x\\x85\\x22 500 1 \\x22-\\x22 \\x22fake"' in line
    assert '"a\\x5Cb\\x1Bc\\xE9"' in line


def test_json_line_round_trips():
    data = json.loads(format_json(record(user_agent='say "hi"\x85')))
    assert data["user_agent"] == 'say "hi"\x85' and data["status"] == 200


def test_reopen_follows_the_name_after_rotation(tmp_path):
    from proxy.accesslog import AccessLog, reopen_access_logs

    path = tmp_path / "logs" / "access.log"
    path.parent.mkdir()
    log = AccessLog(str(path), "combined")
    try:
        log.write(record(request="GET /one HTTP/1.1"))
        path.rename(tmp_path / "logs" / "access.log.1")
        assert reopen_access_logs() == []
        log.write(record(request="GET /two HTTP/1.1"))
        assert "/one" in (tmp_path / "logs" / "access.log.1").read_text() and "/two" in path.read_text()
        path.parent.rename(tmp_path / "rotated")  # nowhere to reopen: said, and the old file keeps the lines
        assert reopen_access_logs() == [f"cannot reopen {path}: No such file or directory"]
        log.write(record(request="GET /three HTTP/1.1"))
        assert "/three" in (tmp_path / "rotated" / "access.log").read_text()
    finally:
        log.close()
    assert reopen_access_logs() == []  # a closed log is forgotten
