"""RFC 9111 for the shared cache (proxy/http/cache.py), driven by a clock argument: no sleeping."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import config
from proxy.http import cache as rules
from proxy.http import codec
from proxy.http.static import http_date

T0 = 1_800_000_000.0  # a request's time: every test counts seconds from here


def head(target: bytes = b"/a", method: bytes = b"GET", headers=(), host: bytes = b"example.test"):
    fields = [(b"host", host), *headers]
    return codec.RequestHead(method=method, target=target, path=target.partition(b"?")[0].decode(),
                             query=target.partition(b"?")[2], host=host, http_version=b"1.1", headers=fields,
                             has_body=False, content_length=None, expect_continue=False, keep_alive=True)


def settings(**keys):
    return config.from_dict({"caches": {"c": keys}}, Path("/tmp/proxy.toml")).caches["c"]


def stored(cache_control: bytes | None = b"max-age=60", *extra, status: int = 200, request=(), received=T0,
           default_ttl: float = 0.0):
    headers = ([(b"cache-control", cache_control)] if cache_control is not None else []) + list(extra)
    return rules.storable(status, b"OK", request, headers, request_time=received, response_time=received,
                          default_ttl=default_ttl)


# --- Cache-Control ---------------------------------------------------------------------------

def test_directives_lower_case_unquoted_and_first_wins():
    found = rules.directives([(b"cache-control", b'Max-Age=60, no-cache="Set-Cookie, X", private'),
                              (b"cache-control", b"max-age=5, s-maxage = 30")])
    assert found == {b"max-age": b"60", b"no-cache": b"Set-Cookie, X", b"private": None, b"s-maxage": b"30"}


@pytest.mark.parametrize("value, seconds", [(b"60", 60), (b"0", 0), (b"99999999999", 2**31), (b"-1", None),
                                            (b"1.5", None), (b"", None), (None, None)])
def test_delta_seconds(value, seconds):
    assert rules.delta_seconds(value) == seconds


# --- what may be stored (RFC 9111 section 3) -------------------------------------------------

@pytest.mark.parametrize("response, reason", [
    ([(b"cache-control", b"no-store, max-age=60")], "no-store"),
    ([(b"cache-control", b"private, max-age=60")], "private"),
    ([(b"cache-control", b'private="x-user", max-age=60')], "private"),
    ([(b"cache-control", b"max-age=60"), (b"set-cookie", b"s=1")], "Set-Cookie"),
    ([(b"cache-control", b"max-age=60"), (b"vary", b"Accept, *")], "Vary: *"),
    ([], "no freshness information"),
    ([(b"last-modified", b"Tue, 01 Jan 2030 00:00:00 GMT")], "no freshness information"),  # no heuristics
    ([(b"cache-control", b"max-age=0")], "stale on arrival"),
    ([(b"expires", b"0")], "stale on arrival"),  # an invalid date is in the past
])
def test_not_storable(response, reason):
    verdict = rules.storable(200, b"OK", [], response, request_time=T0, response_time=T0)
    assert type(verdict) is str and reason in verdict


@pytest.mark.parametrize("status", [206, 303, 500, 502, 100])
def test_statuses_not_understood_are_not_stored(status):
    assert type(stored(b"max-age=60", status=status)) is str


@pytest.mark.parametrize("status", sorted(rules.UNDERSTOOD))
def test_understood_statuses_are_stored_with_explicit_freshness(status):
    assert stored(b"max-age=60", status=status).lifetime == 60


def test_an_authorized_request_is_stored_only_when_the_answer_says_it_may_be():
    authorized = [(b"authorization", b"Bearer x")]
    assert "authorized" in stored(b"max-age=60", request=authorized)
    for allowing in (b"public, max-age=60", b"max-age=60, must-revalidate", b"s-maxage=60"):
        assert type(stored(allowing, request=authorized)) is rules.Stored


def test_freshness_lifetime_order():
    """RFC 9111 4.2.1: s-maxage over max-age over Expires - Date; malformed max-age is stale."""
    assert stored(b"max-age=60, s-maxage=5").lifetime == 5
    expires = (b"expires", http_date(T0 + 300))
    assert stored(b"max-age=60", expires).lifetime == 60
    assert stored(None, expires).lifetime == 300
    date = (b"date", http_date(T0 - 100))
    assert stored(None, expires, date).lifetime == 400  # Expires - Date, not Expires - now
    assert stored(b"max-age=soon", (b"etag", b'"1"')).lifetime == 0


def test_default_ttl_applies_to_200_301_302_without_freshness_information():
    assert stored(None, default_ttl=30).lifetime == 30
    assert stored(None, status=301, default_ttl=30).lifetime == 30
    assert type(stored(None, status=404, default_ttl=30)) is str
    assert stored(b"max-age=5", default_ttl=30).lifetime == 5  # the upstream's word wins


def test_no_cache_with_a_validator_is_stored_and_always_revalidated():
    facts = stored(b"no-cache", (b"etag", b'"v1"'))
    assert facts.revalidate and facts.strict
    assert rules.freshness(facts, T0) == rules.MUST_VALIDATE
    assert type(stored(b"no-cache")) is str  # nothing to revalidate with


def test_stored_headers_leave_age_and_server_timing_out_and_keep_the_rest():
    facts = stored(b"max-age=60", (b"age", b"10"), (b"content-type", b"text/plain"), (b"server-timing", b"app;dur=1"))
    assert [name for name, _ in facts.headers] == [b"cache-control", b"content-type"]
    assert facts.age == 10


# --- age and freshness (RFC 9111 4.2) --------------------------------------------------------

def test_current_age_counts_the_age_received_the_delay_and_the_time_resident():
    facts = rules.storable(200, b"OK", [], [(b"cache-control", b"max-age=60"), (b"age", b"10")],
                           request_time=T0, response_time=T0 + 2)
    assert rules.current_age(facts, T0 + 2) == 12  # Age 10 + 2 s response delay
    assert rules.current_age(facts, T0 + 32) == 42
    assert rules.age_value(rules.born(facts), T0 + 32.9) == b"42"
    assert rules.fresh_until(facts) == T0 - 10 + 60
    assert rules.fresh_until(stored(b"no-cache", (b"etag", b'"1"'))) == float("-inf")
    dated = stored(b"max-age=60", (b"date", http_date(T0 - 20)))
    assert rules.current_age(dated, T0) == 20  # apparent age: received 20 s after its Date


def test_freshness_over_time():
    facts = stored(b"max-age=60")
    assert rules.freshness(facts, T0 + 59.9) == rules.FRESH
    assert rules.freshness(facts, T0 + 60) == rules.MUST_VALIDATE
    assert rules.freshness(facts, T0 + 1, revalidate=True) == rules.MUST_VALIDATE


def test_stale_while_revalidate_window():
    facts = stored(b"max-age=60, stale-while-revalidate=30")
    assert rules.freshness(facts, T0 + 30) == rules.FRESH
    assert rules.freshness(facts, T0 + 70) == rules.STALE_WHILE_REVALIDATE
    assert rules.freshness(facts, T0 + 95) == rules.MUST_VALIDATE
    plain = stored(b"max-age=60")
    assert rules.freshness(plain, T0 + 9999, use_stale=frozenset({"updating"})) == rules.STALE_WHILE_REVALIDATE


@pytest.mark.parametrize("forbidding", [b"must-revalidate", b"proxy-revalidate", b"s-maxage=60"])
def test_must_revalidate_and_friends_forbid_every_stale_answer(forbidding):
    facts = stored(b"max-age=60, stale-while-revalidate=30, stale-if-error=30, " + forbidding)
    assert rules.freshness(facts, T0 + 70, use_stale=frozenset({"updating"})) == rules.MUST_VALIDATE
    assert not rules.stale_on_error(facts, T0 + 70, "error", frozenset({"error"}))


def test_stale_on_error():
    facts = stored(b"max-age=60, stale-if-error=30")
    assert rules.stale_on_error(facts, T0 + 80, "http_503", frozenset())  # RFC 5861: within the window
    assert not rules.stale_on_error(facts, T0 + 100, "http_503", frozenset())
    assert rules.stale_on_error(facts, T0 + 100, "http_503", frozenset({"http_503"}))  # use_stale: any age
    assert not rules.stale_on_error(facts, T0 + 100, "timeout", frozenset({"http_503"}))


# --- variants (RFC 9111 4.1) -----------------------------------------------------------------

def test_vary_names_and_variants():
    assert rules.vary_names([(b"vary", b"Accept-Language, accept"), (b"vary", b"Cookie")]) == (
        b"accept", b"accept-language", b"cookie")
    assert rules.vary_names([(b"vary", b"accept, *")]) is None
    names = (b"accept", b"accept-language")
    one = rules.variant(names, [(b"accept", b"text/html ,  application/json"), (b"accept-language", b"de")])
    same = rules.variant(names, [(b"accept", b"text/html"), (b"accept", b"application/json"),
                                 (b"accept-language", b"de")])
    assert one == same  # lines combined, whitespace around commas normalised
    absent = rules.variant(names, [(b"accept", b"text/html,application/json")])
    empty = rules.variant(names, [(b"accept", b"text/html,application/json"), (b"accept-language", b"")])
    assert len({one, absent, empty}) == 3


# --- validation (RFC 9111 4.3) ---------------------------------------------------------------

def test_validators_for_revalidation():
    facts = stored(b"max-age=60", (b"etag", b'W/"v1"'), (b"last-modified", b"Tue, 01 Jan 2030 00:00:00 GMT"))
    assert rules.validators(facts) == [(b"if-none-match", b'W/"v1"'),
                                       (b"if-modified-since", b"Tue, 01 Jan 2030 00:00:00 GMT")]


def test_a_304_refreshes_the_stored_response():
    facts = stored(b"max-age=60", (b"etag", b'"v1"'), (b"content-type", b"text/plain"), (b"x-old", b"1"),
                   (b"content-length", b"5"))
    later = rules.refreshed(facts, [(b"cache-control", b"max-age=120"), (b"etag", b'"v1"'), (b"x-old", b"2"),
                                    (b"content-length", b"0")], request_time=T0 + 100, response_time=T0 + 101)
    assert later.lifetime == 120 and later.response_time == T0 + 101
    assert rules.freshness(later, T0 + 200) == rules.FRESH
    fields = dict(later.headers)
    assert fields[b"x-old"] == b"2" and fields[b"content-type"] == b"text/plain"
    assert fields[b"content-length"] == b"5"  # framing describes the stored body: never updated


def test_a_304_for_another_representation_or_forbidding_storage_does_not_refresh():
    facts = stored(b"max-age=60", (b"etag", b'"v1"'))
    other = rules.refreshed(facts, [(b"etag", b'"v2"')], request_time=T0, response_time=T0)
    assert "another representation" in other
    gone = rules.refreshed(facts, [(b"cache-control", b"no-store")], request_time=T0, response_time=T0)
    assert "no-store" in gone


def test_client_conditionals_answered_from_the_entry():
    facts = stored(b"max-age=60", (b"etag", b'"v1"'), (b"last-modified", b"Tue, 01 Jan 2030 00:00:00 GMT"))
    assert rules.not_modified(facts, [(b"if-none-match", b'"v0", W/"v1"')])
    assert rules.not_modified(facts, [(b"if-none-match", b"*")])
    assert not rules.not_modified(facts, [(b"if-none-match", b'"v2"'),
                                          (b"if-modified-since", b"Wed, 01 Jan 2031 00:00:00 GMT")])
    assert rules.not_modified(facts, [(b"if-modified-since", b"Wed, 01 Jan 2031 00:00:00 GMT")])
    assert not rules.not_modified(facts, [(b"if-modified-since", b"Mon, 01 Jan 2029 00:00:00 GMT")])
    assert not rules.not_modified(facts, [])
    not_found = stored(b"max-age=60", (b"etag", b'"v1"'), status=404)
    assert not rules.not_modified(not_found, [(b"if-none-match", b'"v1"')])
    assert dict(rules.not_modified_headers(facts)).keys() == {b"cache-control", b"etag", b"last-modified"}


# --- what a request asks of the cache --------------------------------------------------------

def test_use_looks_up_gets_and_heads_with_the_default_key():
    for method in (b"GET", b"HEAD"):
        use = rules.use(head(b"/a?x=1", method), b"http", settings())
        assert (use.mode, use.key, use.uri) == ("lookup", b"httpexample.test/a?x=1", b"http://example.test/a?x=1")


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"PATCH", b"PROPFIND"])
def test_unsafe_methods_invalidate(method):
    use = rules.use(head(method=method), b"https", settings())
    assert use.mode == "invalidate" and use.uri == b"https://example.test/a"


@pytest.mark.parametrize("field", [(b"authorization", b"Basic eDp5"), (b"range", b"bytes=0-1")])
def test_authorization_and_range_bypass(field):
    assert rules.use(head(headers=[field]), b"http", settings()).mode == "bypass"
    assert rules.use(head(method=b"OPTIONS"), b"http", settings()).mode == "bypass"


def test_client_no_cache_is_ignored_by_default_and_honoured_on_request():
    asking = [(b"cache-control", b"no-cache")]
    assert not rules.use(head(headers=asking), b"http", settings()).revalidate
    honouring = settings(client_no_cache="revalidate")
    assert rules.use(head(headers=asking), b"http", honouring).revalidate
    assert rules.use(head(headers=[(b"cache-control", b"max-age=0")]), b"http", honouring).revalidate
    assert rules.use(head(headers=[(b"pragma", b"no-cache")]), b"http", honouring).revalidate
    assert not rules.use(head(headers=[(b"pragma", b"no-cache"), (b"cache-control", b"max-age=5")]),
                         b"http", honouring).revalidate
    assert rules.use(head(headers=[(b"cache-control", b"no-store")]), b"http", honouring).no_store


def test_key_templates():
    request = head(b"/p?q=1", headers=[(b"accept-language", b"de"), (b"cookie", b"a=1; session=abc; b=2")])
    assert rules.KeyTemplate("$scheme$host$request_uri").build(request, b"http") == b"httpexample.test/p?q=1"
    assert rules.KeyTemplate("$host$uri|${args}|$http_accept_language|$cookie_session").build(
        request, b"http") == b"example.test/p|q=1|de|abc"
    assert rules.KeyTemplate("$uri$cookie_missing").build(request, b"http") == b"/p"
    for bad in ("$nope", "static text", "$http_"):
        with pytest.raises(ValueError):
            rules.KeyTemplate(bad)


def test_invalidated_uris_follow_location_on_the_same_origin():
    uris = rules.invalidated_uris(b"http://h/a", b"http", b"h", [(b"location", b"/b"),
                                                                (b"content-location", b"http://other/c")])
    assert uris == [b"http://h/a", b"http://h/b"]
    assert rules.invalidates(b"POST", 201) and rules.invalidates(b"DELETE", 302)
    assert not rules.invalidates(b"POST", 500) and not rules.invalidates(b"GET", 200)
