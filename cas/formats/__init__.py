"""Artifact formats in and out of the store: directory trees, OCI layouts and tar layers,
Ollama model stores, composefs images and dumpfiles, and reproducible tar exports.  Formats read
and write local bytes only; transports (``cas.transport``) bring remote ones."""
