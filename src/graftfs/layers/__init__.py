"""Layer streams: verification while reading, decompression, and unpacking into a volume directory."""
