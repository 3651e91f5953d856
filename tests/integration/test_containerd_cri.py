"""Remote layers through Kubernetes' CRI (issue 15): containerd 1.6's own CRI plugin, enabled in the test
containerd with graftfs as its snapshotter and ``disable_snapshot_annotations = false``
(tests/support/containerd.py), pulls images as kubelet asks it to (``runtime.v1.ImageService/PullImage``,
through tests/support/cri.py: ``crictl`` is not packaged for Debian bookworm). CRI labels each layer's
descriptor with ``containerd.io/snapshot/cri.image-ref``, ``cri.layer-digest``, ``cri.image-layers`` and
``cri.manifest-digest`` (containerd 1.6 ``pkg/cri/server/image_pull.go``, ``appendInfoHandlerWrapper``);
containerd's unpacker passes them on as the layer's snapshot labels with ``containerd.io/snapshot.ref`` (its
``unpacker.go``: ``snapshots.FilterInheritedLabels(desc.Annotations)`` keeps the ``containerd.io/snapshot/``
ones), so graftfs sees the layer digest it looks up in the store's layer repository. The registry's access log
shows which blobs were fetched. The CRI plugin works in containerd's namespace ``k8s.io``."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration import test_containerd_remote as remote
from tests.integration.conftest import Graftfs
from tests.integration.test_containerd import _start, _stop
from tests.integration.test_containerd_remote import Image, _blobs_asked, _check_run, _run, _snapshot_rows, push_app
from tests.support import containerd as ctrd_support
from tests.support import cri, ducc
from tests.support import snapshots_wire as wire
from tests.support.containerd import Containerd
from tests.support.registry import REGISTRY, Registry

pytestmark = [
    pytest.mark.skipif(
        not (os.path.exists(ctrd_support.CONTAINERD) and shutil.which("runc")), reason="needs containerd and runc"
    ),
    pytest.mark.skipif(not Path(ducc.MKFS_EROFS).exists(), reason="needs mkfs.erofs (erofs-utils)"),
    pytest.mark.skipif(not (Path(REGISTRY).exists() and shutil.which("skopeo")), reason="needs docker-registry"),
]

NAMESPACE = "k8s.io"  # CRI's containerd namespace
CRI_LABELS = (
    "containerd.io/snapshot/cri.image-ref",
    "containerd.io/snapshot/cri.layer-digest",
    "containerd.io/snapshot/cri.image-layers",
    "containerd.io/snapshot/cri.manifest-digest",
)


# The remote-layer tests' module fixtures, for this module too: a short work directory (unix socket paths
# have at most 107 bytes) and a registry in it.
work = remote.work
registry = remote.registry


@pytest.fixture(scope="module")
def app(registry: Registry, work: Path) -> Image:
    return push_app(registry, work)


@contextmanager
def _cri_pair(work: Path, name: str, repo: Path) -> Iterator[tuple[wire.Server, Containerd]]:
    """A store using ``repo`` as its layer repository, its snapshotter server, and a containerd with CRI."""
    base = work / name
    Graftfs(base / "store").run("init-store", "--layer-repository", str(repo))
    server, containerd = _start(base, NAMESPACE, cri=True)
    try:
        yield server, containerd
        # Neither CRI nor containerd had anything to complain of about the snapshotter (CRI's own complaint of
        # no CNI configuration is expected: no pod is run here).
        complaints = [
            line
            for line in containerd.log_text().splitlines()
            if ("level=error" in line or "level=warning" in line) and "snapshot" in line
        ]
        assert complaints == [], complaints
    finally:
        _stop(server, containerd)


def _gone(ctr: Containerd, store: Path, timeout: float = 30) -> None:
    """Wait until containerd's garbage collection removed every snapshot (from its records and the store)."""
    deadline = time.monotonic() + timeout
    while _snapshot_rows(ctr) or sorted(os.listdir(store / "snapshots")) != ["keys"]:
        assert time.monotonic() < deadline, (_snapshot_rows(ctr), os.listdir(store / "snapshots"))
        time.sleep(0.2)


def test_a_cri_pull_of_an_image_whose_layers_are_all_in_the_repository_fetches_no_layer(
    work: Path, registry: Registry, app: Image
) -> None:
    src = work / "all-src"
    ducc.write_repository(src, app.layers(0, 1, 2, 3))
    with ducc.erofs(src, work / "all.erofs", work / "all-repo") as repo, _cri_pair(work, "all", repo) as pair:
        server, ctr = pair
        before = registry.log.stat().st_size
        image_id = cri.pull_image(ctr.address, app.ref)
        assert image_id == app.config
        assert _blobs_asked(registry, before) == {app.config}  # the config only: no layer
        rows = _snapshot_rows(ctr)
        assert sorted(r[0] for r in rows) == sorted(app.chains) and all(r[-1] == "Committed" for r in rows), rows
        assert server.log_text().count('.remote-layer"') == 4, server.log_text()
        # Each remote layer keeps the labels CRI sent for it.
        client = wire.WireSnapshotter(server.socket_path)
        try:
            for i, chain in enumerate(app.chains):
                labels = client.stat(chain).labels
                assert all(label in labels for label in CRI_LABELS), labels
                assert labels["containerd.io/snapshot/cri.layer-digest"] == app.digests[i]
                assert labels["containerd.io/snapshot/cri.image-ref"] == app.ref
                assert labels["containerd.io/snapshot/cri.image-layers"] == ",".join(app.digests[i:])
                assert labels["containerd.io/snapshot.ref"] == chain
        finally:
            client.close()
        _check_run(_run(ctr, app.ref, "cri-all"))
        # Kubelet's image garbage collection: CRI removes every reference of the image, then containerd's
        # collector the snapshots; the repository is untouched.
        cri.remove_image(ctr.address, image_id)
        _gone(ctr, work / "all" / "store")
        assert ducc.layer_dir(repo, app.digests[0]).is_dir()


def test_a_cri_pull_with_the_bottom_layers_in_the_repository_fetches_only_the_others(
    work: Path, registry: Registry, app: Image
) -> None:
    src = work / "half-src"
    ducc.write_repository(src, app.layers(0, 1))
    with ducc.erofs(src, work / "half.erofs", work / "half-repo") as repo, _cri_pair(work, "half", repo) as pair:
        server, ctr = pair
        before = registry.log.stat().st_size
        image_id = cri.pull_image(ctr.address, app.ref)
        assert _blobs_asked(registry, before) == {app.config, app.digests[2], app.digests[3]}
        assert server.log_text().count('.remote-layer"') == 2, server.log_text()
        _check_run(_run(ctr, app.ref, "cri-half"))
        cri.remove_image(ctr.address, image_id)
        _gone(ctr, work / "half" / "store")
