"""``graftfs thin convert|publish|publisher``: thin images and the layer repository (issue 13; see
:mod:`graftfs.repository.convert` and :mod:`graftfs.repository.publish`). Loaded only when one of them runs."""

from __future__ import annotations

import sys

from ..errors import InvalidArgument

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
    from ..repository.convert import repository_dir

    if not settings.repository:
        raise InvalidArgument(f"invalid argument: {command} needs --repository DIR (thin.repository)")
    return repository_dir(settings.repository)


def cmd_thin_convert(settings: Settings, args: list[str]) -> int:
    if len(args) != 1:
        raise InvalidArgument(f"invalid arguments - usage: {CONVERT_USAGE}")
    from ..repository.convert import parse_output, thin_convert

    (url,) = args
    parse_output(settings.output)
    repository = repository_dir(settings, "thin convert")
    result = thin_convert(
        url,
        repository,
        settings.output,
        repository_name=settings.repository_name,
        insecure_registries=settings.insecure_registries,
        username=settings.username,
        password=settings.password,
        skip_layer_validation=settings.skip_layer_validation,
        remote_layer_certificates=settings.remote_layer_client_certificates_path,
        log=_logger(settings),
    )
    _print({"output": result.output, "manifest": result.manifest, "layers": result.layers})
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
    from . import main

    (image_id,) = args
    parse_output(settings.output)
    repository = repository_dir(settings, "thin publish --wait") if settings.wait else ""
    store = main._store(settings)
    result = store.thin_publish(
        image_id,
        settings.output,
        settings.s3_bucket,
        endpoint=settings.s3_endpoint or None,
        region=settings.s3_region or None,
        access_key=settings.s3_access_key_id or None,
        secret_key=settings.s3_secret_access_key or None,
        compression=settings.publish_compression,
        repository_name=settings.repository_name,
        wait_repository=repository,
        wait_timeout=settings.wait_timeout_seconds,
    )
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
