"""Every command but Garden's per-container two (create and delete, in :mod:`.main`, which every create and
delete loads): init-store, features, stats, list, clean, capacity, delete-store and the servers. Loaded
only when one of them runs."""

from __future__ import annotations

import os
import sys

from ..errors import FailedPrecondition, InvalidArgument
from . import main

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..repository.s3 import S3Client
    from .settings import Settings


def cmd_init_store(settings: Settings, args: list[str]) -> int:
    from ..idmap import parse_all

    uid_mappings = parse_all(settings.uid_mappings)
    gid_mappings = parse_all(settings.gid_mappings)
    rootless = os.geteuid() != 0
    if rootless:
        # An ordinary user can make a store where the user may write, but never a backing store (loop
        # devices and mounts need root).
        if settings.store_size_bytes > 0:
            raise _root_only(settings)
        # Rootless: the store records the mappings its namespace gets, the user's own by default.
        from .. import userns

        uid_mappings = uid_mappings or userns.default_mappings("uid")
        gid_mappings = gid_mappings or userns.default_mappings("gid")
    store = main._store(settings, (uid_mappings, gid_mappings))
    try:
        store.init(
            uid_mappings, gid_mappings, settings.store_size_bytes, settings.shared_layers, settings.layer_repository
        )
    except OSError as exc:
        import errno

        if rootless and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise _root_only(settings) from exc
        raise
    return 0


def _root_only(settings: Settings) -> FailedPrecondition:
    """GrootFS's answer to anyone but root (graftfs says it only where an ordinary user's store cannot be
    made), which scripts provisioning stores as root recognise."""
    return FailedPrecondition(f"store {settings.store} can only be initialized by Root user")


def cmd_features(settings: Settings, args: list[str]) -> int:
    from ..store import probe

    store = main._store(settings)
    mode, idmapped = probe.layers_mode(store)
    lines = probe.describe(store.features(), store.path, idmapped)
    lines.insert(2, f"layers           {mode}")
    repository = probe.layer_repository(store)
    if repository:
        lines.insert(3, f"layer repository {repository}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_stats(settings: Settings, args: list[str]) -> int:
    usage = main._store(settings).stats(args[0])
    sys.stdout.write(main.go_json({"disk_usage": usage.as_dict()}) + "\n")
    return 0


def cmd_list(settings: Settings, args: list[str]) -> int:
    paths = main._store(settings).list()
    print("\n".join(paths) if paths else "Store empty")
    return 0


def cmd_clean(settings: Settings, args: list[str]) -> int:
    store = main._store(settings)
    if not store.exists():
        # GrootFS: not an error, and said on both streams.
        print(f"no store found at {store.path}")
        sys.stderr.write(f"no store found at {store.path}")
        return 0
    result = store.clean(settings.threshold_bytes, settings.keep_used_within_seconds)
    print("clean completed" if result.ran else "threshold not reached: skipping clean")
    return 0


def cmd_capacity(settings: Settings, args: list[str]) -> int:
    sys.stdout.write(main.go_json({"capacity": settings.store_size_bytes}) + "\n")
    return 0


def cmd_delete_store(settings: Settings, args: list[str]) -> int:
    main._store(settings).delete_store()
    return 0


def cmd_generate_volume_size_metadata(settings: Settings, args: list[str]) -> int:
    main._store(settings).regenerate_volume_sizes()
    return 0


def cmd_serve_containerd_snapshotter(settings: Settings, args: list[str]) -> int:
    from ..log import LEVELS

    try:
        from ..server.containerd import serve  # grpc and protobuf: only this command loads them
    except ImportError as exc:
        from ..errors import Unsupported

        extra = "graftfs's containerd extra (grpcio, protobuf)"
        raise Unsupported(f"serve containerd-snapshotter needs {extra}: {exc}") from None

    log = main._logger(settings)
    # A server has no stdout line to fail with: what it cannot answer is logged, whatever --log-level says.
    log.level = min(log.level, LEVELS["error"])
    return serve(settings.store, settings.socket, log, namespace=settings.snapshot_namespace)


def cmd_serve_docker_graphdriver(settings: Settings, args: list[str]) -> int:
    from ..log import LEVELS
    from ..server.docker import serve

    log = main._logger(settings)
    log.level = min(log.level, LEVELS["error"])
    publishing = None
    if settings.publish_commits:
        # docker commit of a thin image's container publishes its changes to the bucket (Diff).
        if not settings.s3_bucket:
            raise InvalidArgument("invalid argument: --publish-commits needs --s3-bucket (thin.s3_bucket)")
        from ..server.docker.driver import Publishing
        from .thin import s3_client

        def client() -> S3Client:
            return s3_client(settings, log)

        client().close()  # the settings checked (credentials there, the endpoint a URL) before dockerd needs them
        wait = settings.wait_timeout_seconds if settings.wait else 0
        publishing = Publishing(client, settings.publish_compression, settings.repository_name, wait)
    return serve(settings.store, settings.socket, log, publishing)
