"""containerd's snapshot service and mount type, compiled for Python (see scripts/gen-containerd-protos)."""
