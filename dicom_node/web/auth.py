"""Who may use the console: users with scrypt-hashed passwords and a role in a file
(``name:role:scrypt$...`` lines, written by ``egfr-node web add-user``; a line without a role,
``name:scrypt$...``, is an admin, as every user was before roles), or a reverse proxy's header
from a trusted address; the session's CSRF token that every action must carry.

Roles (issue 28): ``viewer`` sees every page and reads the API; ``clinician`` also records
pathology outcomes; ``admin`` also acts on the node (replay, rerun, cancel, bundles, echo).

Passwords are hashed with the standard library's scrypt (salted, n=2**14, r=8, p=1) and
compared in constant time. Nothing here logs a password or a hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

__all__ = ["hash_password", "verify_password", "Users", "UsersFileError", "new_csrf_token", "same_token",
           "session_secret", "add_user", "remove_user", "ROLES", "may", "add_sender", "remove_sender", "sender_of"]

#: The roles, least first; each may do what the ones before it may.
ROLES = ("viewer", "clinician", "admin")
#: What each kind of action needs.
NEEDS = {"read": "viewer", "outcome": "clinician", "act": "admin"}


def may(role: str | None, action: str) -> bool:
    """Whether ``role`` may do ``action`` (read, outcome, act)."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(NEEDS[action])

_N, _R, _P = 2**14, 8, 1
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


class UsersFileError(ValueError):
    """The users file cannot be read or a line in it is not ``name:scrypt$...``; names the line."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64), for the users file."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected), maxmem=2**26)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def check_user_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise UsersFileError(f"user name {name!r}: 1-64 characters of letters, digits and . _ - @")
    return name


class Users:
    """The users file, read again when it changes (a user added or removed takes effect
    without a restart)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[float, int] | None = None
        self._hashes: dict[str, str] = {}
        self._roles: dict[str, str] = {}

    def _load(self) -> dict[str, str]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._hashes = None, {}
            return self._hashes
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            entries = read_users(self.path)
            self._hashes = {name: stored for name, (_, stored) in entries.items()}
            self._roles = {name: role for name, (role, _) in entries.items()}
            self._stamp = stamp
        return self._hashes

    def names(self) -> list[str]:
        return sorted(self._load())

    def exists(self, name: str) -> bool:
        return name in self._load()

    def stamp(self, name: str) -> str | None:
        """A digest of the user's password hash (None for a name not in the file): a session
        begun under another one ends (the password was changed)."""
        stored = self._load().get(name)
        return hashlib.sha256(stored.encode("ascii")).hexdigest()[:32] if stored is not None else None

    def role(self, name: str) -> str | None:
        """The user's role, or None for a name not in the file."""
        self._load()
        return self._roles.get(name)

    def check(self, name: str, password: str) -> bool:
        stored = self._load().get(name)
        if stored is None:
            verify_password(password, hash_password("timing"))  # the same work for an unknown name
            return False
        return verify_password(password, stored)


def read_users(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (role, stored hash); a line without a role is an admin's."""
    users: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        role, stored = ("admin", rest) if rest.startswith("scrypt$") else rest.partition(":")[::2]
        if not sep or not stored.startswith("scrypt$") or stored.count("$") != 5:
            raise UsersFileError(f"{path} line {number}: not name:role:scrypt$... (write users with `egfr-node web add-user`)")
        if role not in ROLES:
            raise UsersFileError(f"{path} line {number}: role {role!r} is not one of {', '.join(ROLES)}")
        users[check_user_name(name)] = (role, stored)
    return users


def remove_user(path: Path, name: str) -> bool:
    """Remove ``name`` from the users file; False when not there."""
    path = Path(path)
    users = read_users(path) if path.exists() else {}
    if name not in users:
        return False
    del users[name]
    _write_users(path, users)
    return True


def add_user(path: Path, name: str, password: str | None, role: str | None = None) -> bool:
    """Add ``name`` to the users file (created 0600), or change its password and/or role (a
    None password or role keeps the present one; a new user needs a password and is an admin
    unless ``role`` says otherwise). True when the user is new."""
    check_user_name(name)
    if role is not None and role not in ROLES:
        raise UsersFileError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if password is not None and len(password) < 8:
        raise UsersFileError("password: at least 8 characters")
    path = Path(path)
    users = read_users(path) if path.exists() else {}
    new = name not in users
    if new and password is None:
        raise UsersFileError(f"user {name} is new: a password is needed")
    old_role, old_hash = users.get(name, ("admin", ""))
    users[name] = (role or old_role, hash_password(password) if password is not None else old_hash)
    _write_users(path, users)
    return new


def _write_users(path: Path, users: dict[str, tuple[str, str]]) -> None:
    """The users file replaced atomically (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("# egfr-node console users: name:role:scrypt$n$r$p$salt$hash, role viewer|clinician|admin "
                  "(egfr-node web add-user NAME --role ROLE)\n")
        out.writelines(f"{user}:{role}:{stored}\n" for user, (role, stored) in sorted(users.items()))
    os.replace(temporary, path)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str | None) -> bool:
    return bool(given) and bool(expected) and hmac.compare_digest(str(given), str(expected))


def session_secret(data_dir: Path) -> str:
    """The key that signs session cookies: ``<data_dir>/web-secret``, made once (0600), so
    every console process of a node signs alike and a restart keeps people signed in."""
    path = Path(data_dir) / "web-secret"
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(secret + "\n")
    return secret


# --- STOW-RS senders: one token per sending system ----------------------------------------
# ``<name>:<sha256 of the token>`` lines. A token is 32 random bytes, so a plain SHA-256 is
# enough to keep the file from being a list of secrets; it is compared in constant time.

def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_senders(path: Path) -> dict[str, str]:
    """name -> token digest; a missing file is no sender."""
    path = Path(path)
    if not path.exists():
        return {}
    senders: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, digest = line.partition(":")
        if not sep or len(digest) != 64:
            raise UsersFileError(f"{path} line {number}: not name:sha256 (write senders with `egfr-node web add-sender`)")
        senders[check_user_name(name)] = digest
    return senders


def _write_senders(path: Path, senders: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("# egfr-node STOW-RS senders: name:sha256(token) (egfr-node web add-sender NAME)\n")
        out.writelines(f"{name}:{digest}\n" for name, digest in sorted(senders.items()))
    os.replace(temporary, path)


def add_sender(path: Path, name: str) -> str:
    """A new token for the sending system ``name`` (replacing its old one); returned once,
    only its digest is kept."""
    check_user_name(name)
    senders = read_senders(path)
    token = secrets.token_urlsafe(32)
    senders[name] = _token_digest(token)
    _write_senders(Path(path), senders)
    return token


def remove_sender(path: Path, name: str) -> bool:
    senders = read_senders(path)
    if name not in senders:
        return False
    del senders[name]
    _write_senders(Path(path), senders)
    return True


def sender_of(path: Path, token: str) -> str | None:
    """The sending system whose token this is (the file is read each time: a removed sender
    is refused at its next request)."""
    if not token:
        return None
    digest = _token_digest(token)
    for name, known in read_senders(path).items():
        if hmac.compare_digest(digest, known):
            return name
    return None
