"""Every setting of the Garden command line, in one table: its flag(s), its key in GrootFS's YAML config
file, its default, its type and its check. The flag parser's tables, the config-file reader and the
resolved values are all derived from it, and :func:`resolve` is the one place where a flag that was given
wins over the file, and the file over the default. :func:`validate` checks what a command was given, once,
and :func:`create_options` turns the settings into the API's :class:`~graftfs.api.CreateOptions`.

GrootFS's rules, which Garden's configs rely on: the release writes the file with every key present and
zero-valued, so an empty value in the file means "unset"; ``--log-file``, ``--metron-endpoint``,
``--clean-log-file`` and ``--insecure-registry`` override the file only when non-empty, and the boolean
create flags only when true; ``--store ""`` means the default store.
"""

from __future__ import annotations

from ..errors import InvalidArgument

TYPE_CHECKING = False  # typing and dataclasses cost more than the interpreter start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..api import CreateOptions
    from ..progress import Progress

DEFAULT_STORE = "/var/lib/graftfs"
#: Settings never shown (repr, logs).
SECRETS = ("password", "s3_secret_access_key")


class Setting:
    """One row of the table. ``empty`` says what an empty value given by flag means: ``"value"`` (it is the
    value), ``"unset"`` (as if the flag was not given: the file's value or the default stays) or
    ``"default"`` (the default); false booleans and empty lists never override, an int flag always does. A
    boolean setting may have an ``off_flag`` that sets it false; the flag that sets it true wins over it,
    unless ``exclusive`` makes giving both an error. ``key`` is the setting's place in the config file
    (``create.with_clean``), ``choices`` what the file may say, and ``check`` returns the error text for a
    value a command must refuse ("" when it is fine)."""

    # Class attributes are the defaults of a row's fields; a row sets only what it needs (the table is built
    # at every start-up: one call per row, and no keyword defaults to bind).
    name = ""  # the attribute of Settings the row is declared as (__set_name__)
    flag = ""
    key = ""
    help = ""
    off_flag = ""
    off_help = ""
    exclusive = False
    empty = ""
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str] | None = None
    hidden = False

    def __init__(self, default: Any, **fields: Any) -> None:
        self.default = default
        self.__dict__.update(fields)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @property
    def kind(self) -> str:
        """The type of the default: str, int, bool or list."""
        return type(self.default).__name__

    @property
    def empty_flag(self) -> str:
        """What an empty value given by flag means (``empty``, or what it is for the kind)."""
        return self.empty or ("unset" if isinstance(self.default, (bool, list)) else "value")

    def __repr__(self) -> str:
        return f"Setting({self.name})"


if TYPE_CHECKING:

    def _setting(default: Any, **fields: Any) -> Any:
        """A row of the table, typed as its value for the annotation it is declared under."""
else:
    _setting = Setting


def _not_negative(what: str) -> Callable[[Any], str]:
    return lambda value: f"invalid argument: {what} cannot be negative" if value < 0 else ""


def _namespace_check(value: str) -> str:
    from ..store.snapshots import valid_namespace  # only serve containerd-snapshotter has the flag

    return (
        ""
        if valid_namespace(value)
        else f"invalid argument: --namespace {value!r}: letters, digits, `.`, `_` and `-` only"
    )


class Settings:
    """The resolved settings of one run (see :func:`resolve`); the class body is the table. Config keys are
    grouped by section in the order GrootFS's files have them, and checks run in table order."""

    # -- global flags, top-level keys --
    config: str = _setting("", flag="config", help="path to a GrootFS-style YAML config file")
    store: str = _setting(
        DEFAULT_STORE, flag="store", key="store", empty="default", help="store directory (default /var/lib/graftfs)"
    )
    log_level: str = _setting(
        "fatal",
        flag="log-level",
        key="log_level",
        empty="default",  # anything but debug, info and error means fatal anyway
        help="debug, info, error or fatal (default fatal)",
    )
    log_file: str = _setting(
        "", flag="log-file", key="log_file", empty="unset", help="append logs to this file instead of stderr"
    )
    # GrootFS's setuid helper: graftfs needs none, and no `tardis_bin` in the file is read either.
    tardis_bin: str = _setting(
        "tardis",
        flag="tardis-bin",
        help="accepted and ignored (GrootFS compatibility): graftfs needs no setuid helper",
    )
    newuidmap_bin: str = _setting(
        "newuidmap",
        flag="newuidmap-bin",
        key="newuidmap_bin",
        help="newuidmap that maps a rootless store's UIDs (default newuidmap in PATH)",
    )
    newgidmap_bin: str = _setting(
        "newgidmap",
        flag="newgidmap-bin",
        key="newgidmap_bin",
        help="newgidmap that maps a rootless store's GIDs (default newgidmap in PATH)",
    )
    metron_endpoint: str = _setting(
        "",
        flag="metron-endpoint",
        key="metron_endpoint",
        empty="unset",
        help="HOST:PORT of a Loggregator agent for dropsonde metrics",
    )
    metrics_textfile: str = _setting(  # graftfs's own
        "",
        flag="metrics-textfile",
        key="metrics_textfile",
        empty="unset",
        help="Prometheus text file for node_exporter's textfile collector",
    )
    log_timestamp_format: str = _setting(
        "", flag="log-timestamp-format", hidden=True, help="accepted and ignored (removed from GrootFS)"
    )

    # -- create flags, the `create` section --
    exclude_image_from_quota: bool = _setting(
        False,
        flag="exclude-image-from-quota",
        key="create.exclude_image_from_quota",
        help="do not count the image's layers in the limit",
    )
    skip_layer_validation: bool = _setting(
        False,
        flag="skip-layer-validation",
        key="create.skip_layer_validation",
        help="do not verify oci:// layer digests and sizes",
    )
    with_clean: bool = _setting(
        False,
        flag="with-clean",
        off_flag="without-clean",
        exclusive=True,
        key="create.with_clean",
        help="run clean after creating",
        off_help="do not run clean after creating",
    )
    without_mount: bool = _setting(
        False,
        flag="without-mount",  # wins over --with-mount, as GrootFS
        off_flag="with-mount",
        key="create.without_mount",
        help="print the mount instead of performing it",
        off_help="mount the root filesystem (default)",
    )
    disk_limit_size_bytes: int = _setting(
        0,
        flag="disk-limit-size-bytes",
        key="create.disk_limit_size_bytes",
        check=_not_negative("disk limit"),
        help="disk limit for the image, in bytes",
    )
    insecure_registries: list[str] = _setting(
        [],
        flag="insecure-registry",
        key="create.insecure_registries",
        help="registry HOST[:PORT] reached without TLS verification, or plain HTTP",
    )
    clean_log_file: str = _setting(
        "",
        flag="clean-log-file",
        key="create.clean_log_file",
        empty="unset",
        help="log file of the clean started by --with-clean",
    )
    # A directory of CAs (*.crt) and a client pair (*.cert, *.key) for layers fetched from their `urls`.
    remote_layer_client_certificates_path: str = _setting("", key="create.remote_layer_client_certificates_path")
    # graftfs's own: what a create with a disk limit does on a store without quota support.
    unenforceable_disk_limit: str = _setting("warn", key="create.unenforceable_disk_limit", choices=("warn", "refuse"))
    ephemeral: bool = _setting(  # graftfs's own: the writable layer on a tmpfs
        False,
        flag="ephemeral",
        key="create.ephemeral",
        help="keep the writable layer on a tmpfs, as large as the disk limit",
    )
    username: str = _setting("", flag="username", help="registry username")
    password: str = _setting("", flag="password", help="registry password")

    # -- clean flags, the `clean` section --
    threshold_bytes: int = _setting(
        0,
        flag="threshold-bytes",
        key="clean.threshold_bytes",
        check=_not_negative("clean threshold"),
        help="only clean when the store uses more than this",
    )
    keep_used_within_seconds: int = _setting(  # graftfs's own clean policy
        0,
        flag="keep-used-within-seconds",
        key="clean.keep_used_within_seconds",
        check=_not_negative("keep-used-within-seconds"),
        help="also keep layers an image used this recently",
    )

    # -- init-store flags, the `init` section --
    uid_mappings: list[str] = _setting([], flag="uid-mapping", help="UID mapping NS:HOST:SIZE (repeatable)")
    gid_mappings: list[str] = _setting([], flag="gid-mapping", help="GID mapping NS:HOST:SIZE (repeatable)")
    store_size_bytes: int = _setting(
        0,
        flag="store-size-bytes",
        key="init.store_size_bytes",
        help="make the store an XFS filesystem of this size (loop device, quotas)",
    )
    shared_layers: str = _setting(
        "",
        flag="shared-layers",
        help="keep the layers in this directory, unshifted, shared by every store naming it; a store with "
        "mappings mounts them idmapped (Linux 5.19+). Without it the store's layers are its own, "
        "unpacked with its mappings applied",
    )
    layer_repository: str = _setting(  # graftfs's own
        "",
        flag="layer-repository",
        key="init.layer_repository",
        empty="unset",
        help="use layers found in this read-only directory (DUCC's layout: DIR/.layers/<hh>/<hex>/layerfs, as "
        "on /cvmfs/unpacked.cern.ch) in place instead of pulling them; it must be root's only or read-only",
    )
    # GrootFS's loop-device option has no use here (graftfs makes no loop devices), but GrootFS refuses a
    # value in the file that is not a boolean, and so does graftfs.
    with_direct_io: bool = _setting(
        False, flag="with-direct-io", key="init.with_direct_io", help="accepted and ignored (GrootFS compatibility)"
    )

    # -- serve flags (graftfs's own; no config key) --
    socket: str = _setting(
        "",
        flag="socket",
        check=lambda value: "" if value else "invalid argument: --socket is required",
        help="unix socket to serve on (made 0600; a stale one is replaced)",
    )
    snapshot_namespace: str = _setting(
        "containerd",
        flag="namespace",
        check=_namespace_check,
        help="the store's snapshot namespace this containerd's snapshots live in (default containerd): give each "
        "containerd that shares the store one of its own, or each one's garbage collection removes the others'",
    )

    # -- thin flags, the `thin` section (graftfs's own: thin images, graftfs.repository) --
    repository: str = _setting(
        "",
        flag="repository",
        key="thin.repository",
        empty="unset",
        help="layer repository directory to ingest layers into (DUCC's layout: DIR/.layers/<hh>/<hex>/layerfs)",
    )
    repository_name: str = _setting(
        "",
        flag="repository-name",
        key="thin.repository_name",
        empty="unset",
        help="the repository's name in thin images' cvmfs://<name>/ urls (default: the directory's name)",
    )
    output: str = _setting(
        "",
        flag="output",
        check=lambda value: "" if value else "invalid argument: --output oci:///PATH[:TAG] is required",
        help="where the thin image is written: oci:///PATH[:TAG]",
    )
    s3_endpoint: str = _setting(
        "",
        flag="s3-endpoint",
        key="thin.s3_endpoint",
        empty="unset",
        help="S3 endpoint URL (default AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL)",
    )
    s3_bucket: str = _setting(
        "",
        flag="s3-bucket",
        key="thin.s3_bucket",
        empty="unset",
        check=lambda value: "" if value else "invalid argument: --s3-bucket (thin.s3_bucket) is required",
        help="S3 bucket layers are published to (under layers/<hex>)",
    )
    s3_region: str = _setting(
        "", flag="s3-region", key="thin.s3_region", empty="unset", help="S3 region (default AWS_REGION or us-east-1)"
    )
    # Credentials only from the file or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: never a flag (ps shows flags).
    s3_access_key_id: str = _setting("", key="thin.s3_access_key_id")
    s3_secret_access_key: str = _setting("", key="thin.s3_secret_access_key")
    publish_compression: str = _setting(
        "gzip",
        flag="compression",
        key="thin.compression",
        choices=("gzip", "zstd"),
        check=lambda value: "" if value in ("gzip", "zstd") else "invalid argument: --compression is gzip or zstd",
        help="compression of the published layer: gzip (default) or zstd",
    )
    wait: bool = _setting(False, flag="wait", help="return once the publisher has put the layer in --repository")
    # Flag only, never the config file: a host set up for `thin publish` (thin.s3_bucket in its file) must not
    # start uploading every docker commit's changes without being told to.
    publish_commits: bool = _setting(
        False,
        flag="publish-commits",
        help="docker commit of a thin image's container publishes its changes to --s3-bucket (layers/<hex>), and "
        "the committed image is thin; without it, such a commit is an ordinary layer on the thin one",
    )
    wait_timeout_seconds: int = _setting(
        600,
        flag="wait-timeout-seconds",
        key="thin.wait_timeout_seconds",
        check=_not_negative("wait timeout"),
        help="how long publish --wait waits (default 600)",
    )
    once: bool = _setting(False, flag="once", help="one pass over the bucket, then exit")
    ingest_command: str = _setting(
        "",
        flag="ingest-command",
        key="thin.ingest_command",
        empty="unset",
        help="ingest each layer with this command, its uncompressed tar on stdin ({hex}, {hh}, {digest}, {path} "
        "replaced; e.g. 'cvmfs_server ingest --catalog -t - -b {path} REPO'), instead of writing DIR",
    )
    poll_interval_seconds: int = _setting(
        5,
        flag="poll-interval-seconds",
        key="thin.poll_interval_seconds",
        check=_not_negative("poll interval"),
        help="seconds between two listings of the bucket (default 5)",
    )

    def __init__(self, **values: Any) -> None:
        """The defaults, and ``values`` instead of some."""
        self.__dict__.update((setting.name, _default(setting)) for setting in TABLE)
        for name, value in values.items():
            if not isinstance(getattr(type(self), name, None), Setting):
                raise TypeError(f"unknown setting {name!r}")
            setattr(self, name, value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = (f"{k}={v!r}" for k, v in vars(self).items() if k not in SECRETS)
        return f"Settings({', '.join(shown)})"


TABLE: tuple[Setting, ...] = tuple(v for v in vars(Settings).values() if isinstance(v, Setting))


class Flag:
    """A flag as the parser sees it: ``kind`` is "str", "int", "bool" or "list"."""

    __slots__ = ("help", "hidden", "kind", "name")

    def __init__(self, name: str, kind: str, help: str = "", hidden: bool = False) -> None:
        self.name = name
        self.kind = kind
        self.help = help
        self.hidden = hidden


#: The rows by flag name, and by off-flag name.
_BY_FLAG = {s.flag: s for s in TABLE if s.flag}
_BY_OFF_FLAG = {s.off_flag: s for s in TABLE if s.off_flag}


def command_flags(names: tuple[str, ...], help: dict[str, str] | None = None) -> tuple[Flag, ...]:
    """The parser's table for these flags of the table; ``help`` words some of them for one command."""
    table = []
    for name in names:
        setting = _BY_FLAG.get(name)
        if setting is not None:
            flag = Flag(name, setting.kind, setting.help, setting.hidden)
        else:
            flag = Flag(name, "bool", _BY_OFF_FLAG[name].off_help)
        if help and name in help:
            flag.help = help[name]
        table.append(flag)
    return tuple(table)


# -- precedence --------------------------------------------------------------------------------------------------


def resolve(given: dict[str, Any]) -> Settings:
    """The settings of this run: for each, the flag if it was given, else the config file's value (the
    file named by ``--config``), else the default. ``given`` holds the flags parsed, by flag name."""
    found = read_file(given.get("config") or "")
    settings = Settings.__new__(Settings)
    values = settings.__dict__
    for setting in TABLE:
        name = setting.name
        value = found[name] if name in found else _default(setting)
        if setting.off_flag and given.get(setting.off_flag):
            value = False
        if setting.flag in given:
            flag = given[setting.flag]
            empty = setting.empty_flag
            if flag or empty == "value":
                value = flag
            elif empty == "default":
                value = setting.default
        values[name] = value
    return settings


def _default(setting: Setting) -> Any:
    default = setting.default
    return list(default) if default.__class__ is list else default


def validate(settings: Settings, given: dict[str, Any], names: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Refuse what a command cannot run with: the settings it has flags for (``names``), in table order; the
    check of a flag in ``optional`` is skipped when it is empty (``serve docker-graphdriver`` publishes to S3
    only when given a bucket)."""
    for setting in TABLE:
        if setting.flag not in names and setting.off_flag not in names:
            continue
        if setting.flag in optional and not getattr(settings, setting.name):
            continue
        if setting.exclusive and given.get(setting.flag) and given.get(setting.off_flag):
            raise InvalidArgument(f"{setting.flag} and {setting.off_flag} cannot be used together")
        if setting.check is not None:
            error = setting.check(getattr(settings, setting.name))
            if error:
                raise InvalidArgument(error)


def create_options(settings: Settings, progress: Progress | None = None) -> CreateOptions:
    """The API's options for a create with these settings."""
    from ..api import CreateOptions

    return CreateOptions(
        mount=not settings.without_mount,
        skip_layer_validation=settings.skip_layer_validation,
        disk_limit_bytes=settings.disk_limit_size_bytes,
        exclude_image_from_quota=settings.exclude_image_from_quota,
        insecure_registries=tuple(settings.insecure_registries),
        username=settings.username,
        password=settings.password,
        remote_layer_certificates=settings.remote_layer_client_certificates_path,
        progress=progress,
        unenforceable_disk_limit=settings.unenforceable_disk_limit,
        ephemeral=settings.ephemeral,
    )


# -- the config file ---------------------------------------------------------------------------------------------

_UNSET = object()


def read_file(path: str) -> dict[str, Any]:
    """The settings a config file sets, by name: its keys that have a setting and a value that is not
    empty. Unknown keys are ignored (yaml.v2 non-strict, as GrootFS)."""
    if not path:
        return {}
    from ..store.fsutil import text as decoded

    try:
        with open(path, "rb") as f:
            text = decoded(f.read())
    except OSError as exc:
        # Go's wording (`open /x: no such file or directory`; a directory opens and fails on `read`).
        from ..errors import os_reason

        op = "read" if isinstance(exc, IsADirectoryError) else "open"
        raise InvalidArgument(f"invalid config path: {op} {path}: {os_reason(exc)}") from None
    from . import miniyaml

    ok, doc = miniyaml.load(text)
    if not ok:
        import yaml  # ~15 ms: only files outside the subset miniyaml reads pay for it

        try:
            doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as exc:
            raise InvalidArgument(f"invalid config file: {' '.join(str(exc).split())}") from None
    doc = doc or {}
    if not isinstance(doc, dict):
        raise InvalidArgument("invalid config file: expected a mapping at the top level")
    sections: dict[str, dict[str, Any]] = {"": doc}
    found: dict[str, Any] = {}
    for setting in TABLE:
        if not setting.key:
            continue
        section, _, name = setting.key.rpartition(".")
        mapping = sections.get(section)
        if mapping is None:
            mapping = doc.get(section) or {}
            if not isinstance(mapping, dict):
                raise InvalidArgument(f"invalid config file: `{section}` must be a mapping")
            sections[section] = mapping
        value = mapping.get(name)
        if value is not None and value != "":  # an empty value is unset
            value = _convert(setting, name, value)
            if value is not _UNSET:
                found[setting.name] = value
    return found


def _convert(setting: Setting, name: str, value: Any) -> Any:
    """A value from the file as its setting's type."""
    default = setting.default
    if isinstance(default, list):
        if not value:
            return _UNSET  # as an empty list
        if not isinstance(value, list):
            raise InvalidArgument(f"invalid config file: `{name}` must be a list")
        return [_str(v) for v in value]
    if isinstance(default, bool):  # before int: a bool is an int
        if not isinstance(value, bool):
            raise InvalidArgument(f"invalid config file: `{name}` must be true or false")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"invalid config file: `{name}` must be an integer")
    else:
        value = _str(value)
        if setting.choices and value not in setting.choices:
            raise InvalidArgument(
                f"invalid config file: `{name}` must be {' or '.join(setting.choices)}, not `{value}`"
            )
    return value


def _str(value: Any) -> str:
    return "" if value is None else str(value)
