"""Reaching the hub: its URL, the user and password a client logs in with, and the code
version every machine of a campaign must share.

``redis://[:PASSWORD@]HOST:PORT/DB`` names a hub.  A client logs in as ``HUB_USER`` with
the password (the user ``pudthp hub serve`` creates; its ``default`` user is off), and when
the server has no such user, as Redis' ``default`` user with the same password (a Redis run
by hand with ``requirepass``): ``HubCredentials`` makes the switch once, for every
connection of the client.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider
from redis.retry import Retry

URL_FORMAT = "redis://[:PASSWORD@]HOST:PORT/DB"
DEFAULT_PORT = 6379
CODE_PACKAGES = ("pudthp_ref", "pudthp_fast", "harness", "fuzz")
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 10.0
HUB_USER = "pudthp"  # the user 'pudthp hub serve' lets campaigns log in as


class HubError(Exception):
    """A hub problem the user must fix (bad URL, wrong password, a refused machine);
    ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class HubAddress:
    """A parsed hub URL."""

    host: str
    port: int
    db: int
    password: str | None = None

    def url(self, show_password: bool = False) -> str:
        auth = ""
        if self.password is not None:
            auth = f":{self.password if show_password else '***'}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{auth}{host}:{self.port}/{self.db}"


def parse_hub_url(url: str) -> HubAddress:
    """``redis://[:PASSWORD@]HOST:PORT/DB`` (port default 6379, db default 0); anything
    else is a ``HubError`` naming the expected form (the password is never echoed)."""
    shown = url
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            shown = url.replace(f":{parts.password}@", ":***@", 1)
        if parts.scheme != "redis":
            raise ValueError("the scheme must be redis://")
        if not parts.hostname:
            raise ValueError("no host")
        if parts.username:
            raise ValueError("a user name is not supported, only :PASSWORD@")
        if parts.query or parts.fragment:
            raise ValueError("no query or fragment is expected")
        port = parts.port if parts.port is not None else DEFAULT_PORT
        if port == 0:
            raise ValueError("port 0")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"database {path!r} is not a number")
        db = int(path) if path else 0
        if db > 1 << 16:
            raise ValueError(f"database {db} is out of range")
    except ValueError as e:
        raise HubError(f"hub URL {shown!r}: {' '.join(str(e).split())}; expected "
                       f"{URL_FORMAT}") from None
    password = unquote(parts.password) if parts.password is not None else None
    if password == "":
        raise HubError(f"hub URL {shown!r}: an empty password; expected {URL_FORMAT}")
    return HubAddress(parts.hostname, port, db, password)


class HubCredentials(CredentialProvider):
    """``AUTH HUB_USER PASSWORD``, or ``AUTH PASSWORD`` (Redis' ``default`` user) once
    ``use_default()`` found the server has no ``HUB_USER``."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.user: str | None = HUB_USER

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        return (self.user, self.password) if self.user else (self.password,)

    def use_default(self) -> bool:
        """Log in as the ``default`` user from now on; False if that was already so."""
        if self.user is None:
            return False
        self.user = None
        return True


def redis_client(address: HubAddress) -> redis.Redis:
    """A client that fails fast (no retries, short timeouts): the hub client retries on its
    own schedule and must never hold up a campaign for long."""
    creds = HubCredentials(address.password) if address.password is not None else None
    return redis.Redis(
        host=address.host, port=address.port, db=address.db, credential_provider=creds,
        socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )


def ping(client: redis.Redis) -> None:
    """``PING``, logging in as the ``default`` user and trying again when the server
    rejects ``HUB_USER``; raises what the last attempt raised."""
    try:
        client.ping()
    except redis.exceptions.AuthenticationError:
        creds = client.connection_pool.connection_kwargs.get("credential_provider")
        if not isinstance(creds, HubCredentials) or not creds.use_default():
            raise
        client.connection_pool.disconnect()
        client.ping()


def code_version(roots: Mapping[str, Path] | None = None) -> str:
    """The SHA-256 of every ``.py`` file of the model, the harness and the fuzzers
    (``CODE_PACKAGES``; ``roots`` maps a package name to its directory, default the
    installed packages): per file in order of its path relative to the package's parent,
    the path, its length and its bytes; so the same sources give the same hash anywhere."""
    if roots is None:
        roots = {name: _package_dir(name) for name in CODE_PACKAGES}
    h = hashlib.sha256()
    files: list[tuple[str, Path]] = []
    for name, root in roots.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).as_posix()
            if "__pycache__" not in rel.split("/"):
                files.append((f"{name}/{rel}", path))
    for rel, path in sorted(files):
        data = path.read_bytes()
        h.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise HubError(f"cannot find the {name} package to hash its sources")
    return Path(next(iter(spec.submodule_search_locations)))


def default_machine_id() -> str:
    """``HOSTNAME:PID``: unique among the campaigns running at one time."""
    return f"{socket.gethostname()}:{os.getpid()}"
