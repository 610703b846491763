"""The YAML configuration, validated once at start into frozen objects.

A bad file gives one line naming the key, the value and what was expected
(`ConfigError`); `supplier run` and `supplier check-config` exit 2 with it.
"""

from __future__ import annotations

import glob
import os
import re
import socket
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import SupplierError
from .pgstore import redact

MIN_KEY = 8  # hub keys, and the least a status token should be
# config.example.yaml's stand-ins: a file that still has them is not ready to run.
PLACEHOLDER_KEYS = frozenset({"put-the-key-from-the-hub-here", "another-key-from-onlinesim"})
# Names reserved for examples (RFC 2606 / RFC 6761): never a real hub.
_EXAMPLE_HOST = re.compile(r"(^|\.)(example(\.(com|net|org))?|test|invalid)$", re.IGNORECASE)

__all__ = [
    "SLUG_RE",
    "ActivationConfig",
    "BankConfig",
    "Config",
    "ConfigError",
    "HostConfig",
    "HubConfig",
    "ModemsConfig",
    "RotationConfig",
    "load_config",
    "parse_config",
    "parse_host_port",
    "phone_digits",
    "warnings",
]


class ConfigError(SupplierError):
    """The configuration is not usable; the message says where and why."""


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(value: Any) -> float:
    """`20m`, `10s`, `1h30m`, `500ms` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10s, 20m or 1h")  # noqa: TRY004
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        pos, seconds = 0, 0.0
        for match in _DURATION_RE.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if not text or pos != len(text):
            raise ValueError("expected a duration such as 10s, 20m or 1h")
    else:
        raise ValueError("expected a duration such as 10s, 20m or 1h")  # noqa: TRY004
    if seconds <= 0:
        raise ValueError("expected a duration above zero")
    return seconds


def parse_host_port(value: Any, default_host: str | None = None) -> tuple[str, int]:
    """`127.0.0.1:8000` → (`127.0.0.1`, 8000); port 0 means any free port.

    Without `default_host` the host is required; with it, `:8000` is allowed.
    """
    if not isinstance(value, str):
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8000")  # noqa: TRY004
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]") or (default_host or "")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8000 (port 0: any free port)")
    return host, int(port)


SLUG_RE = re.compile(r"[a-z0-9_]{1,32}")  # the hubs' country, operator and service names


def _slug(value: str) -> str:
    if not SLUG_RE.fullmatch(value):
        raise ValueError("expected a lower-case slug such as vk, russia or mts")
    return value


def phone_digits(value: Any) -> str:
    text = str(value).strip().lstrip("+") if isinstance(value, int | str) else ""
    if (
        isinstance(value, bool)
        or not (text.isascii() and text.isdigit())
        or not 6 <= len(text) <= 15
    ):
        raise ValueError("expected a phone number with its country code, 6-15 digits")
    return text


Duration = Annotated[float, BeforeValidator(_duration)]
HostPort = Annotated[tuple[str, int], BeforeValidator(parse_host_port)]
Slug = Annotated[str, AfterValidator(_slug)]
Number = Annotated[str, BeforeValidator(phone_digits)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerConfig(_Frozen):
    listen: HostPort = ("0.0.0.0", 8000)  # noqa: S104 - the hubs must reach it
    path: str = "/"
    # 256 KiB: the protocol's largest exceptionPhoneSet (10,000 prefixes of up to 15
    # digits, quoted) is ~180 KB of JSON.
    max_body: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or " " in value:
            raise ValueError("expected a URL path starting with /")
        return value


class HubConfig(_Frozen):
    name: Slug
    key: SecretStr
    push_url: str
    profile: Literal["smshub", "onlinesim"] = "smshub"
    retry_interval: Duration = 10.0
    push_timeout: Duration = 10.0

    @field_validator("key")
    @classmethod
    def _key(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_KEY:
            raise ValueError(f"expected a key of at least {MIN_KEY} characters")
        return value

    @field_validator("push_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError("expected an http:// or https:// URL")
        return value


class ModemsConfig(_Frozen):
    ports: tuple[str, ...] = ("/dev/serial/by-path/*",)
    baudrate: int = Field(default=115200, ge=300, le=4_000_000)
    pin: str | None = None
    health_interval: Duration = 10.0
    command_timeout: Duration = 5.0
    rescan_interval: Duration = 2.0

    @field_validator("pin", mode="before")
    @classmethod
    def _pin(cls, value: Any) -> str | None:
        if value is None:
            return None
        text = str(value)
        if isinstance(value, bool) or not re.fullmatch(r"\d{4,8}", text):
            raise ValueError("expected a PIN of 4-8 digits, or null")
        return text

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(not p.startswith("/") for p in value):
            raise ValueError("expected absolute paths or glob patterns, e.g. /dev/ttyUSB*")
        return value


class SimOverride(_Frozen):
    number: Number | None = None
    country: Slug | None = None
    operator: Slug | None = None


def _ussd_code(value: Any) -> str:
    text = str(value).strip() if isinstance(value, str) else ""
    if not re.fullmatch(r"[*#][0-9*#]{1,30}#", text):
        raise ValueError("expected a USSD code such as *111*0887#")
    return text


UssdCode = Annotated[str, BeforeValidator(_ussd_code)]


class NetworkOverride(_Frozen):
    # Both or neither: the hubs' country and operator slugs for this MCC+MNC.
    country: Slug | None = None
    operator: Slug | None = None
    # The code that makes the network tell a SIM its number (supplier/upkeep.py
    # has the built-in table; this overrides or adds to it).
    number_ussd: UssdCode | None = None
    # The code that answers with the SIM's balance; no default (it is traffic).
    balance_ussd: UssdCode | None = None

    @model_validator(mode="after")
    def _slugs(self) -> NetworkOverride:
        if (self.country is None) != (self.operator is None):
            raise ValueError("expected both country and operator, or neither")
        return self


class UssdConfig(_Frozen):
    """Number discovery by USSD (supplier/upkeep.py): polite to the networks."""

    enabled: bool = True
    spread: Duration = 60.0
    pace: Duration = Field(default=0.5, gt=0)
    interval: Duration = 300.0
    retry: Duration = 600.0
    timeout: Duration = Field(default=30.0, gt=0)
    sms_window: Duration = 300.0
    balance_every: Duration = Field(default=86400.0, ge=600)
    balance_after_sale: bool = True
    low_balance: Decimal | None = None


class StorageConfig(_Frozen):
    """Where the store is: a SQLite file (`path`, one host) or PostgreSQL (`url`, shared)."""

    path: str = "/var/lib/supplier/supplier.db"
    # postgresql://user[:password]@host[:port]/database; never in a repr (the password).
    url: str | None = Field(default=None, repr=False)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"(postgresql|postgres)://", value):
            raise ValueError("expected a postgresql:// URL, e.g. postgresql://supplier@db/supplier")
        return value

    @model_validator(mode="after")
    def _one_backend(self) -> StorageConfig:
        if self.url is not None and "path" in self.model_fields_set:
            raise ValueError("give path (a SQLite file) or url (PostgreSQL), not both")
        return self


_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _host_name(value: str) -> str:
    if not _HOST_NAME.fullmatch(value):
        raise ValueError(
            "expected a host name of 1-63 letters, digits, dots, dashes or underscores"
        )
    return value


def _status_url(value: str | None) -> str | None:
    if value is None:
        return None
    url = value.rstrip("/")
    scheme, sep, rest = url.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
        raise ValueError("expected the status route's base URL, e.g. http://10.0.0.11:8001")
    return url


class HostConfig(_Frozen):
    """This host among several sharing one PostgreSQL store (issue 16).

    `name` tells the hosts apart (their SIMs, their leases): each must have
    its own. The lease is how long the other hosts count this host's SIMs
    after its last renewal; it is renewed every `renew`.
    """

    name: Annotated[str, AfterValidator(_host_name)] = Field(default_factory=socket.gethostname)
    lease: Duration = 15.0
    renew: Duration = 5.0
    # How the other hosts reach this host's status route (e.g. http://10.0.0.11:8001):
    # an operator action on one of this host's SIMs that needs its modem (USSD, a
    # reset) is forwarded there from whichever host's page it was made on.
    status_url: Annotated[str | None, AfterValidator(_status_url)] = None

    @field_validator("renew")
    @classmethod
    def _renewed_in_time(cls, value: float, info: ValidationInfo) -> float:
        lease = info.data.get("lease")
        if lease is not None and value * 2 > lease:
            raise ValueError(
                f"expected at most half of host.lease ({lease:g}s): "
                "one late renewal must not let the lease run out"
            )
        return value


class ActivationConfig(_Frozen):
    release_after: Duration = 1200.0


class StatusConfig(_Frozen):
    listen: HostPort = ("127.0.0.1", 8001)
    token: SecretStr | None = None


class SmsConfig(_Frozen):
    reassembly_timeout: Duration = 120.0


SWITCH_DEFAULT = "AT+SWIT{module:02d}-{slot:04d}"


class BankConfig(_Frozen):
    """One SIM-bank pool board (README "SIM banks"). `control: null`: the module switches itself."""

    name: Slug
    control: str | None = None
    switch: str = SWITCH_DEFAULT
    reset_after_switch: bool = True
    slots: int = Field(ge=1, le=9999)
    modules: dict[int, str]

    @field_validator("control")
    @classmethod
    def _control(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("expected the control port's absolute path, or null")
        return value

    @field_validator("modules")
    @classmethod
    def _modules(cls, value: dict[int, str]) -> dict[int, str]:
        if not value:
            raise ValueError("expected module number → port, e.g. 1: /dev/serial/by-path/...")
        for module, port in value.items():
            if not 1 <= module <= 99:
                raise ValueError(f"expected module numbers 1-99 as keys, got {module}")
            if not port.startswith("/") or _GLOB & set(port):
                raise ValueError(
                    f"module {module}: expected one port's absolute path, got {port!r}"
                )
        return value

    @model_validator(mode="after")
    def _template(self) -> BankConfig:
        needed = ("{module", "{slot") if self.control is not None else ("{slot",)
        missing = [name + "}" for name in needed if name not in self.switch]
        if self.control is None and "{index" in self.switch:
            missing = []
        if missing:
            raise ValueError(
                f"switch {self.switch!r}: expected a template with {' and '.join(missing)}, "
                f"e.g. {SWITCH_DEFAULT!r}"
            )
        try:
            self.switch.format(module=99, slot=self.slots, index=self.slots - 1)
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(f"switch {self.switch!r}: not a usable template ({exc})") from None
        return self


class RotationConfig(_Frozen):
    dwell: Duration = 1800.0  # how long a SIM stays in before its module moves on
    settle: Duration = 120.0  # how long a switched-in SIM may take to become ready
    grace: Duration = 60.0  # after an activation ends, for a late SMS, before switching out
    retry_after: Duration = 600.0  # a failed slot is tried again after this, doubling


_GLOB = frozenset("*?[")

DEFAULT_SERVICES = ("vk", "ok", "wa", "tg", "go", "fb", "ig", "tw")


class Config(_Frozen):
    server: ServerConfig = ServerConfig()
    hubs: tuple[HubConfig, ...]
    modems: ModemsConfig = ModemsConfig()
    sims: dict[str, SimOverride] = Field(default_factory=dict)
    networks: dict[str, NetworkOverride] = Field(default_factory=dict)
    services: tuple[Slug, ...] = DEFAULT_SERVICES
    storage: StorageConfig = StorageConfig()
    host: HostConfig = Field(default_factory=HostConfig)
    activation: ActivationConfig = ActivationConfig()
    status: StatusConfig = StatusConfig()
    sms: SmsConfig = SmsConfig()
    ussd: UssdConfig = UssdConfig()
    banks: tuple[BankConfig, ...] = ()
    rotation: RotationConfig = RotationConfig()

    @field_validator("banks")
    @classmethod
    def _banks(cls, value: tuple[BankConfig, ...]) -> tuple[BankConfig, ...]:
        names = [bank.name for bank in value]
        if len(set(names)) != len(names):
            raise ValueError("expected bank names to be unique")
        seen: dict[str, str] = {}
        for bank in value:
            ports = [(f"{bank.name} control", bank.control)] if bank.control else []
            ports += [(f"{bank.name} module {m}", port) for m, port in bank.modules.items()]
            for where, port in ports:
                if port in seen:
                    raise ValueError(f"port {port} is listed twice ({seen[port]} and {where})")
                seen[port] = where
        return value

    @field_validator("hubs")
    @classmethod
    def _hubs(cls, value: tuple[HubConfig, ...]) -> tuple[HubConfig, ...]:
        if not value:
            raise ValueError("expected at least one hub")
        names = [hub.name for hub in value]
        if len(set(names)) != len(names):
            raise ValueError("expected hub names to be unique")
        keys = [hub.key.get_secret_value() for hub in value]
        if len(set(keys)) != len(keys):
            raise ValueError("expected every hub to have its own key (a key identifies its hub)")
        return value

    @field_validator("sims")
    @classmethod
    def _sims(cls, value: dict[str, SimOverride]) -> dict[str, SimOverride]:
        owners: dict[str, str] = {}
        for iccid, override in value.items():
            if override.number is None:
                continue
            if override.number in owners:
                raise ValueError(
                    f"expected every SIM to have its own number: {override.number} is given "
                    f"to both {owners[override.number]} and {iccid}"
                )
            owners[override.number] = str(iccid)
        return _digit_keys(value, 18, 20, "ICCIDs")

    @field_validator("networks")
    @classmethod
    def _networks(cls, value: dict[str, NetworkOverride]) -> dict[str, NetworkOverride]:
        return _digit_keys(value, 5, 6, "MCC+MNC codes")

    @field_validator("services")
    @classmethod
    def _services(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("expected a non-empty list of distinct service slugs")
        return value

    @model_validator(mode="after")
    def _listeners(self) -> Config:
        if self.server.listen == self.status.listen and self.server.listen[1] != 0:
            raise ValueError("server.listen and status.listen must differ")
        return self

    def hub_by_name(self, name: str) -> HubConfig | None:
        for hub in self.hubs:
            if hub.name == name:
                return hub
        return None


_V = TypeVar("_V")


def _digit_keys(value: dict[str, _V], low: int, high: int, what: str) -> dict[str, _V]:
    for key in value:
        if not re.fullmatch(rf"\d{{{low},{high}}}", str(key)):
            raise ValueError(f"expected {what} of {low}-{high} digits as keys, got {key!r}")
    return value


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _show(value: Any) -> str:
    """The offending value, short; a list or mapping is summarised (it may hold keys)."""
    if isinstance(value, list | tuple | dict) and value:
        kind = "mapping" if isinstance(value, dict) else "list"
        return f"<a {kind} of {len(value)}>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = tuple(p for p in first["loc"] if not str(p).startswith("function-"))
    # pydantic adds the type tag of unions/annotated types to the location.
    loc = tuple(p for p in loc if p not in ("str", "int", "float", "tuple[str, ...]"))
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "missing":
        text = f"{_where(loc)}: missing; {message.lower()}"
    elif first["type"] == "extra_forbidden":
        text = f"{_where(loc)}: unknown key"
    else:
        value = first.get("input")
        secret = isinstance(value, SecretStr) or (loc and loc[-1] in ("key", "token", "pin"))
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            value = redact(value)  # a URL's password (storage.url) is never printed
        # An empty secret is named as empty: the one thing worth saying about it.
        shown = ("empty" if value in ("", None) else _show("***")) if secret else _show(value)
        text = f"{_where(loc)}: {shown}: {message[0].lower() + message[1:]}"
    more = len(error.errors()) - 1
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def parse_config(data: Any, source: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings at the top level")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_explain(exc)}") from None


def load_config(path: str | Path) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_config(data, str(path))


def _host(url: str) -> str:
    return re.sub(r"^https?://([^/:?#]+).*$", r"\1", url)


def warnings(config: Config) -> list[str]:
    """What `check-config` warns about: valid settings that will not work as they are."""
    out = []
    for i, hub in enumerate(config.hubs):
        if hub.key.get_secret_value() in PLACEHOLDER_KEYS:
            out.append(f"hubs[{i}].key: still the example's placeholder; put the hub's key here")
        if _EXAMPLE_HOST.search(_host(hub.push_url)):
            out.append(
                f"hubs[{i}].push_url: {hub.push_url!r} is an example address; "
                "put the hub's PUSH_SMS URL here"
            )
    secret = config.status.token
    token = secret.get_secret_value() if secret is not None else None
    if token == "":
        out.append("status.token: empty, so the status page is open and operator actions are off")
    elif token is not None and len(token) < MIN_KEY:
        out.append(
            f"status.token: {len(token)} characters; use at least {MIN_KEY} "
            "(a long random string), as for hub keys"
        )
    # On PostgreSQL nothing of the store is on this host's disk (cli.py tries to connect).
    folder = Path(config.storage.path).parent
    if config.storage.url is None and not folder.is_dir():
        out.append(f"storage.path: the folder {str(folder)!r} does not exist")
    elif config.storage.url is None and not os.access(folder, os.W_OK | os.X_OK):
        out.append(f"storage.path: the folder {str(folder)!r} is not writable by this user")
    out.extend(
        f"modems.ports: {pattern!r} matches no port now"
        for pattern in config.modems.ports
        if not glob.glob(pattern)
    )
    return out
