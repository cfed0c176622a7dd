"""Who is reviewing: the review app never takes a name from a text box. Three modes (`[review] auth`):

- `local`: the account that started `ugafl review` on a pathologist's own machine; loopback only;
- `proxy`: the hospital's authenticating reverse proxy names the user in a header
  (`user_header`), trusted only on connections from `trusted_proxies`;
- `accounts`: built-in accounts (`ugafl review add-user`), passwords hashed with scrypt (RFC 7914,
  hashlib's), sessions as random tokens in an HttpOnly, SameSite=Strict cookie (Secure over
  HTTPS), held in the server's memory for `session_hours`.

In every mode, other programs (a QuPath script, a DSA plug-in) call the JSON API with an API token
(`ugafl review add-token`, `Authorization: Bearer TOKEN`), acting as the user the token was made
for; only the token's SHA-256 is stored (it is 256 random bits, so no slow hash is needed).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ugafl.common.atomic import atomic_write_text
from ugafl.common.errors import UgaflError

AUTH_MODES = ("local", "proxy", "accounts")
ACCOUNTS_FILE = Path("review") / "accounts.json"  # under the workspace
TOKENS_FILE = Path("review") / "tokens.json"
SESSION_COOKIE = "ugafl_session"
USER_NAME = re.compile(r"^[A-Za-z0-9._@+-][A-Za-z0-9._@+ -]{0,99}$")  # 1-100 characters, no control characters
SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # 16 MiB and about 50 ms per hash on one core
MAX_PASSWORD_CHARS = 1024


class AuthError(UgaflError):
    """A login or account request that was refused."""


@dataclass(frozen=True)
class AuthSettings:
    """How the review app knows who is reviewing (see the module's docstring)."""

    mode: str = "local"
    user_header: str = "X-Remote-User"
    trusted_proxies: tuple[str, ...] = ("127.0.0.1",)
    session_hours: float = 12.0


def check_user_name(name: object, where: str = "user name") -> str:
    if not isinstance(name, str) or not USER_NAME.match(name.strip()) or name != name.strip():
        raise AuthError(f"{where} must be 1 to 100 letters, digits, spaces or . _ @ + -, got {str(name)[:40]!r}")
    return name


_STORE_CACHE: dict[Path, tuple[tuple[int, int], dict]] = {}  # path -> ((mtime_ns, size), contents)


def _read_store(path: Path, what: str) -> dict[str, dict]:
    """A JSON object file of the review app's (accounts, tokens); {} when there is none yet.
    Read again only when the file changed: every signed-in request (each viewer tile) asks."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _STORE_CACHE.get(path)
    if cached is not None and cached[0] == stamp:
        return dict(cached[1])
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuthError(f"{path}: cannot read {what} ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise AuthError(f"{path}: not a file of {what}")
    _STORE_CACHE[path] = (stamp, data)
    return dict(data)


def _write_store(path: Path, data: dict[str, dict]) -> None:
    """Written whole (atomically), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
    os.chmod(path, 0o600)


def _hash(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 << 20, dklen=32)


class Accounts:
    """The built-in accounts of a workspace (`WS/review/accounts.json`, readable by its owner only):
    per user, the scrypt parameters, salt and hash of the password; never the password."""

    def __init__(self, workspace: str | Path):
        self.path = Path(workspace) / ACCOUNTS_FILE
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict]:
        return _read_store(self.path, "the accounts")

    def _write(self, data: dict[str, dict]) -> None:
        _write_store(self.path, data)

    def users(self) -> list[str]:
        return sorted(self._read())

    def add(self, name: str, password: str, replace: bool = False) -> None:
        """Add `name` (or, with `replace`, set an existing user's new password: their sessions end)."""
        check_user_name(name)
        if not isinstance(password, str) or not 8 <= len(password.strip()) or len(password) > MAX_PASSWORD_CHARS:
            raise AuthError(f"the password must be 8 to {MAX_PASSWORD_CHARS} characters, not counting spaces at its ends")
        with self._lock:
            data = self._read()
            if replace and name not in data:
                raise AuthError(f"{self.path}: no user {name} to set a new password for (without --replace: add them)")
            if name in data and not replace:
                raise AuthError(f"{self.path}: user {name} exists; --replace sets a new password")
            alike = [u for u in data if u.lower() == name.lower() and u != name]
            if alike:
                raise AuthError(f"{self.path}: user {alike[0]} exists; {name} would look the same in the audit")
            salt = secrets.token_bytes(16)
            data[name] = {"scheme": "scrypt", **SCRYPT, "salt": salt.hex(), "hash": _hash(password, salt, **SCRYPT).hex()}
            self._write(data)

    def remove(self, name: str) -> None:
        """Remove a user: their sessions end at their next request."""
        with self._lock:
            data = self._read()
            if name not in data:
                raise AuthError(f"{self.path}: no user {name} (users: {', '.join(sorted(data)) or 'none'})")
            del data[name]
            self._write(data)

    def fingerprint(self, name: str) -> str | None:
        """What a session remembers of the account: changes when the password does (None: no such user)."""
        entry = self._read().get(name)
        return None if entry is None else entry["hash"][:16]

    def verify(self, name: object, password: object) -> str | None:
        """The user name when the password is theirs, else None (as slow for an unknown user)."""
        if not isinstance(name, str) or not isinstance(password, str) or len(password) > MAX_PASSWORD_CHARS:
            return None
        entry = self._read().get(name)
        if entry is None:
            _hash(password, b"\0" * 16, **SCRYPT)  # the same work, so timing does not tell who exists
            return None
        got = _hash(password, bytes.fromhex(entry["salt"]), entry["n"], entry["r"], entry["p"])
        return name if hmac.compare_digest(got.hex(), entry["hash"]) else None


class ApiTokens:
    """API tokens of a workspace (`WS/review/tokens.json`, owner-only): SHA-256 of the token -> the
    user it acts as."""

    def __init__(self, workspace: str | Path):
        self.path = Path(workspace) / TOKENS_FILE
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict]:
        return _read_store(self.path, "the API tokens")

    def _write(self, data: dict[str, dict]) -> None:
        _write_store(self.path, data)

    def add(self, user: str, label: str = "") -> str:
        """A new token acting as `user`; returned once, only its hash is kept."""
        check_user_name(user)
        token = "ugafl_" + secrets.token_urlsafe(32)
        with self._lock:
            data = self._read()
            data[hashlib.sha256(token.encode()).hexdigest()] = {"user": user, "label": label[:100],
                                                                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self._write(data)
        return token

    def listing(self) -> list[dict]:
        """Every token: its id (the first 12 hex digits of its hash), user, label and creation time."""
        return [{"id": digest[:12], **entry} for digest, entry in sorted(self._read().items())]

    def remove(self, token_id: str) -> dict:
        """Revoke the token whose id (see `listing`) is `token_id`; returns what it was."""
        with self._lock:
            data = self._read()
            hits = [d for d in data if d.startswith(token_id)] if len(token_id) >= 6 else []
            if len(hits) != 1:
                raise AuthError(f"{self.path}: no single token with id {token_id!r} (see `ugafl review users`)")
            entry = data.pop(hits[0])
            self._write(data)
        return entry

    def user(self, token: str) -> str | None:
        if not token.startswith("ugafl_") or len(token) > 200:
            return None
        entry = self._read().get(hashlib.sha256(token.encode()).hexdigest())
        return entry["user"] if isinstance(entry, dict) else None


class Sessions:
    """Logged-in browsers: random token -> (user, expiry), in memory (a restart logs everyone out)."""

    def __init__(self, hours: float):
        self.seconds = hours * 3600
        self._lock = threading.Lock()
        self._by_token: dict[str, tuple[str, float]] = {}

    def create(self, user: str, fingerprint: str | None = None) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._by_token = {t: v for t, v in self._by_token.items() if v[1] > now}  # drop the expired
            self._by_token[token] = (user, now + self.seconds, fingerprint)
        return token

    def entry(self, token: str | None) -> tuple[str, str | None] | None:
        """(user, the account's fingerprint at sign-in) of a live session, else None."""
        if not token:
            return None
        with self._lock:
            entry = self._by_token.get(token)
            if entry is None or entry[1] <= time.monotonic():
                self._by_token.pop(token, None)
                return None
            return entry[0], entry[2]

    def end(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)


class Identity:
    """Who sent a request, by the configured mode."""

    def __init__(self, settings: AuthSettings, workspace: str | Path):
        if settings.mode not in AUTH_MODES:
            raise AuthError(f"[review] auth must be one of {', '.join(AUTH_MODES)}, got {settings.mode!r}")
        self.settings = settings
        self.local_user = getpass.getuser() if settings.mode == "local" else ""
        self.accounts = Accounts(workspace)
        self.tokens = ApiTokens(workspace)
        self.sessions = Sessions(settings.session_hours)
        self.header = settings.user_header.lower().encode("latin-1")

    def bearer(self, headers: dict[str, str]) -> str | None:
        """The user of the request's API token (`Authorization: Bearer ...`), or None."""
        kind, _, token = headers.get("authorization", "").partition(" ")
        return self.tokens.user(token.strip()) if kind.lower() == "bearer" else None

    def user(self, client_host: str | None, headers: dict[str, str], cookies: dict[str, str]) -> str | None:
        """The request's user, or None when it does not say (or may not say) who it is."""
        by_token = self.bearer(headers)
        if by_token is not None:
            return by_token
        mode = self.settings.mode
        if mode == "local":
            return self.local_user
        if mode == "proxy":
            if client_host not in self.settings.trusted_proxies:
                return None
            name = headers.get(self.settings.user_header.lower(), "")
            try:
                return check_user_name(name)
            except AuthError:
                return None
        token = cookies.get(SESSION_COOKIE)
        entry = self.sessions.entry(token)
        if entry is None:
            return None
        user, fingerprint = entry
        if self.accounts.fingerprint(user) != fingerprint:  # removed, or a new password: signed out
            self.sessions.end(token)
            return None
        return user


class Throttle:
    """Failed sign-ins: after `limit` failures for one user name or from one address within
    `window_s`, further tries for it are refused for `window_s` (answered 429)."""

    def __init__(self, limit: int = 5, window_s: float = 300.0):
        self.limit, self.window_s = limit, window_s
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, []) if now - t < self.window_s]
        self._failures[key] = times
        return times

    def blocked(self, *keys: str) -> bool:
        with self._lock:
            now = time.monotonic()
            return any(len(self._recent(k, now)) >= self.limit for k in keys)

    def failed(self, *keys: str) -> None:
        with self._lock:
            now = time.monotonic()
            for k in keys:
                self._recent(k, now).append(now)
