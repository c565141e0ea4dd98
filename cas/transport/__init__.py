"""Transports: the OCI distribution API (pull, push, referrers) and registry credentials."""
