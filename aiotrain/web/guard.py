"""Who may talk to an aiotrain server: Host, Origin, body type and token checks, written once.

The dashboard and the job service answer a browser, and a browser also runs pages from other
sites. Those pages can send requests to ``localhost`` (cross-site request forgery) and can point
a DNS name of theirs at 127.0.0.1 to read the answers (DNS rebinding). :class:`Guard` refuses:

- a ``Host`` that is not one of the names the server answers to (rebinding sends the attacker's
  name), 421 with one line naming the allowed names;
- a foreign ``Origin`` (another site, or ``null``) and a cross-site subresource request
  (``Sec-Fetch-Site`` cross-site or same-site outside a navigation), 403;
- a state-changing request (POST, PUT, PATCH) whose body is not ``application/json``: a page
  can send ``text/plain`` without asking, JSON only after a CORS preflight this server never
  grants, 415;
- when a token is set, any request without it (``Authorization: Bearer TOKEN``, or the cookie
  that ``?token=TOKEN`` exchanges it for), 401; a request that arrives on a network (not
  loopback) address of a server without a token, 403.

The checks are pure functions of the request's method, headers and the server's names: the
aiohttp and ASGI faces call the same :meth:`Guard.check`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from .http import Request, Response, error_response

__all__ = ["LOOPBACK_NAMES", "Guard", "host_name", "is_loopback", "is_wildcard"]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def host_name(value: str) -> str | None:
    """The host of a ``Host`` header or URL authority, lower case, without port or final dot
    (``[::1]:8080`` -> ``::1``); None when it cannot be parsed."""
    value = value.strip()
    if not value or any(c in value for c in "/@?# \t"):
        return None
    try:
        parts = urlsplit("//" + value)
        name = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def _port(value: str, default: int | None) -> int | None:
    try:
        return urlsplit("//" + value.strip()).port or default
    except ValueError:
        return None


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only: ``localhost`` or loopback."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    ip = _ip(name)
    return ip is not None and ip.is_loopback


def is_wildcard(host: str) -> bool:
    """Whether binding to ``host`` listens on every interface (``0.0.0.0``, ``::``, empty)."""
    ip = _ip(host.strip("[]")) if host else None
    return not host or (ip is not None and ip.is_unspecified)


@dataclass(frozen=True)
class Guard:
    """The names a server answers to and the token it requires (None: none).

    ``any_ip``: a server bound to every interface also answers to a Host that is an IP address
    (rebinding needs a DNS name; a client that typed the address is talking to this server).
    Build one with :meth:`for_bind`, which also decides whether a token is needed.
    """

    hosts: frozenset[str] = LOOPBACK_NAMES
    token: str | None = None
    any_ip: bool = False

    @classmethod
    def for_bind(cls, host: str, *, allowed_hosts: Iterable[str] = (),
                 token: str | None = None) -> Guard:
        """The guard of a server bound to ``host``: it answers to the loopback names, ``host``
        itself and ``allowed_hosts``. A non-loopback ``host`` needs a token: ``token``, or a
        new random one (read it from ``.token`` and show it to the user once)."""
        names = set(LOOPBACK_NAMES) | {h.lower().rstrip(".") for h in allowed_hosts}
        wildcard = is_wildcard(host)
        if wildcard:
            names.add(socket.gethostname().lower())
        elif host:
            names.add(host.strip("[]").lower().rstrip("."))
        if token is None and not is_loopback(host or "0.0.0.0"):
            token = secrets.token_urlsafe(24)
        return cls(frozenset(names), token, wildcard)

    # the checks --------------------------------------------------------------------------------
    def check(self, request: Request) -> Response | None:
        """None when ``request`` may be served; else the answer to send instead (a one-line
        refusal, or the redirect that turns ``?token=`` into a cookie)."""
        headers = request.headers
        refusal = self.check_host(headers.get("host", "")) or self.check_origin(request.method, headers)
        if refusal is None:
            refusal = self.check_token(request)
        if refusal is None and request.method in _BODY_METHODS:
            refusal = _check_json_body(headers)
        return refusal

    def answers_to(self, name: str) -> bool:
        """Whether ``name`` (a host name, no port) is one this server answers to."""
        return name in self.hosts or (self.any_ip and _ip(name) is not None)

    def check_host(self, host: str) -> Response | None:
        """421 unless the Host header names this server (DNS rebinding sends another name)."""
        name = host_name(host)
        if name is not None and self.answers_to(name):
            return None
        return error_response(421, f"Host {host[:100]!r} is not a name this server answers to "
                                   f"({', '.join(sorted(self.hosts))}); add it to the allowed hosts "
                                   "(--allow-host / allowed_hosts=) if it is yours")

    def check_origin(self, method: str, headers: Mapping[str, str]) -> Response | None:
        """403 for a request sent by a page of another site (by Origin or Sec-Fetch-Site)."""
        origin = headers.get("origin")
        if origin is not None:
            parts = urlsplit(origin)
            name = host_name(parts.netloc) if parts.scheme in ("http", "https") else None
            default = 443 if parts.scheme == "https" else 80
            if (name is None or not self.answers_to(name)
                    or _port(parts.netloc, default) != _port(headers.get("host", ""), default)):
                return error_response(403, f"Origin {origin[:100]!r} is another site: requests "
                                           "from other sites' pages are refused")
        site = headers.get("sec-fetch-site", "")
        if site in ("cross-site", "same-site") and (
                method not in _SAFE_METHODS or headers.get("sec-fetch-mode") != "navigate"):
            return error_response(403, f"a {site} request from another page is refused "
                                       "(open this server's own page instead)")
        return None

    def check_token(self, request: Request) -> Response | None:
        """None without a token or with the right one; a redirect that stores a right
        ``?token=`` in a cookie; 401 otherwise; 403 for a network request to a tokenless server."""
        if self.token is None:
            if request.local is not None and not is_loopback(request.local):
                return error_response(403, f"this server has no token but the request arrived on "
                                           f"the network address {request.local}; give it a token "
                                           "(token=...) to serve the network")
            return None
        given = _bearer(request.headers.get("authorization", "")) or _cookie(
            request.headers.get("cookie", ""), self.cookie_name)
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        from_query = request.arg("token")
        if from_query is not None and hmac.compare_digest(from_query.encode(), self.token.encode()):
            rest = urlencode([(k, v) for k, v in request.query if k != "token"])
            here = (request.path.rsplit("/", 1)[-1] or "./") + (f"?{rest}" if rest else "")
            return Response(303, b"", headers={
                "Location": here,
                "Set-Cookie": f"{self.cookie_name}={self.token}; HttpOnly; SameSite=Strict; Path=/"})
        return error_response(401, "this server needs its token: open the URL it printed at start "
                                   "(?token=...) or send 'Authorization: Bearer TOKEN'",
                              {"WWW-Authenticate": "Bearer"})

    @property
    def cookie_name(self) -> str:
        """The token's cookie, named after the token (servers on one host keep theirs apart)."""
        digest = hashlib.sha256((self.token or "").encode()).hexdigest()[:10]
        return f"aiotrain-token-{digest}"


def _check_json_body(headers: Mapping[str, str]) -> Response | None:
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        return None
    return error_response(415, f"the body must be application/json, not {kind or 'untyped'!r}")


def _bearer(value: str) -> str | None:
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() in ("bearer", "token") else None


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
