"""graftfs's long-running front ends (``graftfs serve ...``): each imports its wire library only when it runs."""


def claim_socket(path: str) -> None:
    """Remove a socket left at ``path`` by a server that is gone; refuse one another server listens on, and
    anything that is not a socket."""
    import os
    import socket
    import stat

    from ..errors import FailedPrecondition

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPrecondition(f"cannot serve on {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # stale: nobody accepts on it
        return
    finally:
        probe.close()
    raise FailedPrecondition(f"cannot serve on {path}: another server is listening on it")
