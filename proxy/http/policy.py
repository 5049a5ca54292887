"""A route's request policy, prepared once: limits, access control, authentication, rewriting, headers, pages.

``RoutePolicy`` holds what a route's policy keys (config.Route) need at
request time, built when a worker starts (or reloads): header rules split
into literal and templated values, error pages read into memory, the users
of an htpasswd file, the shared-memory zones of its limits. ``decide.py``
asks it, in nginx's order of phases, and returns what it says as actions:

1. ``rate_limit`` (nginx limit_req, preaccess): 429 with Retry-After, or a
   delay before the request is carried out.
2. ``conn_limit`` (nginx limit_conn, preaccess): 429 (or 503) beyond it; the
   count is held until the request ends (``Applied.hold``).
3. ``deny`` / ``allow`` (nginx access): 403; deny wins.
4. ``basic_auth`` (nginx auth_basic, access): 401 with a challenge. Checking
   a password costs a bcrypt computation (milliseconds by design), so a
   password not already known good is checked off the event loop (the
   ``Check`` action); good credentials are remembered, by an HMAC of the
   header under a per-process key, so a keep-alive client pays once.
5. The content: ``redirect``, or static/forward with ``strip_prefix`` and
   ``upstream_prefix`` rewriting the target the upstream receives.

Limits come first so that a client guessing passwords is slowed down by
them; the redirect is the route's content, so every check applies to it.
``response_headers`` and ``error_pages`` apply to every response of the
route, the proxy's own errors included (nginx ``add_header ... always``).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import logging
import os
from collections import OrderedDict

from ..config import HeaderRules, Route, matching_network
from .placeholders import Vars, host_name, raw_remainder
from .static import content_type

log = logging.getLogger("proxy")

AUTHORIZATION = b"authorization"
GOOD_CREDENTIALS_KEPT = 1024  # per worker, per route


class Rules:
    """One ``HeaderRules`` table, ready to apply: remove, then set (replacing), then add."""

    __slots__ = ("drop", "set", "add", "dynamic", "fixed")

    def __init__(self, rules: HeaderRules, also_remove: tuple[bytes, ...] = ()) -> None:
        self.drop = frozenset(rules.remove) | {name for name, _ in rules.set} | frozenset(also_remove)
        self.set = rules.set
        self.add = rules.add
        self.dynamic = any(template.literal is None for _, template in (*rules.set, *rules.add))
        # Without placeholders the headers to append are the same for every request: made once.
        self.fixed = None if self.dynamic else [(name, t.literal) for name, t in (*rules.set, *rules.add)]

    def __repr__(self) -> str:
        return f"<Rules drop={sorted(self.drop)} set={len(self.set)} add={len(self.add)}>"

    def apply(self, headers: list[tuple[bytes, bytes]], values: Vars | None) -> list[tuple[bytes, bytes]]:
        drop = self.drop
        out = [field for field in headers if field[0] not in drop]
        fixed = self.fixed
        if fixed is not None:
            out += fixed
            return out
        for name, template in self.set:
            out.append((name, template.expand(values)))
        for name, template in self.add:
            out.append((name, template.expand(values)))
        return out

    def describe(self, values: Vars) -> list[str]:
        """One line per rule, for explain."""
        lines = [f"remove {name.decode()}" for name in sorted(self.drop - {n for n, _ in self.set})]
        lines += [f"set {name.decode()}: {template.expand(values).decode('latin-1')}" for name, template in self.set]
        lines += [f"add {name.decode()}: {template.expand(values).decode('latin-1')}" for name, template in self.add]
        return lines


class Pages:
    """``error_pages``: status -> (body, Content-Type), an exact status before its class ("5xx")."""

    __slots__ = ("exact", "classes", "files")

    def __init__(self, pages: tuple) -> None:
        self.exact: dict[int, tuple[bytes, bytes]] = {}
        self.classes: dict[int, tuple[bytes, bytes]] = {}
        self.files: dict[str, str] = {}
        for code, path in pages:
            page = (path.read_bytes(), content_type(path.name))
            self.files[code] = str(path)
            if code.endswith("xx"):
                self.classes[int(code[0])] = page
            else:
                self.exact[int(code)] = page

    def __repr__(self) -> str:
        return f"<Pages {sorted(self.files)}>"

    def get(self, status: int) -> tuple[bytes, bytes] | None:
        page = self.exact.get(status)
        return page if page is not None else self.classes.get(status // 100)

    def file(self, status: int) -> str | None:
        code = str(status)
        return self.files.get(code) or self.files.get(f"{code[0]}xx")


def limit_key(kind: str, head, client_ip: str) -> str | None:
    """The value a limit counts by (``client_ip``, ``host``, ``header:NAME``); None: not counted."""
    if kind == "client_ip":
        return client_ip
    if kind == "host":
        return host_name(head.host).decode("latin-1")
    value = head.get(kind[7:].encode())
    return None if value is None else value.decode("latin-1")


class Credentials:
    """A user and password from an Authorization header, to check against the route's users file."""

    __slots__ = ("auth", "user", "password", "token")

    def __init__(self, auth: "Authenticator", user: str, password: bytes, token: bytes) -> None:
        self.auth = auth
        self.user = user
        self.password = password
        self.token = token

    def __repr__(self) -> str:
        return f"<Credentials {self.user!r}>"

    def verify(self) -> bool:
        """bcrypt: milliseconds of CPU by design. The server calls it in a thread (bcrypt releases the GIL)."""
        return self.auth.verify(self.user, self.password)


class Authenticator:
    """``basic_auth`` (RFC 7617): the users of an htpasswd file, and the credentials already found good."""

    __slots__ = ("settings", "users", "challenge", "_good", "_key", "_dummy")

    def __init__(self, settings) -> None:
        self.settings = settings
        self.users = dict(settings.users_file.users)
        self.challenge = ((b"www-authenticate", b'Basic realm="%s", charset="UTF-8"' % settings.realm.encode()),)
        self._good: OrderedDict[bytes, str] = OrderedDict()
        self._key = os.urandom(32)
        self._dummy: bytes | None = None

    def __repr__(self) -> str:
        return f"<Authenticator realm={self.settings.realm!r} users={len(self.users)}>"

    def credentials(self, head) -> Credentials | str:
        """The credentials the request carries, or why there are none (a reason for the 401)."""
        header = head.get(AUTHORIZATION)
        if header is None:
            return "no credentials"
        scheme, _, encoded = header.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return "credentials are not Basic"
        try:
            decoded = binascii.a2b_base64(encoded.strip(), strict_mode=True)
        except (binascii.Error, ValueError):
            return "credentials are not valid base64"
        user, sep, password = decoded.partition(b":")
        if not sep:
            return "credentials have no ':' between user and password"
        token = hmac.new(self._key, header, hashlib.sha256).digest()
        return Credentials(self, user.decode("utf-8", "replace"), password, token)

    def known_good(self, credentials: Credentials) -> bool:
        """Checked good before: no bcrypt again (the token is an HMAC, so no password is kept)."""
        user = self._good.get(credentials.token)
        if user is None:
            return False
        self._good.move_to_end(credentials.token)
        return True

    def remember(self, credentials: Credentials) -> None:
        self._good[credentials.token] = credentials.user
        if len(self._good) > GOOD_CREDENTIALS_KEPT:
            self._good.popitem(last=False)

    def verify(self, user: str, password: bytes) -> bool:
        import bcrypt

        hashed = self.users.get(user)
        if hashed is None:
            # The same work for an unknown user as for a wrong password, so timing tells no names apart.
            if self._dummy is None:
                cost = int(next(iter(self.users.values()), b"$2b$10$")[4:6])
                self._dummy = bcrypt.hashpw(b"-", bcrypt.gensalt(cost))
            bcrypt.checkpw(password, self._dummy)
            return False
        return bcrypt.checkpw(password, hashed)  # compares in constant time

    def failed(self, user: str, client_ip: str, request_line: str) -> None:
        known = "wrong password" if user in self.users else "unknown user"
        log.warning("basic auth failed (%s) for user %r from %s: %s (realm %r)", known, user, client_ip,
                    request_line, self.settings.realm)


class Applied:
    """A route's policy as applied to one request: what the server still needs once the action runs."""

    __slots__ = ("policy", "hold")

    def __init__(self, policy: "RoutePolicy", hold: int | None = None) -> None:
        self.policy = policy
        self.hold = hold  # the conn_limit key counted for this request, released when it ends

    def __repr__(self) -> str:
        return f"<Applied {self.policy.route.where} hold={self.hold is not None}>"

    def release(self) -> None:
        if self.hold is not None:
            self.policy.conns.release(self.hold)
            self.hold = None


class RoutePolicy:
    """Everything one route's policy keys need at request time (see the module docstring)."""

    __slots__ = ("route", "prefix", "allow", "deny", "auth", "rate", "conns", "rewrite", "upstream_prefix",
                 "request_rules", "response_rules", "pages", "intercept", "plain", "_access")

    def __init__(self, route: Route, zones, rate_limits) -> None:
        self.route = route
        self.prefix = route.prefix
        self.allow = route.allow
        self.deny = route.deny
        self.auth = Authenticator(route.basic_auth) if route.basic_auth is not None else None
        self.rate = zones.rate(rate_limits[route.rate_limit]) if route.rate_limit else None
        self.conns = zones.conns() if route.conn_limit else None
        self.rewrite = route.strip_prefix or bool(route.upstream_prefix)
        self.upstream_prefix = (route.upstream_prefix or "/").encode()
        hidden = (AUTHORIZATION,) if route.basic_auth is not None and not route.basic_auth.forward_auth else ()
        self.request_rules = Rules(route.request_headers, hidden) if route.request_headers or hidden else None
        self.response_rules = Rules(route.response_headers) if route.response_headers else None
        self.pages = Pages(route.error_pages) if route.error_pages else None
        self.intercept = route.intercept_errors
        self.plain = Applied(self)  # shared by the requests that hold nothing
        self._access: dict[str, str | None] = {}  # client address -> why it is refused (clients repeat)

    def __repr__(self) -> str:
        return f"<RoutePolicy {self.route.where}>"

    # --- access ---

    def refuses(self, client_ip: str) -> str | None:
        """Why ``client_ip`` gets 403 (deny wins over allow), or None."""
        known = self._access
        if client_ip in known:
            return known[client_ip]
        if len(known) >= 4096:
            known.clear()
        why = known[client_ip] = self._refuses(client_ip)
        return why

    def _refuses(self, client_ip: str) -> str | None:
        denied = matching_network(client_ip, self.deny)
        if denied is not None:
            return f"{client_ip} is in deny {denied}"
        if not self.allow or matching_network(client_ip, self.allow) is not None:
            return None
        return f"{client_ip} is not in allow ({', '.join(str(n) for n in self.allow)})"

    def allowed_by(self, client_ip: str) -> str:
        network = matching_network(client_ip, self.allow)
        return f"{client_ip} is in allow {network}" if network is not None else f"{client_ip} is not denied"

    # --- rewriting ---

    def target(self, head) -> bytes:
        """The request target the upstream receives (strip_prefix, upstream_prefix); the query as sent."""
        if not self.rewrite:
            return head.target
        path, sep, query = head.target.partition(b"?")
        rest = raw_remainder(head, self.prefix) if self.route.strip_prefix else path
        front = self.upstream_prefix
        if front.endswith(b"/") and rest.startswith(b"/"):
            joined = front + rest[1:]
        elif not front.endswith(b"/") and rest and not rest.startswith(b"/"):
            joined = front + b"/" + rest
        else:
            joined = front + rest
        return joined + sep + query

    # --- responses ---

    def page(self, status: int) -> tuple[bytes, bytes] | None:
        return self.pages.get(status) if self.pages is not None else None

    def intercepts(self, status: int) -> tuple[bytes, bytes] | None:
        """The page that replaces an upstream's error response with this status, or None."""
        return self.pages.get(status) if self.intercept and status >= 400 else None

