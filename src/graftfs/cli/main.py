"""``graftfs``: GrootFS's command line, flag for flag, for Garden's image plugin slot.

Parsing follows urfave/cli + Go's ``flag`` package, which Garden and operators' scripts were written
against: global flags before the command, command flags before positional arguments, ``-flag``/``--flag``,
``--flag value``/``--flag=value``, repeatable list flags that also split on commas. Results go to stdout,
errors are one line on stdout with exit status 1, logs are JSON lines on stderr. What each flag and config
key means, and which wins, is in :mod:`graftfs.cli.settings`.

Start-up is kept lean (Garden runs one process per container): only the modules a command needs are
imported, and only when it runs.
"""

from __future__ import annotations

import os
import sys
import time

from ..errors import GraftfsError, InvalidArgument, NotFound
from .settings import Flag, Settings, command_flags, create_options, resolve, validate

TYPE_CHECKING = False  # typing, dataclasses and friends cost more than the interpreter's own start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from ..api import Image, Store
    from ..idmap import Mapping
    from ..log import Logger
    from ..metrics import Metrics

VERSION = "0.1.0"
#: The command's metrics destination, when one is configured (see :func:`run`).
_metrics: Metrics | None = None
#: The command being run, and its lager session (GrootFS logs everything a command does under
#: ``grootfs.<command>``), opened when first needed: see :func:`_logger`.
_command = ""
_log: Logger | None = None


class UsageError(Exception):
    pass


#: The global flags (before the command): the table's and urfave/cli's own.
GLOBAL_FLAGS = [
    *command_flags(
        (
            "config",
            "store",
            "log-level",
            "log-file",
            "tardis-bin",
            "newuidmap-bin",
            "newgidmap-bin",
            "metron-endpoint",
            "metrics-textfile",
            "log-timestamp-format",
        )
    ),
    Flag("help", "bool", "show help"),
    Flag("version", "bool", "print the version"),
]


class Command:
    """``flag_names``: the command's flags, from the settings table (``flag_help`` words some of them for this
    command); ``nargs``: the number of arguments it takes, when it takes a fixed number; ``subcommands``: the
    commands that run in its place (``serve containerd-snapshotter``), by the name that follows it; ``optional``:
    flags whose check (a required value) does not apply to this command when they are not given."""

    __slots__ = (
        "flag_help",
        "flag_names",
        "help",
        "hidden",
        "name",
        "nargs",
        "optional",
        "run",
        "subcommands",
        "usage",
    )

    def __init__(
        self,
        name: str,
        usage: str,
        help: str,
        flag_names: tuple[str, ...],
        run: Callable[[Settings, list[str]], int],
        nargs: int | None = None,
        hidden: bool = False,
        flag_help: dict[str, str] | None = None,
        subcommands: tuple[Command, ...] = (),
        optional: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.optional = optional
        self.usage = usage
        self.help = help
        self.flag_names = flag_names
        self.flag_help = flag_help
        self.run = run
        self.nargs = nargs
        self.hidden = hidden
        self.subcommands = {c.name.rpartition(" ")[2]: c for c in subcommands}

    @property
    def flags(self) -> tuple[Flag, ...]:
        """The parser's table (made for the one command that runs, not for every command at start-up)."""
        return command_flags(self.flag_names, self.flag_help)


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


# -- what the commands print: byte for byte as GrootFS's Go ``encoding/json`` writes it --------------------------

# Go escapes these inside strings (HTML safety); Garden parses either form, scripts that grep may not.
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_json(value: Any) -> str:
    from .. import jsonc  # not for every command: delete prints no JSON

    text = jsonc.dumps(value, ensure_ascii=False)
    for char, escaped in _GO_ESCAPES.items():
        if char in text:
            text = text.replace(char, escaped)
    return text


def runtime_spec(image: Image) -> str:
    """The runtime-spec document GrootFS prints for create: key order is that of Go's specs.Spec."""
    process: dict[str, Any] = {"user": {"uid": 0, "gid": 0}}
    if image.env:
        process["env"] = image.env
    process["cwd"] = ""
    spec: dict[str, Any] = {"ociVersion": "", "process": process, "root": {"path": image.rootfs}}
    if image.mount is not None:
        spec["mounts"] = [image.mount]
    return go_json(spec)


# -- commands ------------------------------------------------------------------------------------------------


def _logger(settings: Settings) -> Logger:
    """The command's session of the ``grootfs`` logger: ``grootfs.create``, ``grootfs.delete``..."""
    global _log
    if _log is None:
        from ..log import Logger

        _log = Logger.open(settings.log_level, settings.log_file).session(_command)
    return _log


def _store(settings: Settings, init_mappings: tuple[list[Mapping], list[Mapping]] | None = None) -> Store:
    """The store, for this caller. An ordinary user first enters a user namespace with the store's ID
    mappings (``init_mappings`` for a store being made; when there are none, the user's own)."""
    from ..api import Store

    rootless = os.geteuid() != 0
    if rootless:
        from .. import userns

        if init_mappings is None:
            recorded = Store(settings.store).namespace()
            init_mappings = (recorded.uid_mappings, recorded.gid_mappings)
        uid_mappings = init_mappings[0] or userns.default_mappings("uid")
        gid_mappings = init_mappings[1] or userns.default_mappings("gid")
        userns.enter(uid_mappings, gid_mappings, settings.newuidmap_bin, settings.newgidmap_bin)
    return Store(settings.store, _logger(settings), rootless=rootless, metrics=_metrics)


def _later(module: str, name: str) -> Callable[[Settings, list[str]], int]:
    """The command ``name`` of graftfs.cli.<module>, imported when it runs: this module is what every create
    and delete loads, the other commands live in :mod:`.commands` and :mod:`.thin`."""

    def run(settings: Settings, args: list[str]) -> int:
        found = __import__(f"graftfs.cli.{module}", fromlist=[name])
        command: Callable[[Settings, list[str]], int] = getattr(found, name)
        return command(settings, args)

    return run


def _usage_error(cmd: str) -> InvalidArgument:
    return InvalidArgument(f"invalid arguments - usage: {COMMANDS[cmd].usage}")


def cmd_create(settings: Settings, args: list[str]) -> int:
    url, image_id = args
    progress = None
    from ..log import LEVELS, parse_level

    if sys.stderr.isatty() and (settings.log_file or parse_level(settings.log_level) >= LEVELS["error"]):
        # A person at a terminal, and no log lines to tangle with: show the pull.
        from ..progress import Progress

        progress = Progress(sys.stderr)
    try:
        image = _store(settings).create(url, image_id, create_options(settings, progress))
    finally:
        if progress is not None:
            progress.close()

    sys.stdout.write(runtime_spec(image) + "\n")
    sys.stdout.flush()
    if settings.with_clean:
        _spawn_clean(settings)
    return 0


def _spawn_clean(settings: Settings) -> None:
    """Clean-on-create, as GrootFS: a detached ``clean`` that the create does not wait for."""
    import subprocess

    argv = [sys.executable, "-m", "graftfs"]
    if settings.clean_log_file:
        argv += ["--log-file", settings.clean_log_file]
    argv += ["--log-level", settings.log_level, "--store", settings.store]
    if settings.metron_endpoint:
        argv += ["--metron-endpoint", settings.metron_endpoint]
    if settings.metrics_textfile:
        argv += ["--metrics-textfile", settings.metrics_textfile]
    argv += ["clean", "--threshold-bytes", str(settings.threshold_bytes)]
    if settings.keep_used_within_seconds:
        argv += ["--keep-used-within-seconds", str(settings.keep_used_within_seconds)]
    subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=None if not settings.clean_log_file else subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def cmd_delete(settings: Settings, args: list[str]) -> int:
    if not args:
        raise InvalidArgument("id was not specified")
    store = _store(settings)
    try:
        image_id = store.delete(args[0])
    except NotFound as exc:
        # Garden calls delete on both plugins for every container: unknown IDs are not an error.
        store.log.debug("id-not-found-skipping", id=args[0], storePath=store.path, errorMessage=str(exc))
        print(f"{exc} Skipping delete.")
        return 0
    print(f"Image {image_id} deleted")
    return 0


_REGISTRY_FLAGS = ("insecure-registry", "skip-layer-validation", "username", "password")
_S3_FLAGS = ("s3-endpoint", "s3-bucket", "s3-region")


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command(
            "init-store",
            "init-store [options]",
            "initialize a store directory",
            ("uid-mapping", "gid-mapping", "store-size-bytes", "shared-layers", "layer-repository", "with-direct-io"),
            _later("commands", "cmd_init_store"),
            nargs=0,
        ),
        Command(
            "create",
            "create [options] <image> <id>",
            "create an image root filesystem and print its runtime spec",
            (
                "disk-limit-size-bytes",
                "exclude-image-from-quota",
                "insecure-registry",
                "skip-layer-validation",
                "with-clean",
                "without-clean",
                "threshold-bytes",
                "with-mount",
                "without-mount",
                "ephemeral",
                "username",
                "password",
                "clean-log-file",
            ),
            cmd_create,
            nargs=2,
            flag_help={"threshold-bytes": "clean threshold for --with-clean"},
        ),
        Command("delete", "delete <id|image path>", "delete an image", (), cmd_delete),
        Command(
            "stats",
            "stats [options] <id|image path>",
            "print an image's disk usage",
            (),
            _later("commands", "cmd_stats"),
            nargs=1,
        ),
        Command(
            "clean",
            "clean [options]",
            "remove unused layers and leftovers of interrupted work",
            ("threshold-bytes", "keep-used-within-seconds"),
            _later("commands", "cmd_clean"),
        ),
        Command("list", "list", "list images", (), _later("commands", "cmd_list")),
        Command("capacity", "capacity", "print the configured store capacity", (), _later("commands", "cmd_capacity")),
        Command(
            "features",
            "features",
            "print what this caller can do in the store (overlay, xattrs, whiteouts, owners, idmapped mounts)",
            (),
            _later("commands", "cmd_features"),
            nargs=0,
        ),
        Command("delete-store", "delete-store", "delete the whole store", (), _later("commands", "cmd_delete_store")),
        Command(
            "generate-volume-size-metadata",
            "generate-volume-size-metadata",
            "recompute layer sizes",
            (),
            _later("commands", "cmd_generate_volume_size_metadata"),
            nargs=0,
            hidden=True,
        ),
        Command(
            "thin",
            "thin <command> [options]",
            "thin images and a shared layer repository (CernVM-FS, DUCC's layout)",
            (),
            lambda settings, args: 0,
            subcommands=(
                Command(
                    "thin convert",
                    "thin convert [options] SOURCE --repository DIR --output oci:///PATH[:TAG]",
                    "ingest an image's layers into a layer repository and write the thin image naming them",
                    ("repository", "repository-name", "output", *_REGISTRY_FLAGS),
                    _later("thin", "cmd_thin_convert"),
                ),
                Command(
                    "thin publish",
                    "thin publish [options] ID --output oci:///PATH[:TAG] --s3-bucket BUCKET",
                    "upload an image's changes to S3 as a layer, and write the thin image with it on top",
                    (
                        "output",
                        *_S3_FLAGS,
                        "compression",
                        "repository-name",
                        "wait",
                        "repository",
                        "wait-timeout-seconds",
                    ),
                    _later("thin", "cmd_thin_publish"),
                ),
                Command(
                    "thin publisher",
                    "thin publisher [options] --repository DIR --s3-bucket BUCKET [--once]",
                    "ingest the layers published to S3 into a layer repository, verified (long-running)",
                    ("repository", *_S3_FLAGS, "once", "poll-interval-seconds", "ingest-command"),
                    _later("thin", "cmd_thin_publisher"),
                ),
            ),
        ),
        Command(
            "serve",
            "serve <server> [options]",
            "run a long-lived server over the store",
            (),
            lambda settings, args: 0,
            subcommands=(
                Command(
                    "serve containerd-snapshotter",
                    "serve containerd-snapshotter --socket PATH [--store DIR] [--namespace NAME]",
                    "serve containerd's snapshot service (a proxy plugin) over the store on a unix socket",
                    ("store", "socket", "namespace"),
                    _later("commands", "cmd_serve_containerd_snapshotter"),
                    nargs=0,
                ),
                Command(
                    "serve docker-graphdriver",
                    "serve docker-graphdriver --socket PATH [--store DIR] [--publish-commits --s3-bucket BUCKET]",
                    "serve a Docker graphdriver plugin (dockerd 20.10, --experimental) over the store on a unix socket",
                    (
                        "store",
                        "socket",
                        "publish-commits",
                        *_S3_FLAGS,
                        "compression",
                        "repository-name",
                        "wait",
                        "wait-timeout-seconds",
                    ),
                    _later("commands", "cmd_serve_docker_graphdriver"),
                    nargs=0,
                    optional=("s3-bucket",),
                    flag_help={
                        "s3-bucket": "the bucket --publish-commits publishes to (layers/<hex>)",
                        "repository-name": "the repository's name in published layers' cvmfs://<name>/ urls "
                        "(default: the one the thin image's layers name)",
                        "wait": "docker commit returns once the publisher has put the layer in the store's layer "
                        "repository (then a container of the committed image, a build's next step, can start)",
                        "wait-timeout-seconds": "how long --wait waits (default 600)",
                    },
                ),
            ),
        ),
    ]
}


def _help(command: Command | None = None) -> str:
    def flag_lines(flags: Sequence[Flag]) -> list[str]:
        return [f"   --{f.name:<28} {f.help}" for f in flags if not f.hidden]

    if command is not None:
        lines = [f"NAME:\n   graftfs {command.name} - {command.help}", f"\nUSAGE:\n   graftfs {command.usage}"]
        if command.flag_names:
            lines.append("\nOPTIONS:\n" + "\n".join(flag_lines(command.flags)))
        if command.subcommands:
            subs = (f"   {n:<24} {c.help}" for n, c in command.subcommands.items())
            lines.append("\nCOMMANDS:\n" + "\n".join(subs))
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
    if command.subcommands:
        if len(rest) < 2 or rest[1] in ("-h", "--help", "-help"):
            sys.stdout.write(_help(command))
            return 0
        sub = command.subcommands.get(rest[1])
        if sub is None:
            sys.stdout.write(f"No help topic for '{rest[1]}'\n")
            return 3
        command, rest = sub, rest[1:]
    try:
        flags, args = parse_flags(rest[1:], command.flags)
        if command.name.startswith("thin ") and len(args) > 1:
            # thin's documented form names its SOURCE or ID first, its flags after.
            more, tail = parse_flags(args[1:], command.flags)
            flags, args = {**flags, **more}, [args[0], *tail]
    except UsageError as exc:
        sys.stdout.write(f"Incorrect Usage: {exc}\n\n{_help(command)}")
        return 1
    if flags.get("help"):
        sys.stdout.write(_help(command))
        return 0
    settings: Settings | None = None
    global _command, _log
    _command, _log = command.name, None  # run() may be called more than once in a process (tests)
    try:
        given = {**global_flags, **flags}
        settings = resolve(given)
        # GrootFS points TMPDIR into the store so any temporary file lands on the store's filesystem.
        os.environ["TMPDIR"] = os.path.join(settings.store, "tmp")
        global _metrics
        if settings.metron_endpoint or settings.metrics_textfile:
            from ..metrics import Metrics

            _metrics = Metrics(settings.metron_endpoint, settings.metrics_textfile)
        try:
            # As GrootFS: the arguments first, then what the command's flags (or the file) say.
            if command.nargs is not None and len(args) != command.nargs:
                raise _usage_error(command.name)
            validate(settings, given, command.flag_names, command.optional)
            return command.run(settings, args)
        finally:
            if _metrics is not None:
                _metrics.close()  # the text file is written once, with every value of the command
    except GraftfsError as exc:
        _log_failure(settings, command.name, exc, start)
        print(exc)
        return exc.exit_code
    except OSError as exc:
        # Anything the core did not translate still gets one clear line, never a traceback on stdout.
        _log_failure(settings, command.name, exc, start)
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


def _log_failure(settings: Settings | None, command: str, exc: BaseException, start: float) -> None:
    if settings is None:
        return
    action, error = _failure(command, exc)
    try:
        _logger(settings).error(action, error, seconds=round(time.monotonic() - start, 6))
    except OSError:
        pass


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
