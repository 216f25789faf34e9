"""The node's one configuration file (TOML), its defaults, environment overrides and validation.

Every key has a documented default (``DEFAULT_CONFIG_TEXT`` is what ``egfr-node init`` writes).
Environment variables override the file: ``EGFR_NODE_<SECTION>_<KEY>`` (for example
``EGFR_NODE_NODE_PORT=11113`` or ``EGFR_NODE_DATABASE_URL=postgresql+psycopg://...``);
``EGFR_NODE_CONFIG`` names the file. A bad value stops the start with a ``ConfigError``
that names the key.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, TypeVar

from db.deliveries import RetryPolicy
from dicom_node.config_checks import AUTO, MAX_RECEIVE_PROCESSES, validate
from pipeline.settings import SettingError, apply_env, build_section, check_known, coerce

__all__ = [
    "ConfigError",
    "NodeSection",
    "TlsSection",
    "StorageSection",
    "DatabaseSection",
    "WorkerSection",
    "InferenceSection",
    "DeliverySection",
    "ReportSection",
    "Peer",
    "Destination",
    "Source",
    "RETRIEVE_METHODS",
    "LoggingSection",
    "MonitoringSection",
    "Config",
    "load_config",
    "config_path_from_env",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_CONFIG_TEXT",
]

ENV_PREFIX = "EGFR_NODE_"
PeerT = TypeVar("PeerT", bound="Peer")
DEFAULT_CONFIG_PATH = Path("egfr-node.toml")


#: The configuration cannot be used; the message names the key (``section.key: ...``). The
#: one settings error of the node, training and preprocessing (:mod:`pipeline.settings`).
ConfigError = SettingError


@dataclass(frozen=True)
class NodeSection:
    """[node]: the DICOM Application Entity PACS sends to."""

    ae_title: str = "EGFR_NODE"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()
    require_called_aet: bool = True
    max_associations: int = 10
    maximum_pdu_size: int = 262144
    network_timeout_seconds: float = 60.0
    acse_timeout_seconds: float = 10.0
    max_associate_request_bytes: int = 1048576
    max_associations_per_calling_ae: int = 0
    max_negotiating_per_source: int = 8
    max_negotiating: int = 64
    max_instance_size_mb: int = 1024
    #: processes receiving on the port: a count, or "auto" (one per core, see receive_process_count)
    receive_processes: int | str = AUTO
    receive_speedups: bool = True


@dataclass(frozen=True)
class TlsSection:
    """[tls]: DICOM over TLS on its own port beside the plain one."""

    enabled: bool = False
    port: int = 2762
    certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""


@dataclass(frozen=True)
class StorageSection:
    """[storage]: where received instances are archived."""

    data_dir: str = "./egfr-data"
    free_space_reserve_mb: int = 1024
    fsync: bool = True

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def archive_path(self) -> Path:
        return self.data_path / "archive"


@dataclass(frozen=True)
class DatabaseSection:
    """[database]: SQLAlchemy URL; empty means the SQLite file in the data folder."""

    url: str = ""


@dataclass(frozen=True)
class WorkerSection:
    """[worker]: study completeness and the job queue."""

    study_stable_seconds: float = 30.0
    #: a study whose mask names its images is complete when they are all in and nothing arrived for this long
    content_settle_seconds: float = 1.0
    scan_interval_seconds: float = 1.0
    lease_seconds: float = 600.0
    max_attempts: int = 3
    claim_interval_seconds: float = 1.0
    #: on stop, how long a running job may go on before it is handed back to the queue
    stop_grace_seconds: float = 10.0
    #: jobs one worker runs at once when studies queue; 0 = one per CPU core
    parallel_jobs: int = 0
    #: a waiting mask whose images are not archived: after this much quiet they are fetched
    #: from the first [[sources]] entry (0 = never)
    fetch_after_seconds: float = 5.0
    #: a study waiting for its mask, its images quiet this long: an idle worker fits the brain
    #: mask and N4 field of its post-contrast series, so the job does not (0 = never)
    prefit_after_seconds: float = 2.0
    #: memory for the fits kept for their jobs (MiB; the least recently used dropped first)
    prefit_cache_mb: int = 1024

    def job_runners(self, cores: int) -> int:
        """How many jobs this worker runs at once: the configured count, or one per core."""
        return self.parallel_jobs if self.parallel_jobs > 0 else max(1, cores)


@dataclass(frozen=True)
class InferenceSection:
    """[inference]: where and how the fold ensemble runs."""

    device: str = "auto"
    torch_threads: int = 0

    def threads(self, cores: int, running: int = 1) -> int:
        """CPU threads for torch: the configured count, or the cores shared by the ``running``
        jobs (all of them for a study alone: the five folds take 0.43 s on two cores, 0.92 s on
        one; the SCP waits that long at most for its share)."""
        return self.torch_threads if self.torch_threads > 0 else max(1, cores // max(1, running))


@dataclass(frozen=True)
class ContrastSection:
    """[contrast]: the evidence of a contrast agent a series needs before it is predicted."""

    require_evidence: bool = True
    series_description_pattern: str = ""


@dataclass(frozen=True)
class DeliverySection:
    """[delivery]: C-STORE of results to the destinations, with retries."""

    max_attempts: int = RetryPolicy.max_attempts
    initial_backoff_seconds: float = RetryPolicy.initial_backoff_seconds
    max_backoff_seconds: float = RetryPolicy.max_backoff_seconds
    timeout_seconds: float = 30.0
    scan_interval_seconds: float = 2.0

    def retry_policy(self) -> RetryPolicy:
        """The waits between tries (deliveries, and fetching a mask's images)."""
        return RetryPolicy(self.max_attempts, self.initial_backoff_seconds, self.max_backoff_seconds)


@dataclass(frozen=True)
class ReportSection:
    """[report]: what the node sends back."""

    sr_sop_class: str = "comprehensive3d"
    result_card: bool = True
    manufacturer: str = "egfr-node"
    institution_name: str = ""


@dataclass(frozen=True)
class Peer:
    """A PACS the node talks to: by DIMSE (``ae_title``, ``host``, ``port``; TLS when ``tls``)
    and/or by DICOMweb (``dicomweb_url``, with a bearer token or a user and password, each
    read from a file so the config holds no secret)."""

    name: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    tls: bool = False
    ca_certificates: str = ""
    certificate: str = ""
    private_key: str = ""
    #: DICOMweb base URL (e.g. http://pacs:8042/dicom-web); empty = DIMSE only
    dicomweb_url: str = ""
    #: a file holding the bearer token sent as ``Authorization: Bearer ...``
    token_file: str = ""
    #: HTTP basic authentication: the user, and a file holding the password
    username: str = ""
    password_file: str = ""

    @property
    def dimse(self) -> bool:
        """Whether the peer is reached by DIMSE (an AE title, host and port are configured)."""
        return bool(self.ae_title and self.host and self.port)

    def where(self) -> str:
        """How the peer is named in logs and delivery reasons."""
        if self.dimse:
            return f"{self.name} ({self.ae_title}@{self.host}:{self.port})"
        return f"{self.name} ({self.dicomweb_url})"


@dataclass(frozen=True)
class Destination(Peer):
    """One [[destinations]] entry: where results are sent, by C-STORE, or by STOW-RS when only
    ``dicomweb_url`` is set."""

    @property
    def stow(self) -> bool:
        """Results go by STOW-RS (a DICOMweb URL and no DIMSE address)."""
        return bool(self.dicomweb_url) and not self.dimse


#: How a source's studies are retrieved.
RETRIEVE_METHODS = ("c-move", "c-get", "wado")


@dataclass(frozen=True)
class Source(Peer):
    """One [[sources]] entry: a PACS the node may query (C-FIND, or QIDO-RS with ``wado``) and
    retrieve from: ``c-move`` to the node's own AE title (which the source must know),
    ``c-get`` on the query's association, or ``wado`` (WADO-RS from ``dicomweb_url``)."""

    retrieve: str = "c-move"


@dataclass(frozen=True)
class MonitoringSection:
    """[monitoring]: /metrics (Prometheus) and /healthz over HTTP, served by the SCP process."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9112
    allow_non_loopback: bool = False


@dataclass(frozen=True)
class WebSection:
    """[web]: the admin console and its HTTP API (``egfr-node web``; ``serve`` starts it when enabled)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    allow_non_loopback: bool = False
    #: ``name:scrypt$...`` lines, one user each (``egfr-node web add-user NAME``); default <data_dir>/web-users
    users_file: str = ""
    #: a header a reverse proxy sets to the signed-in user (e.g. X-Remote-User); empty: not trusted
    trusted_user_header: str = ""
    #: addresses whose trusted_user_header is believed (the proxy's)
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    session_max_age_seconds: int = 28800
    #: a session unused this long ends (sign-out, a password change or the user's removal end it at once)
    session_idle_seconds: int = 1800
    #: failed sign-ins of one user before it is locked out (of one source address: four times this)
    login_max_failures: int = 5
    #: the first lock-out; each further failure doubles it, up to an hour (egfr-node web unlock lifts it)
    login_lockout_seconds: int = 60
    #: HTTPS: certificate and private key (PEM); session cookies are then Secure
    certificate: str = ""
    private_key: str = ""
    refresh_seconds: float = 5.0
    #: STOW-RS into the node (POST /dicomweb/studies), served by this server; closed by default
    stow_enabled: bool = False
    #: ``name:sha256`` lines, one sending system each (``egfr-node web add-sender NAME``); default <data_dir>/stow-senders
    stow_senders_file: str = ""


@dataclass(frozen=True)
class RetentionSection:
    """[retention]: which finished studies the worker deletes from the archive, and when."""

    enabled: bool = True
    #: a finished study (its jobs ended, its results delivered) is deleted this many days after; 0: never by age
    keep_days: float = 0.0
    #: above this share of the archive's file system in use, the longest-finished studies are deleted ...
    high_watermark_percent: float = 90.0
    #: ... until the use is at or below this
    low_watermark_percent: float = 80.0
    #: a study finished less than this long ago is not deleted for the watermarks
    min_age_hours: float = 1.0
    interval_seconds: float = 60.0


@dataclass(frozen=True)
class LoggingSection:
    """[logging]"""

    level: str = "INFO"


@dataclass(frozen=True)
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    tls: TlsSection = field(default_factory=TlsSection)
    storage: StorageSection = field(default_factory=StorageSection)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    worker: WorkerSection = field(default_factory=WorkerSection)
    inference: InferenceSection = field(default_factory=InferenceSection)
    contrast: ContrastSection = field(default_factory=ContrastSection)
    delivery: DeliverySection = field(default_factory=DeliverySection)
    report: ReportSection = field(default_factory=ReportSection)
    destinations: tuple[Destination, ...] = ()
    sources: tuple[Source, ...] = ()
    logging: LoggingSection = field(default_factory=LoggingSection)
    monitoring: MonitoringSection = field(default_factory=MonitoringSection)
    web: WebSection = field(default_factory=WebSection)
    retention: RetentionSection = field(default_factory=RetentionSection)
    #: [training]: the recipe's values for ``egfr-node train`` (``training.settings``), kept as
    #: written; the training package checks them, naming ``training.<key>``, when it runs
    training: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<defaults>"

    @property
    def web_users_path(self) -> Path:
        """The console's users file: web.users_file, else <data_dir>/web-users."""
        return Path(self.web.users_file) if self.web.users_file else self.storage.data_path / "web-users"

    @property
    def stow_senders_path(self) -> Path:
        """STOW-RS senders' tokens: web.stow_senders_file, else <data_dir>/stow-senders."""
        return Path(self.web.stow_senders_file) if self.web.stow_senders_file else self.storage.data_path / "stow-senders"

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.storage.data_path / 'egfr-node.sqlite3'}"

    def receive_process_count(self, cores: int | None = None) -> int:
        """How many processes receive on the port: ``node.receive_processes``, or for "auto"
        one per core (at most 64), unless the database cannot be shared between processes (an
        in-memory SQLite): then one."""
        setting = self.node.receive_processes
        if setting != AUTO:
            return int(setting)
        url = self.database_url
        if url.startswith("sqlite") and (":memory:" in url or url.split("://", 1)[1] in ("", "/")):
            return 1
        return max(1, min(cores if cores is not None else (os.cpu_count() or 1), MAX_RECEIVE_PROCESSES))


_SECTIONS: dict[str, type] = {
    "node": NodeSection,
    "tls": TlsSection,
    "storage": StorageSection,
    "database": DatabaseSection,
    "worker": WorkerSection,
    "inference": InferenceSection,
    "contrast": ContrastSection,
    "delivery": DeliverySection,
    "report": ReportSection,
    "logging": LoggingSection,
    "monitoring": MonitoringSection,
    "web": WebSection,
    "retention": RetentionSection,
}


def config_path_from_env(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read: an explicit path, else ``$EGFR_NODE_CONFIG``, else ./egfr-node.toml if present."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read, override from the environment, and validate the configuration.

    Raises ConfigError naming the key at fault (``node.port: must be ...``).
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
        source = str(p)

    unknown = set(raw) - set(_SECTIONS) - {"destinations", "sources", "training"}
    if unknown:
        known = ", ".join([*_SECTIONS, "destinations", "sources", "training"])
        raise ConfigError(f"{sorted(unknown)[0]}: unknown section (known: {known})")
    training = raw.get("training", {})
    if not isinstance(training, dict):
        raise ConfigError("training: must be a table ([training])")

    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: must be a table ([{name}])")
        table = dict(table)
        apply_env(ENV_PREFIX, name, cls, table, environ)
        sections[name] = build_section(name, cls, table)

    destinations = _build_peers("destinations", Destination, raw.get("destinations", []))
    sources = _build_peers("sources", Source, raw.get("sources", []))
    config = Config(destinations=destinations, sources=sources, training=dict(training), source=source, **sections)
    validate(config)
    return config


def _build_peers(table: str, cls: type[PeerT], items: Any) -> tuple[PeerT, ...]:
    """The ``[[table]]`` entries as ``cls`` (Destination or Source), each key checked."""
    if not isinstance(items, list):
        raise ConfigError(f"{table}: must be an array of tables ([[{table}]])")
    known = {f.name: f for f in fields(cls)}
    out = []
    for i, item in enumerate(items):
        where = f"{table}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: must be a table")
        check_known(where, item, known)
        for key, f in known.items():
            if key not in item and f.default is MISSING:
                raise ConfigError(f"{where}.{key}: missing")
        values = {k: coerce(f"{where}.{k}", str(known[k].type), v) for k, v in item.items()}
        out.append(cls(**values))
    names = [d.name for d in out]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{table}.name: {name!r} is used twice")
    return tuple(out)


#: What ``egfr-node init`` writes: every key with its default and what it means
#: (``{data_dir}`` is filled in). Kept in step with the sections above by a test.
DEFAULT_CONFIG_TEXT = (resources.files("dicom_node") / "default-config.toml").read_text(encoding="utf-8")
