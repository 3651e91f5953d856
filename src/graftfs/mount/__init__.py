"""Mount specs are data; they are performed in exactly one place (:func:`graftfs.mount.kernel.mount_overlay`)."""
