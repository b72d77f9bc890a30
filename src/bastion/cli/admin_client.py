"""The identity commands' REMOTE mode: the admin REST API of a running gateway, with the standard library
only (the CLI needs no HTTP client dependency).

The admin key goes only to the URL given: redirects are refused (urllib would repeat the Authorization
header to wherever they point) and proxy settings from the environment are ignored.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from bastion import __version__
from bastion.cli.backend import CliError, NotFoundError, Record

_TIMEOUT = 15.0
_MAX_BODY = 64 * 1024 * 1024
_API = "/admin/v1"
_PAGE = 1000


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        raise CliError(f"the admin API answered with a redirect ({code}); give its final URL with --admin-url")


def check_admin_url(url: str) -> str:
    """The base URL without a trailing slash; usage error when it is not a plain http(s) URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError("--admin-url must be an http:// or https:// URL, e.g. http://127.0.0.1:9090", 2)
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise CliError("--admin-url takes no credentials, query or fragment (the key comes from "
                       "BASTION_ADMIN_KEY or --admin-key-file)", 2)
    return url.rstrip("/")


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _printable(text: str, limit: int = 500) -> str:
    # The server's words reach a terminal: no control characters, no flood.
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit] + "…"


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class AdminClient:
    def __init__(self, base_url: str, key: str, *, timeout: float = _TIMEOUT) -> None:
        self.base_url = check_admin_url(base_url)
        self._key = key
        self._timeout = timeout
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({}), _NoRedirects()]
        if self.base_url.startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context()))
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return f"AdminClient({self.base_url!r})"

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                body: Mapping[str, Any] | None = None) -> Any:
        """The decoded JSON answer (None for an empty one); CliError with the problem's detail otherwise."""
        url = self.base_url + _API + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None if body is None else json.dumps(body).encode("utf-8")
        # S310: check_admin_url admits only http and https.
        request = urllib.request.Request(url, data=data, method=method, headers={  # noqa: S310
            "Authorization": f"Bearer {self._key}",
            "Accept": "application/json, application/problem+json",
            "User-Agent": f"bastion-cli/{__version__}",
            **({"Content-Type": "application/json"} if data is not None else {}),
        })
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                raw = response.read(_MAX_BODY + 1)
        except urllib.error.HTTPError as exc:
            raise _problem(exc) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
            raise CliError(f"cannot reach the admin API at {self.base_url}: {_printable(text, 200)}") from None
        except TimeoutError:
            raise CliError(f"the admin API at {self.base_url} did not answer within {self._timeout:g} s") \
                from None
        except OSError as exc:
            raise CliError(f"the admin API connection failed: {_printable(str(exc.strerror or exc), 200)}") \
                from None
        if len(raw) > _MAX_BODY:
            raise CliError("the admin API's answer is too large")
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CliError("the admin API's answer is not JSON (is --admin-url the admin listener?)") from None


def _problem(exc: urllib.error.HTTPError) -> CliError:
    status = exc.code
    try:
        body = json.loads(exc.read(1024 * 1024) or b"null")
    except (ValueError, OSError):
        body = None
    finally:
        exc.close()
    detail = code = None
    errors: list[str] = []
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title")
        code = body.get("code")
        raw_errors = body.get("errors")
        if isinstance(raw_errors, list):
            for item in raw_errors[:20]:
                if isinstance(item, str):
                    errors.append(_printable(item, 300))
                elif isinstance(item, dict) and item.get("field"):  # field-less ones repeat the detail
                    errors.append(_printable(f"{item['field']}: {item.get('message', '')}", 300))
    message = _printable(str(detail)) if detail else f"the admin API answered HTTP {status}"
    if code:
        message += f" ({_printable(str(code), 80)})"
    if status == 401:
        message += "\nthe admin key was not accepted: check BASTION_ADMIN_KEY or --admin-key-file"
    elif code in ("admin.not_found", "route.not_found"):
        message += "\nis --admin-url the admin listener (e.g. http://127.0.0.1:9090), without a path?"
    lines = "\n".join([message, *errors])
    return NotFoundError(lines) if status == 404 else CliError(lines)


def _items(answer: Any) -> list[Record]:
    """The records of a list answer: ``{"items": [...], "next": cursor}``."""
    items = answer.get("items") if isinstance(answer, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise CliError("the admin API's answer is not a list of records")
    return items


def _record(answer: Any) -> Record:
    if not isinstance(answer, dict):
        raise CliError("the admin API's answer is not an object")
    return answer


class RemoteBackend:
    def __init__(self, base_url: str, key: str) -> None:
        self.client = AdminClient(base_url, key)

    async def close(self) -> None:
        """Nothing to release: every call is its own connection."""

    # -- consumers -----------------------------------------------------------------------------------

    async def list_consumers(self) -> list[Record]:
        records: list[Record] = []
        after: str | None = None
        while True:
            answer = self.client.request("GET", "/consumers", query={"limit": _PAGE, "after": after})
            page = _items(answer)
            records.extend(page)
            cursor = answer.get("next") if isinstance(answer, dict) else None
            if not page or len(page) < _PAGE or not isinstance(cursor, str) or cursor == after:
                return records
            after = cursor

    async def find_consumer(self, ref: str) -> Record:
        try:  # the API takes an id or a name
            return _record(self.client.request("GET", f"/consumers/{_quote(ref)}"))
        except NotFoundError:
            raise NotFoundError(f"no consumer with the name or id {ref!r}") from None

    async def create_consumer(self, fields: Mapping[str, Any]) -> Record:
        return _record(self.client.request("POST", "/consumers", body=fields))

    async def update_consumer(self, consumer_id: str, changes: Mapping[str, Any]) -> Record:
        return _record(self.client.request("PATCH", f"/consumers/{_quote(consumer_id)}", body=changes))

    async def delete_consumer(self, consumer_id: str) -> None:
        self.client.request("DELETE", f"/consumers/{_quote(consumer_id)}")

    # -- roles ---------------------------------------------------------------------------------------

    async def list_roles(self) -> list[Record]:
        return _items(self.client.request("GET", "/roles"))

    async def get_role(self, name: str) -> Record:
        return _record(self.client.request("GET", f"/roles/{_quote(name)}"))

    async def put_role(self, name: str, permissions: Sequence[str], description: str) -> Record:
        return _record(self.client.request("PUT", f"/roles/{_quote(name)}",
                                           body={"permissions": list(permissions), "description": description}))

    async def delete_role(self, name: str) -> None:
        self.client.request("DELETE", f"/roles/{_quote(name)}")

    # -- keys ----------------------------------------------------------------------------------------

    async def create_key(self, consumer_id: str, level: str, *, scopes: Sequence[str], ttl_days: float | None,
                         allowed_cidrs: Sequence[str], description: str) -> Record:
        body: dict[str, Any] = {"consumer": consumer_id, "level": level, "scopes": list(scopes),
                                "allowed_cidrs": list(allowed_cidrs), "description": description}
        if ttl_days is not None:
            body["ttl_days"] = ttl_days
        return _record(self.client.request("POST", "/keys", body=body))

    async def list_keys(self, consumer_id: str | None) -> list[Record]:
        return _items(self.client.request("GET", "/keys", query={"consumer": consumer_id}))

    async def get_key(self, key_id: str) -> Record:
        return _record(self.client.request("GET", f"/keys/{_quote(key_id)}"))

    async def rotate_key(self, key_id: str, overlap_hours: float | None, ttl_days: float | None) -> Record:
        body = {name: value for name, value in (("overlap_hours", overlap_hours), ("ttl_days", ttl_days))
                if value is not None}
        return _record(self.client.request("POST", f"/keys/{_quote(key_id)}/rotate", body=body))

    async def revoke_key(self, key_id: str) -> Record:
        return _record(self.client.request("POST", f"/keys/{_quote(key_id)}/revoke", body={}))

    # -- audit ---------------------------------------------------------------------------------------

    async def list_audit(self, after: int, limit: int) -> list[Record]:
        return _items(self.client.request("GET", "/audit", query={"after": after, "limit": limit}))

    async def verify_audit(self) -> Record:
        return _record(self.client.request("GET", "/audit/verify"))


class RemoteOAuthBackend(RemoteBackend):
    """The `bastion oauth` commands through the admin API (consumers are looked up as above)."""

    async def create_client(self, consumer_id: str, *, name: str, kind: str, grant_types: Sequence[str],
                            scopes: Sequence[str], redirect_uris: Sequence[str]) -> Record:
        body = {"consumer": consumer_id, "name": name, "kind": kind, "grant_types": list(grant_types),
                "scopes": list(scopes), "redirect_uris": list(redirect_uris)}
        return _record(self.client.request("POST", "/oauth/clients", body=body))

    async def list_clients(self, consumer_id: str | None) -> list[Record]:
        return _items(self.client.request("GET", "/oauth/clients", query={"consumer": consumer_id, "limit": _PAGE}))

    async def get_client(self, client_id: str) -> Record:
        return _record(self.client.request("GET", f"/oauth/clients/{_quote(client_id)}"))

    async def update_client(self, client_id: str, changes: Mapping[str, Any]) -> Record:
        return _record(self.client.request("PATCH", f"/oauth/clients/{_quote(client_id)}", body=changes))

    async def rotate_client_secret(self, client_id: str, overlap_hours: float | None) -> Record:
        body = {} if overlap_hours is None else {"overlap_hours": overlap_hours}
        return _record(self.client.request("POST", f"/oauth/clients/{_quote(client_id)}/rotate-secret", body=body))

    async def delete_client(self, client_id: str) -> None:
        self.client.request("DELETE", f"/oauth/clients/{_quote(client_id)}")

    async def list_signing_keys(self) -> list[Record]:
        return _items(self.client.request("GET", "/oauth/signing-keys"))

    async def rotate_signing_keys(self, emergency: bool) -> Record:
        return _record(self.client.request("POST", "/oauth/signing-keys/rotate", body={"emergency": emergency}))
