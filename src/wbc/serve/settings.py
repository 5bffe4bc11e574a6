"""Settings of ``wbc serve``, from the environment (``WBC_*``) or from arguments (pydantic-settings).

``WBC_API_KEYS`` (comma-separated) and ``WBC_API_KEY_FILE`` (one key per line, ``#`` comments) hold the
API keys; ``WBC_ALLOWED_HOSTS`` / ``WBC_ALLOWED_ORIGINS`` (comma-separated) widen the Host and Origin
allow-lists; ``WBC_RATE_LIMIT_PER_MINUTE`` and ``WBC_BODY_TIMEOUT_S`` tune the limits. Arguments win over
the environment: ``ServeSettings(api_keys=["..."])``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from wbc.errors import ConfigError

#: Names a loopback server is reached by. Not Starlette's TestClient's ``testserver``: a single-label name resolves
#: through the network's DNS search suffix, so on a network someone else runs (a laptop on foreign Wi-Fi) it can name
#: their machine, the very DNS rebinding the Host check is for. Tests allow it themselves (tests/conftest.py).
LOOPBACK_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
#: Shortest API key accepted: a guessable key is no protection.
MIN_KEY_LENGTH: int = 16
#: Most inference calls run at once by default, however many cores: each holds a decoded field (up to
#: 40 Mpx) and its working copies in memory.
MAX_DEFAULT_SLOTS: int = 8


def default_inference_slots(threads: int = 1) -> int:
    """Inference calls run at once by default: one per ``threads`` cores, at most :data:`MAX_DEFAULT_SLOTS`.

    Much of a smear field's analysis (decoding, the scale estimate, outlines, JSON) is single-threaded
    Python and NumPy, so two one-thread calls keep two cores busier than one two-thread call: on 2 cores,
    8 clients got 34.7 fields/s, p95 291 ms, against 23.9 fields/s, p95 399 ms (``benchmarks/serve_load.py``).
    """
    from wbc.runtime import usable_cores

    return max(1, min(MAX_DEFAULT_SLOTS, usable_cores() // max(1, threads)))


def _split(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class ServeSettings(BaseSettings):
    """What the security layer needs (:mod:`wbc.serve.security`); validated once, when the app is built."""

    model_config = SettingsConfigDict(env_prefix="WBC_", extra="ignore")

    #: Accepted API keys. Empty: no authentication (allowed on loopback only, see ``check_binding``).
    api_keys: Annotated[list[str], NoDecode] = []
    #: A file with more keys, one per line.
    api_key_file: Path | None = None
    #: Host header values (without port) the server answers, besides the loopback names, which it always answers
    #: (:meth:`_with_loopback`); ``*`` answers any (not recommended).
    allowed_hosts: Annotated[list[str], NoDecode] = list(LOOPBACK_HOSTS)
    #: Extra origins (``https://lims.example.org``) whose pages may POST here; the server's own origin is
    #: always allowed.
    allowed_origins: Annotated[list[str], NoDecode] = []
    #: Requests per minute per API key (a token bucket; bursts up to ``rate_burst``). 0: no limit.
    rate_limit_per_minute: int = 1200
    rate_burst: int = 120
    #: Different wrong API keys (in headers or the login form) one client address may send a minute, and at once; past
    #: them every key from there is refused unchecked (``security.WrongKeys``). 0 a minute: no limit.
    key_guesses_per_minute: int = 30
    key_guess_burst: int = 30
    #: A request body that brings fewer than ``body_min_bytes`` (at least one) in this many seconds of waiting for it
    #: gets 408: a stall, or a drip of a byte at a time (a rate floor, not a deadline for the whole body).
    body_timeout_s: float = 30.0
    body_min_bytes: int = 1024
    #: How long a web-page login lasts.
    session_hours: float = 12.0

    @field_validator("api_keys", "allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split(value)

    @field_validator("allowed_hosts")
    @classmethod
    def _with_loopback(cls, value: list[str]) -> list[str]:
        """The loopback names and ``value``: ``WBC_ALLOWED_HOSTS=wbc.lab.org`` widens the list. Before wbc 0.33.0 it
        replaced it, and the server refused ``curl http://127.0.0.1:8000/health`` on its own machine (400)."""
        return with_loopback(value)

    @field_validator("rate_limit_per_minute", "rate_burst", "key_guesses_per_minute", "key_guess_burst",
                     "body_min_bytes")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be >= 0")
        return value

    @field_validator("body_timeout_s", "session_hours")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be > 0")
        return value

    def all_keys(self) -> list[str]:
        """``api_keys`` plus the keys in ``api_key_file``; raises :class:`ConfigError` for a bad file or key."""
        keys = list(self.api_keys)
        if self.api_key_file is not None:
            keys += read_key_file(self.api_key_file)
        for k in keys:
            if len(k) < MIN_KEY_LENGTH:
                raise ConfigError(f"an API key is {len(k)} characters long; use at least {MIN_KEY_LENGTH} "
                                  "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return keys


def read_key_file(path: Path) -> list[str]:
    """Keys from a file: one per line; blank lines and ``#`` comments are ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the API key file ({exc.strerror or exc})") from None
    keys = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    keys = [k for k in keys if k]
    if not keys:
        raise ConfigError(f"{path}: no API key in the file (one key per line)")
    return keys


def with_loopback(hosts: list[str]) -> list[str]:
    """:data:`LOOPBACK_HOSTS` followed by ``hosts``, each name once."""
    return list(dict.fromkeys([*LOOPBACK_HOSTS, *hosts]))


def served_hosts(allowed: list[str], bind: str, extra: list[str]) -> list[str]:
    """The Host allow-list for a server bound to ``bind``: the loopback names + ``allowed`` + ``extra`` + the bound
    address (unless a wildcard) + this machine's name, so that ``http://<hostname>:8000/`` works out of the box."""
    import socket

    names = with_loopback([*allowed, *extra])
    if bind.strip("[]") not in ("0.0.0.0", "::", ""):
        names.append(bind.strip("[]"))
    elif "*" not in names:
        names += [socket.gethostname(), socket.getfqdn()]
    return list(dict.fromkeys(n.lower() for n in names if n))


def load_settings(**overrides: object) -> ServeSettings:
    """Settings from the environment with ``overrides`` (None values ignored); bad values -> ConfigError."""
    from pydantic import ValidationError

    try:
        # Any: pydantic validates (and converts) the values; each field has its own type.
        values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        return ServeSettings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        raise ConfigError(f"serve setting {where}: {first.get('msg', 'invalid')}") from None
