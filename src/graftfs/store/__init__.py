"""The on-disk store shared by concurrent graftfs processes (no daemon: files, renames and flock)."""
