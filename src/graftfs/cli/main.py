"""``graftfs``: GrootFS's command line, flag for flag, for Garden's image plugin slot.

Parsing follows urfave/cli + Go's ``flag`` package, which Garden and operators' scripts were written
against: global flags before the command, command flags before positional arguments, ``-flag``/``--flag``,
``--flag value``/``--flag=value``, repeatable list flags that also split on commas. Results go to stdout,
errors are one line on stdout with exit status 1, logs are JSON lines on stderr.

Start-up is kept lean (Garden runs one process per container): only the modules a command needs are
imported, and only when it runs.
"""

from __future__ import annotations

import os
import sys
import time

from ..errors import FailedPrecondition, GraftfsError, InvalidArgument, NotFound
from .config import Config

TYPE_CHECKING = False  # typing, dataclasses and friends cost more than the interpreter's own start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from ..api import CreateOptions
    from ..log import Logger
    from ..metrics import Metrics
    from ..progress import Progress

VERSION = "0.1.0"
#: The command's metrics destination, when one is configured (see :func:`run`).
_metrics: Metrics | None = None
#: The command being run, and its lager session (GrootFS logs everything a command does under
#: ``grootfs.<command>``), opened when first needed: see :func:`_logger`.
_command = ""
_log: Logger | None = None


class UsageError(Exception):
    pass


class Flag:
    __slots__ = ("help", "hidden", "kind", "name")

    def __init__(self, name: str, kind: str, help: str = "", hidden: bool = False) -> None:
        self.name = name
        self.kind = kind  # "str" | "int" | "bool" | "list"
        self.help = help
        self.hidden = hidden


GLOBAL_FLAGS = [
    Flag("config", "str", "path to a GrootFS-style YAML config file"),
    Flag("store", "str", "store directory (default /var/lib/graftfs)"),
    Flag("log-level", "str", "debug, info, error or fatal (default fatal)"),
    Flag("log-file", "str", "append logs to this file instead of stderr"),
    Flag("tardis-bin", "str", "accepted and ignored (GrootFS compatibility): graftfs needs no setuid helper"),
    Flag("newuidmap-bin", "str", "newuidmap that maps a rootless store's UIDs (default newuidmap in PATH)"),
    Flag("newgidmap-bin", "str", "newgidmap that maps a rootless store's GIDs (default newgidmap in PATH)"),
    Flag("metron-endpoint", "str", "HOST:PORT of a Loggregator agent for dropsonde metrics"),
    Flag("metrics-textfile", "str", "Prometheus text file for node_exporter's textfile collector"),
    Flag("log-timestamp-format", "str", "accepted and ignored (removed from GrootFS)", hidden=True),
    Flag("help", "bool", "show help"),
    Flag("version", "bool", "print the version"),
]


class Command:
    __slots__ = ("flags", "help", "hidden", "name", "run", "usage")

    def __init__(
        self,
        name: str,
        usage: str,
        help: str,
        flags: tuple[Flag, ...],
        run: Callable[[Config, dict[str, Any], list[str]], int],
        hidden: bool = False,
    ) -> None:
        self.name = name
        self.usage = usage
        self.help = help
        self.flags = flags
        self.run = run
        self.hidden = hidden


# strconv.ParseBool, exactly: Go accepts these spellings and no others.
_GO_BOOLS = {
    **dict.fromkeys(("1", "t", "T", "true", "TRUE", "True"), True),
    **dict.fromkeys(("0", "f", "F", "false", "FALSE", "False"), False),
}


def parse_flags(args: Sequence[str], flags: Sequence[Flag]) -> tuple[dict[str, Any], list[str]]:
    """Go ``flag`` semantics: stop at the first non-flag argument or after ``--``."""
    table = {f.name: f for f in flags}
    # urfave/cli gives every command -h/--help.
    table.setdefault("help", Flag("help", "bool"))
    table.setdefault("h", table["help"])
    if "version" in table:
        table.setdefault("v", table["version"])
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.lstrip("-").partition("=")
        flag = table.get(name)
        if flag is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        if flag.kind == "bool":
            if eq and value not in _GO_BOOLS:
                raise UsageError(f'invalid boolean value "{value}" for -{name}: parse error')
            values[flag.name] = not eq or _GO_BOOLS[value]
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args):
                raise UsageError(f"flag needs an argument: -{name}")
            value = args[i + 1]
            i += 1
        i += 1
        if flag.kind == "int":
            try:
                values[flag.name] = int(value)
            except ValueError:
                raise UsageError(f'invalid value "{value}" for flag -{name}: parse error') from None
        elif flag.kind == "list":
            values.setdefault(flag.name, []).extend(v for v in value.split(",") if v)
        else:
            values[flag.name] = value
    return values, list(args[i:])


def build_config(flags: dict[str, Any]) -> Config:
    from . import config as config_mod

    cfg = config_mod.load(flags.get("config", ""))
    # --tardis-bin is parsed and dropped: graftfs has no setuid helper.
    for key in ("store", "newuidmap-bin", "newgidmap-bin", "log-level"):
        if key in flags:
            setattr(cfg, key.replace("-", "_"), flags[key])
    # These four override the file only when non-empty (GrootFS).
    for key in ("log-file", "metron-endpoint", "metrics-textfile"):
        if flags.get(key):
            setattr(cfg, key.replace("-", "_"), flags[key])
    if not cfg.store:
        cfg.store = config_mod.DEFAULT_STORE
    return cfg


# -- commands ------------------------------------------------------------------------------------------------


def _logger(cfg: Config) -> Logger:
    """The command's session of the ``grootfs`` logger: ``grootfs.create``, ``grootfs.delete``..."""
    global _log
    if _log is None:
        from ..log import Logger

        _log = Logger.open(cfg.log_level, cfg.log_file).session(_command)
    return _log


def _store(cfg: Config, init_mappings: tuple[list[Any], list[Any]] | None = None) -> Any:
    """The store, for this caller. An ordinary user first enters a user namespace with the store's ID
    mappings (``init_mappings`` for a store being made; when there are none, the user's own)."""
    from ..api import Store

    rootless = os.geteuid() != 0
    if rootless:
        from .. import userns

        if init_mappings is None:
            recorded = Store(cfg.store).namespace()
            init_mappings = (recorded.uid_mappings, recorded.gid_mappings)
        uid_mappings = init_mappings[0] or userns.default_mappings("uid")
        gid_mappings = init_mappings[1] or userns.default_mappings("gid")
        userns.enter(uid_mappings, gid_mappings, cfg.newuidmap_bin, cfg.newgidmap_bin)
    return Store(cfg.store, _logger(cfg), rootless=rootless, metrics=_metrics)


def _usage_error(cmd: str) -> InvalidArgument:
    return InvalidArgument(f"invalid arguments - usage: {COMMANDS[cmd].usage}")


def cmd_init_store(cfg: Config, flags: dict[str, Any], args: list[str]) -> int:
    if args:
        raise _usage_error("init-store")
    from ..idmap import parse_all

    if "store-size-bytes" in flags:
        cfg.store_size_bytes = flags["store-size-bytes"]
    uid_mappings = parse_all(flags.get("uid-mapping", []))
    gid_mappings = parse_all(flags.get("gid-mapping", []))
    rootless = os.geteuid() != 0
    if rootless:
        # An ordinary user can make a store where the user may write, but never a backing store (loop
        # devices and mounts need root).
        if cfg.store_size_bytes > 0:
            raise _root_only(cfg)
        # Rootless: the store records the mappings its namespace gets, the user's own by default.
        from .. import userns

        uid_mappings = uid_mappings or userns.default_mappings("uid")
        gid_mappings = gid_mappings or userns.default_mappings("gid")
    store = _store(cfg, (uid_mappings, gid_mappings))
    try:
        store.init(uid_mappings, gid_mappings, cfg.store_size_bytes, flags.get("shared-layers") or "")
    except OSError as exc:
        import errno

        if rootless and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise _root_only(cfg) from exc
        raise
    return 0


def _root_only(cfg: Config) -> FailedPrecondition:
    """GrootFS's answer to anyone but root (graftfs says it only where an ordinary user's store cannot be
    made), which scripts provisioning stores as root recognise."""
    return FailedPrecondition(f"store {cfg.store} can only be initialized by Root user")


def cmd_features(cfg: Config, flags: dict[str, Any], args: list[str]) -> int:
    if args:
        raise _usage_error("features")
    store = _store(cfg)
    mode, idmapped = store.layers_mode()
    lines = store.features().describe(store.path, idmapped)
    lines.insert(2, f"layers           {mode}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_create(cfg: Config, flags: dict[str, Any], args: list[str]) -> int:
    if len(args) != 2:
        raise _usage_error("create")
    if flags.get("with-clean") and flags.get("without-clean"):
        raise InvalidArgument("with-clean and without-clean cannot be used together")
    if "disk-limit-size-bytes" in flags:
        cfg.disk_limit_size_bytes = flags["disk-limit-size-bytes"]
    if cfg.disk_limit_size_bytes < 0:
        raise InvalidArgument("invalid argument: disk limit cannot be negative")
    if "threshold-bytes" in flags:
        cfg.threshold_bytes = flags["threshold-bytes"]
    if cfg.threshold_bytes < 0:
        raise InvalidArgument("invalid argument: clean threshold cannot be negative")
    for key in ("exclude-image-from-quota", "skip-layer-validation", "ephemeral"):
        if flags.get(key):
            setattr(cfg, key.replace("-", "_"), True)
    if flags.get("with-clean"):
        cfg.with_clean = True
    if flags.get("without-clean"):
        cfg.with_clean = False
    if flags.get("with-mount"):
        cfg.without_mount = False
    if flags.get("without-mount"):
        cfg.without_mount = True
    if flags.get("insecure-registry"):
        cfg.insecure_registries = flags["insecure-registry"]
    if flags.get("clean-log-file"):
        cfg.clean_log_file = flags["clean-log-file"]

    url, image_id = args
    progress = None
    from ..log import LEVELS, parse_level

    if sys.stderr.isatty() and (cfg.log_file or parse_level(cfg.log_level) >= LEVELS["error"]):
        # A person at a terminal, and no log lines to tangle with: show the pull.
        from ..progress import Progress

        progress = Progress(sys.stderr)
    try:
        image = _store(cfg).create(url, image_id, _create_options(cfg, flags, progress))
    finally:
        if progress is not None:
            progress.close()

    from .output import runtime_spec

    sys.stdout.write(runtime_spec(image) + "\n")
    sys.stdout.flush()
    if cfg.with_clean:
        _spawn_clean(cfg)
    return 0


def _create_options(cfg: Config, flags: dict[str, Any], progress: Progress | None) -> CreateOptions:
    from ..api import CreateOptions

    return CreateOptions(
        mount=not cfg.without_mount,
        skip_layer_validation=cfg.skip_layer_validation,
        disk_limit_bytes=cfg.disk_limit_size_bytes,
        exclude_image_from_quota=cfg.exclude_image_from_quota,
        insecure_registries=tuple(cfg.insecure_registries),
        username=flags.get("username") or "",
        password=flags.get("password") or "",
        remote_layer_certificates=cfg.remote_layer_client_certificates_path,
        progress=progress,
        unenforceable_disk_limit=cfg.unenforceable_disk_limit,
        ephemeral=cfg.ephemeral,
    )


def _spawn_clean(cfg: Config) -> None:
    """Clean-on-create, as GrootFS: a detached ``clean`` that the create does not wait for."""
    import subprocess

    argv = [sys.executable, "-m", "graftfs"]
    if cfg.clean_log_file:
        argv += ["--log-file", cfg.clean_log_file]
    argv += ["--log-level", cfg.log_level, "--store", cfg.store]
    if cfg.metron_endpoint:
        argv += ["--metron-endpoint", cfg.metron_endpoint]
    if cfg.metrics_textfile:
        argv += ["--metrics-textfile", cfg.metrics_textfile]
    argv += ["clean", "--threshold-bytes", str(cfg.threshold_bytes)]
    if cfg.keep_used_within_seconds:
        argv += ["--keep-used-within-seconds", str(cfg.keep_used_within_seconds)]
    subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=None if not cfg.clean_log_file else subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def cmd_delete(cfg: Config, flags: dict[str, Any], args: list[str]) -> int:
    if not args:
        raise InvalidArgument("id was not specified")
    store = _store(cfg)
    try:
        image_id = store.delete(args[0])
    except NotFound as exc:
        # Garden calls delete on both plugins for every container: unknown IDs are not an error.
        store.log.debug("id-not-found-skipping", id=args[0], storePath=store.path, errorMessage=str(exc))
        print(f"{exc} Skipping delete.")
        return 0
    print(f"Image {image_id} deleted")
    return 0


def cmd_stats(cfg: Config, flags: dict[str, Any], args: list[str]) -> int:
    if len(args) != 1:
        raise _usage_error("stats")
    usage = _store(cfg).stats(args[0])
    from .output import go_json

    sys.stdout.write(go_json({"disk_usage": usage.as_dict()}) + "\n")
    return 0


def cmd_list(cfg: Config, flags: dict[str, Any], args: list[str]) -> int:
    paths = _store(cfg).list()
    print("\n".join(paths) if paths else "Store empty")
    return 0


def cmd_clean(cfg: Config, flags: dict[str, Any], args: list[str]) -> int:
    if "threshold-bytes" in flags:
        cfg.threshold_bytes = flags["threshold-bytes"]
    if "keep-used-within-seconds" in flags:
        cfg.keep_used_within_seconds = flags["keep-used-within-seconds"]
    if cfg.keep_used_within_seconds < 0:
        raise InvalidArgument("invalid argument: keep-used-within-seconds cannot be negative")
    store = _store(cfg)
    if not store.exists():
        # GrootFS: not an error, and said on both streams.
        print(f"no store found at {store.path}")
        sys.stderr.write(f"no store found at {store.path}")
        return 0
    result = store.clean(cfg.threshold_bytes, cfg.keep_used_within_seconds)
    print("clean completed" if result.ran else "threshold not reached: skipping clean")
    return 0


def cmd_capacity(cfg: Config, flags: dict[str, Any], args: list[str]) -> int:
    from .output import go_json

    sys.stdout.write(go_json({"capacity": cfg.store_size_bytes}) + "\n")
    return 0


def cmd_delete_store(cfg: Config, flags: dict[str, Any], args: list[str]) -> int:
    _store(cfg).delete_store()
    return 0


def cmd_generate_volume_size_metadata(cfg: Config, flags: dict[str, Any], args: list[str]) -> int:
    if args:
        raise _usage_error("generate-volume-size-metadata")
    _store(cfg).regenerate_volume_sizes()
    return 0


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command(
            "init-store",
            "init-store [options]",
            "initialize a store directory",
            (
                Flag("uid-mapping", "list", "UID mapping NS:HOST:SIZE (repeatable)"),
                Flag("gid-mapping", "list", "GID mapping NS:HOST:SIZE (repeatable)"),
                Flag("store-size-bytes", "int", "make the store an XFS filesystem of this size (loop device, quotas)"),
                Flag(
                    "shared-layers",
                    "str",
                    "keep the layers in this directory, unshifted, shared by every store naming it; a store with "
                    "mappings mounts them idmapped (Linux 5.19+). Without it the store's layers are its own, "
                    "unpacked with its mappings applied",
                ),
                Flag("with-direct-io", "bool", "accepted and ignored (GrootFS compatibility)"),
            ),
            cmd_init_store,
        ),
        Command(
            "create",
            "create [options] <image> <id>",
            "create an image root filesystem and print its runtime spec",
            (
                Flag("disk-limit-size-bytes", "int", "disk limit for the image, in bytes"),
                Flag("exclude-image-from-quota", "bool", "do not count the image's layers in the limit"),
                Flag(
                    "insecure-registry", "list", "registry HOST[:PORT] reached without TLS verification, or plain HTTP"
                ),
                Flag("skip-layer-validation", "bool", "do not verify oci:// layer digests and sizes"),
                Flag("with-clean", "bool", "run clean after creating"),
                Flag("without-clean", "bool", "do not run clean after creating"),
                Flag("threshold-bytes", "int", "clean threshold for --with-clean"),
                Flag("with-mount", "bool", "mount the root filesystem (default)"),
                Flag("without-mount", "bool", "print the mount instead of performing it"),
                Flag("ephemeral", "bool", "keep the writable layer on a tmpfs, as large as the disk limit"),
                Flag("username", "str", "registry username"),
                Flag("password", "str", "registry password"),
                Flag("clean-log-file", "str", "log file of the clean started by --with-clean"),
            ),
            cmd_create,
        ),
        Command("delete", "delete <id|image path>", "delete an image", (), cmd_delete),
        Command("stats", "stats [options] <id|image path>", "print an image's disk usage", (), cmd_stats),
        Command(
            "clean",
            "clean [options]",
            "remove unused layers and leftovers of interrupted work",
            (
                Flag("threshold-bytes", "int", "only clean when the store uses more than this"),
                Flag("keep-used-within-seconds", "int", "also keep layers an image used this recently"),
            ),
            cmd_clean,
        ),
        Command("list", "list", "list images", (), cmd_list),
        Command("capacity", "capacity", "print the configured store capacity", (), cmd_capacity),
        Command(
            "features",
            "features",
            "print what this caller can do in the store (overlay, xattrs, whiteouts, owners, idmapped mounts)",
            (),
            cmd_features,
        ),
        Command("delete-store", "delete-store", "delete the whole store", (), cmd_delete_store),
        Command(
            "generate-volume-size-metadata",
            "generate-volume-size-metadata",
            "recompute layer sizes",
            (),
            cmd_generate_volume_size_metadata,
            hidden=True,
        ),
    ]
}


def _help(command: Command | None = None) -> str:
    def flag_lines(flags: Sequence[Flag]) -> list[str]:
        return [f"   --{f.name:<28} {f.help}" for f in flags if not f.hidden]

    if command is not None:
        lines = [f"NAME:\n   graftfs {command.name} - {command.help}", f"\nUSAGE:\n   graftfs {command.usage}"]
        if command.flags:
            lines.append("\nOPTIONS:\n" + "\n".join(flag_lines(command.flags)))
        return "\n".join(lines) + "\n"
    cmds = "\n".join(f"   {c.name:<16} {c.help}" for c in COMMANDS.values() if not c.hidden)
    return (
        "NAME:\n   graftfs - container image root filesystems on overlayfs, a drop-in GrootFS replacement\n\n"
        "USAGE:\n   graftfs [global options] command [command options] [arguments...]\n\n"
        f"VERSION:\n   {VERSION}\n\nCOMMANDS:\n{cmds}\n\nGLOBAL OPTIONS:\n" + "\n".join(flag_lines(GLOBAL_FLAGS)) + "\n"
    )


def run(argv: Sequence[str]) -> int:
    start = time.monotonic()
    try:
        global_flags, rest = parse_flags(argv, GLOBAL_FLAGS)
    except UsageError as exc:
        sys.stdout.write(f"Incorrect Usage: {exc}\n\n{_help()}")
        return 1
    if global_flags.get("version"):
        print(f"graftfs version {VERSION}")
        return 0
    if global_flags.get("help") or not rest:
        sys.stdout.write(_help())
        return 0
    command = COMMANDS.get(rest[0])
    if command is None:
        sys.stdout.write(f"No help topic for '{rest[0]}'\n")
        return 3
    try:
        flags, args = parse_flags(rest[1:], command.flags)
    except UsageError as exc:
        sys.stdout.write(f"Incorrect Usage: {exc}\n\n{_help(command)}")
        return 1
    if flags.get("help"):
        sys.stdout.write(_help(command))
        return 0
    cfg: Config | None = None
    global _command, _log
    _command, _log = command.name, None  # run() may be called more than once in a process (tests)
    try:
        cfg = build_config(global_flags)
        # GrootFS points TMPDIR into the store so any temporary file lands on the store's filesystem.
        os.environ["TMPDIR"] = os.path.join(cfg.store, "tmp")
        global _metrics
        if cfg.metron_endpoint or cfg.metrics_textfile:
            from ..metrics import Metrics

            _metrics = Metrics(cfg.metron_endpoint, cfg.metrics_textfile)
        try:
            return command.run(cfg, flags, args)
        finally:
            if _metrics is not None:
                _metrics.close()  # the text file is written once, with every value of the command
    except GraftfsError as exc:
        _log_failure(cfg, command.name, exc, start)
        print(exc)
        return exc.exit_code
    except OSError as exc:
        # Anything the core did not translate still gets one clear line, never a traceback on stdout.
        _log_failure(cfg, command.name, exc, start)
        from ..errors import os_reason

        print(f"{command.name}: {os_reason(exc)}" + (f": {exc.filename}" if exc.filename else ""))
        return 1
    except KeyboardInterrupt:
        print("interrupted")
        return 130


#: GrootFS's message for a command that failed (``grootfs.<command>.<action>``), which operators alert on.
_FAILED = {
    "init-store": "init-store-failed",
    "create": "creating",
    "delete": "deleting-image-failed",
    "stats": "fetching-stats",
    "list": "listing-images",
    "clean": "cleaning-up-unused-resources",
    "delete-store": "cleaning-up-store-failed",
}


def _failure(command: str, exc: BaseException) -> tuple[str, BaseException | str]:
    """GrootFS's action name, and error, for a failed command; ``failed`` where GrootFS has none."""
    text = str(exc)
    if text.startswith("invalid arguments - usage: ") or text == "id was not specified":
        return "parsing-command", exc
    if text.startswith("invalid argument: ") or text == "with-clean and without-clean cannot be used together":
        return "config-builder-failed", exc
    if command == "create":
        from ..api import STORE_NOT_INITIALIZED

        if text == STORE_NOT_INITIALIZED:
            return "store-verification-failed", "store is not initialized"
    if command == "list" and text.startswith("no store found at "):
        return "store-path-failed", exc
    if command == "stats" and isinstance(exc, NotFound):  # an unknown ID, or a path outside the store
        return "find-id-failed", exc
    return _FAILED.get(command, "failed"), exc


def _log_failure(cfg: Config | None, command: str, exc: BaseException, start: float) -> None:
    if cfg is None:
        return
    action, error = _failure(command, exc)
    try:
        _logger(cfg).error(action, error, seconds=round(time.monotonic() - start, 6))
    except OSError:
        pass


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
