"""Integrity: verification sweeps, their cursor and reports, quarantine and damage marks."""
