"""Garbage collection with GrootFS's threshold semantics, without ever blocking a create.

GrootFS makes clean take a store-wide exclusive lock that every create holds shared, so a clean waits for
in-flight pulls and, past 3 s, fails. Here a volume is protected by its own lock instead (see volumes.py):
clean locks candidate volumes *without waiting*, skips those a create is using, re-reads the dependency
records once it holds its locks (a create that committed in between is seen), and collects the rest.
"""

from __future__ import annotations

import os

from .fsutil import read_int
from .images import Images
from .layout import Layout
from .locks import FileLock
from .volumes import Volumes

GC_LOCK_WAIT = 3.0  # GrootFS's bound: a second clean gives up rather than queue


class CleanResult:
    def __init__(self, ran: bool) -> None:
        self.ran = ran
        self.collected: list[str] = []
        self.leftovers: list[str] = []


def committed_quota(layout: Layout, images: Images) -> int:
    return sum(read_int(os.path.join(layout.image(i), "image_quota")) for i in images.ids())


def volumes_size(volumes: Volumes) -> int:
    return sum(volumes.size(v) for v in volumes.ids())


def in_use(images: Images) -> set[str]:
    used: set[str] = set()
    for image_id in images.ids():
        used.update(images.dependencies(image_id))
    return used


def clean(layout: Layout, threshold: int = 0) -> CleanResult:
    images, volumes = Images(layout), Volumes(layout)
    with FileLock(layout.locks, "groot-gc-lock").held(timeout=GC_LOCK_WAIT):
        if threshold > 0 and committed_quota(layout, images) + volumes_size(volumes) < threshold:
            return CleanResult(ran=False)
        result = CleanResult(ran=True)
        result.leftovers.extend(images.sweep())
        candidates = set(volumes.ids()) - in_use(images)
        held: dict[str, FileLock] = {}
        try:
            for volume_id in sorted(candidates):
                lock = volumes.try_lock_exclusive(volume_id)
                if lock is not None:
                    held[volume_id] = lock
            used = in_use(images)  # again, now that no create can start using what we hold
            for volume_id in held:
                if volume_id not in used and volumes.exists(volume_id):
                    volumes.collect(volume_id)
                    result.collected.append(volume_id)
        finally:
            for lock in held.values():
                lock.release()
        result.leftovers.extend(volumes.sweep())
        return result
