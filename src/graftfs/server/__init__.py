"""graftfs's long-running front ends (``graftfs serve ...``): each imports its wire library only when it runs."""


def claim_socket(command: str, path: str) -> str:
    """The absolute path a server of ``command`` may listen on at ``path``: its directory made (0700), a socket
    left there by a server that is gone removed; one another server listens on, anything that is not a
    socket, and a path too long for a unix socket refused."""
    import os
    import socket
    import stat

    from ..errors import FailedPrecondition, InvalidArgument

    if not path:
        raise InvalidArgument(f"{command}: --socket is required")
    path = os.path.abspath(path)
    if len(path.encode()) > 107:
        raise InvalidArgument(f"socket path {path} is longer than a unix socket's 107 bytes")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPrecondition(f"cannot serve on {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # stale: nobody accepts on it
        return path
    finally:
        probe.close()
    raise FailedPrecondition(f"cannot serve on {path}: another server is listening on it")
