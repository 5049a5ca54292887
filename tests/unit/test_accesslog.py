"""The access log's two formats, from records: no sockets."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

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


def test_json_keys_have_one_type_each():
    # nginx users expect ISO 8601 times, and a status that is a number wherever it appears.
    one = json.loads(format_json(record(time=1764075775.1124, request_time=0.0123456789)))
    tried = json.loads(format_json(record(upstream_addr="127.0.0.1:8001, 127.0.0.1:8002",
                                          upstream_status="502, 200", upstream_connect_time=None)))
    static = json.loads(format_json(record(upstream_addr="", upstream_status="", upstream_connect_time=None,
                                           upstream_header_time=None, upstream_response_time=None)))
    assert one["time"] == datetime.fromtimestamp(1764075775.1124).astimezone().isoformat(timespec="milliseconds")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.112[+-]\d\d:\d\d", one["time"])
    assert one["request_time"] == 0.012 and one["upstream_response_time"] == 0.011
    assert (one["upstream_addr"], one["upstream_status"]) == (["127.0.0.1:8000"], [200])
    assert (tried["upstream_addr"], tried["upstream_status"]) == (["127.0.0.1:8001", "127.0.0.1:8002"], [502, 200])
    assert (static["upstream_addr"], static["upstream_status"], static["upstream_header_time"]) == ([], [], None)
    assert tried["upstream_connect_time"] is None and one["upstream_connect_time"] == 0.0
    for data in (tried, static):
        assert data.keys() == one.keys()
        for key, value in data.items():
            assert value is None or one[key] is None or type(value) is type(one[key]), key


def test_json_keys_are_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    table = doc[doc.index("<!-- json access log keys"):]
    documented = re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE)
    assert documented == list(json.loads(format_json(record())))


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
