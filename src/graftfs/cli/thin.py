"""``graftfs thin convert|publish|publisher``: thin images and the layer repository (issue 13; see
:mod:`graftfs.repository.convert` and :mod:`graftfs.repository.publish`). Loaded only when one of them runs."""

from __future__ import annotations

import os
import sys

from ..errors import FailedPrecondition, InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..log import Logger
    from ..repository.s3 import S3Client
    from .settings import Settings

CONVERT_USAGE = "thin convert [options] SOURCE --repository DIR --output oci:///PATH[:TAG]"
PUBLISH_USAGE = "thin publish [options] ID --output oci:///PATH[:TAG] --s3-bucket BUCKET [--wait --repository DIR]"
PUBLISHER_USAGE = "thin publisher [options] --repository DIR --s3-bucket BUCKET [--once]"


def _logger(settings: Settings) -> Logger:
    from . import main

    return main._logger(settings)


def repository_dir(settings: Settings, command: str) -> str:
    """The ``--repository`` directory, absolute, there, with its ``.layers`` (made if missing)."""
    from ..repository.layers import LAYERS

    if not settings.repository:
        raise InvalidArgument(f"invalid argument: {command} needs --repository DIR (thin.repository)")
    path = os.path.abspath(settings.repository)
    if not os.path.isdir(path):
        raise FailedPrecondition(f"layer repository {path} is not a directory")
    os.makedirs(os.path.join(path, LAYERS), mode=0o755, exist_ok=True)
    return path


def cmd_thin_convert(settings: Settings, args: list[str]) -> int:
    if len(args) != 1:
        raise InvalidArgument(f"invalid arguments - usage: {CONVERT_USAGE}")
    from .. import reference
    from ..repository.convert import convert, parse_output
    from ..sources import open_source

    (url,) = args
    parse_output(settings.output)
    repository = repository_dir(settings, "thin convert")
    name = settings.repository_name or os.path.basename(os.path.realpath(repository))
    log = _logger(settings)
    source = open_source(
        reference.parse(url),
        skip_layer_validation=settings.skip_layer_validation,
        insecure_registries=tuple(settings.insecure_registries),
        credentials=(settings.username, settings.password) if settings.username or settings.password else None,
    )
    try:
        image, digest = convert(url, source, repository, name, settings.output, log)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    _print({"output": settings.output, "manifest": digest, "layers": [layer.digest for layer in image.layers]})
    return 0


def s3_client(settings: Settings, log: Logger | None = None) -> S3Client:
    """The S3 bucket of the settings: endpoint, bucket and region from flags or the file, credentials from
    the file or the ``AWS_*`` environment (never from a flag, never logged)."""
    from ..repository.s3 import S3Client

    return S3Client(
        settings.s3_bucket,
        endpoint=settings.s3_endpoint or None,
        region=settings.s3_region or None,
        access_key=settings.s3_access_key_id or None,
        secret_key=settings.s3_secret_access_key or None,
        log=log,
    )


def cmd_thin_publish(settings: Settings, args: list[str]) -> int:
    if len(args) != 1:
        raise InvalidArgument(f"invalid arguments - usage: {PUBLISH_USAGE}")
    from ..repository.convert import parse_output
    from ..repository.publish import publish, wait_for
    from . import main

    (image_id,) = args
    parse_output(settings.output)
    repository = repository_dir(settings, "thin publish --wait") if settings.wait else ""
    log = _logger(settings)
    store = main._store(settings)
    with s3_client(settings, log) as client:
        result = publish(
            store,
            image_id,
            client,
            settings.output,
            compression=settings.publish_compression,
            repository_name=settings.repository_name,
            log=log,
        )
    if settings.wait:
        wait_for(repository, result.layer.digest, settings.wait_timeout_seconds)
    _print(
        {
            "output": settings.output,
            "manifest": result.manifest,
            "layer": result.layer.digest,
            "key": result.key,
            "uploaded": result.uploaded,
        }
    )
    return 0


def cmd_thin_publisher(settings: Settings, args: list[str]) -> int:
    if args:
        raise InvalidArgument(f"invalid arguments - usage: {PUBLISHER_USAGE}")
    import shlex

    from ..repository.publish import publisher_pass, run_publisher

    repository = repository_dir(settings, "thin publisher")
    command = shlex.split(settings.ingest_command)
    log = _logger(settings)
    with s3_client(settings, log) as client:
        if settings.once:
            failures = publisher_pass(client, repository, log, command)
            for line in failures:
                print(line)
            return 1 if failures else 0
        run_publisher(client, repository, log, settings.poll_interval_seconds, command)
    return 0


def _print(doc: object) -> None:
    from .. import jsonc

    sys.stdout.write(jsonc.dumps(doc) + "\n")
    sys.stdout.flush()
