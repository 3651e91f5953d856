"""The GrootFS YAML config file and its precedence rules: a flag that was given wins, else the file, else
the default. Garden's release writes the file with every key present and zero-valued, so empty values
must parse and mostly mean "unset".
"""

from __future__ import annotations

from ..errors import InvalidArgument

TYPE_CHECKING = False  # typing and dataclasses cost more than the interpreter start-up; annotations are strings
if TYPE_CHECKING:
    from typing import Any

DEFAULT_STORE = "/var/lib/graftfs"


class Config:
    """Every setting, with GrootFS's defaults."""

    def __init__(self, **overrides: Any) -> None:
        self.store: str = DEFAULT_STORE
        self.log_level: str = "fatal"
        self.log_file: str = ""
        self.newuidmap_bin: str = "newuidmap"
        self.newgidmap_bin: str = "newgidmap"
        self.metron_endpoint: str = ""
        self.metrics_textfile: str = ""  # graftfs's own: a Prometheus text file for node_exporter
        self.exclude_image_from_quota: bool = False
        self.skip_layer_validation: bool = False
        self.with_clean: bool = False
        self.without_mount: bool = False
        self.disk_limit_size_bytes: int = 0
        self.insecure_registries: list[str] = []
        self.clean_log_file: str = ""
        self.remote_layer_client_certificates_path: str = ""
        # graftfs's own: what a create with a disk limit does on a store without quota support.
        self.unenforceable_disk_limit: str = "warn"
        self.ephemeral: bool = False  # graftfs's own: writable layers on tmpfs
        self.threshold_bytes: int = 0
        self.keep_used_within_seconds: int = 0  # graftfs's own clean policy
        self.store_size_bytes: int = 0
        for key, value in overrides.items():
            if not hasattr(self, key):
                raise TypeError(f"unknown config key {key!r}")
            setattr(self, key, value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Config({vars(self)!r})"


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name) or {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"invalid config file: `{name}` must be a mapping")
    return value


def _int(value: Any, key: str) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"invalid config file: `{key}` must be an integer")
    return value


def _bool(value: Any, key: str) -> bool:
    if value is None or value == "":
        return False
    if not isinstance(value, bool):
        raise InvalidArgument(f"invalid config file: `{key}` must be true or false")
    return value


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def load(path: str) -> Config:
    """Read a config file. Unknown keys are ignored (yaml.v2 non-strict, as GrootFS)."""
    cfg = Config()
    if not path:
        return cfg
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
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
    # For these an empty string counts as unset, so the default applies. GrootFS's `tardis_bin` is read by
    # nobody: graftfs has no setuid helper.
    for key in ("store", "newuidmap_bin", "newgidmap_bin"):
        if doc.get(key):
            setattr(cfg, key, _str(doc[key]))
    for key in ("log_level", "log_file", "metron_endpoint", "metrics_textfile"):
        if doc.get(key) is not None:
            setattr(cfg, key, _str(doc[key]))
    if not cfg.log_level:
        cfg.log_level = "fatal"
    create = _section(doc, "create")
    cfg.exclude_image_from_quota = _bool(create.get("exclude_image_from_quota"), "exclude_image_from_quota")
    cfg.skip_layer_validation = _bool(create.get("skip_layer_validation"), "skip_layer_validation")
    cfg.with_clean = _bool(create.get("with_clean"), "with_clean")
    cfg.without_mount = _bool(create.get("without_mount"), "without_mount")
    cfg.disk_limit_size_bytes = _int(create.get("disk_limit_size_bytes"), "disk_limit_size_bytes")
    registries = create.get("insecure_registries") or []
    if not isinstance(registries, list):
        raise InvalidArgument("invalid config file: `insecure_registries` must be a list")
    cfg.insecure_registries = [_str(r) for r in registries]
    cfg.clean_log_file = _str(create.get("clean_log_file"))
    cfg.remote_layer_client_certificates_path = _str(create.get("remote_layer_client_certificates_path"))
    policy = _str(create.get("unenforceable_disk_limit")) or "warn"
    if policy not in ("warn", "refuse"):
        raise InvalidArgument(f"invalid config file: `unenforceable_disk_limit` must be warn or refuse, not `{policy}`")
    cfg.unenforceable_disk_limit = policy
    cfg.ephemeral = _bool(create.get("ephemeral"), "ephemeral")
    clean = _section(doc, "clean")
    cfg.threshold_bytes = _int(clean.get("threshold_bytes"), "threshold_bytes")
    cfg.keep_used_within_seconds = _int(clean.get("keep_used_within_seconds"), "keep_used_within_seconds")
    init = _section(doc, "init")
    cfg.store_size_bytes = _int(init.get("store_size_bytes"), "store_size_bytes")
    # GrootFS's loop-device option has no use here (graftfs makes no loop devices), but GrootFS refuses a
    # value that is not a boolean, and so does graftfs.
    _bool(init.get("with_direct_io"), "with_direct_io")
    return cfg
