"""Maintenance commands, built to run from cron: verify, repair, gc, du."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from cas import errors
from cas.cli.common import (
    Context,
    cli,
    emit,
    json_option,
    parse_size,
    policy_option,
    registry_options,
    registry_settings,
    verity_line,
)
from cas.cli.progress import run_with_progress


@cli.command()
@click.option("--grace", default="1h", show_default=True, metavar="DURATION",
              help="Keep unreferenced objects younger than this (90s, 30m, 1h, 2d).")
@click.option("--wait", default="0", metavar="SECONDS",
              help="Wait this long for another gc to finish (else exit 8).")
@click.option("--max-duration", default=None, metavar="DURATION",
              help="Stop deleting after this long and report a partial run.")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--thorough", is_flag=True,
              help="Also walk the whole sha256 index for links whose object is gone.")
@click.option("--metrics-file", type=click.Path(path_type=Path),
              help="Write a Prometheus textfile here (atomically; not with --dry-run).")
@click.option("--quiet", "-q", is_flag=True, help="No output unless something fails (cron).")
@json_option
@click.pass_obj
def gc(obj: Context, grace: str, wait: str, max_duration: str | None, dry_run: bool,
       thorough: bool, metrics_file: Path | None, quiet: bool, as_json: bool) -> None:
    """Remove objects no name needs (safe beside running imports and readers)."""
    from cas.ops import gc as gc_mod
    if dry_run and metrics_file is not None:
        raise click.UsageError("--metrics-file describes real runs: drop it or --dry-run")
    started = time.time()
    with obj.open_store() as store, store.write_errors():
        report = gc_mod.collect(
            store, grace=gc_mod.parse_duration(grace), dry_run=dry_run,
            wait=gc_mod.parse_duration(wait), thorough=thorough,
            max_duration=None if max_duration is None else gc_mod.parse_duration(max_duration))
    if metrics_file is not None:
        from cas.ops.gc_metrics import write_gc_metrics
        write_gc_metrics(metrics_file, report, started)
    skipped = [f"skipped {errors.printable(entry)}" for entry in report.skipped]
    if quiet and not as_json:
        if skipped:  # damage to look at, even from cron
            click.echo("\n".join(skipped))
        return
    verb = "would remove" if dry_run else "removed"
    lines = [f"{oid}" for oid in report.removed] + skipped
    lines.append(f"{verb} {report.objects_removed} objects ({report.bytes_removed} bytes), "
                 f"{report.index_removed} index entries, {report.temp_files_removed} temp files "
                 f"in {report.seconds:.2f}s; kept {report.reachable} reachable, "
                 f"{report.kept_in_grace} in grace period"
                 + ("" if report.complete else "; stopped at --max-duration (partial)"))
    emit(as_json, report.to_json(), "\n".join(lines))


@cli.command("du")
@click.option("--reflinks", is_flag=True, help="Also measure extents shared by reflinks "
              "(one FIEMAP call per object).")
@json_option
@click.pass_obj
def du(obj: Context, reflinks: bool, as_json: bool) -> None:
    """Disk usage: totals, bytes saved by dedup (and reflinks), per-artifact bytes."""
    from cas.ops import usage
    with obj.open_store() as store:
        report = usage.measure(store, reflinks=reflinks)
    lines = [f"objects: {report.objects}  bytes: {report.object_bytes}  on disk: "
             f"{report.disk_bytes}",
             f"artifacts: {report.logical_bytes} bytes as files, {report.referenced_bytes} "
             f"stored; dedup saves {report.dedup_saved_bytes}",
             f"unreferenced (gc would free): {report.unreferenced_bytes}"]
    if report.reflink_shared_bytes is not None:
        lines.append(f"shared by reflinks: {report.reflink_shared_bytes}")
    lines.append(verity_line(report.kernel_verity))
    lines += [f"  {a.name}  unique {a.unique_bytes}  shared {a.shared_bytes}" for a in
              report.artifacts]
    emit(as_json, report.to_json(), "\n".join(lines))


# the old name of du, too close to ``stat``: still works, says so, hidden from help
cli.add_command(click.Command(
    "stats", callback=du.callback, params=du.params, hidden=True,
    help="Deprecated: use 'cas du' (disk usage); 'cas stat' shows the store or objects.",
    deprecated="use 'cas du' (disk usage); 'cas stat' shows the store summary or objects"))


@cli.command()
@click.option("--full", "mode", flag_value="full", default=True,
              help="Prove every object's bytes: read every block from the disk (the kernel "
              "checks each one where objects have fs-verity; else rehash). The default.")
@click.option("--measure", "mode", flag_value="measure",
              help="Cheaper: compare each object's kernel fs-verity measurement with its "
              "name (proves the Merkle tree, not the data blocks); objects without "
              "fs-verity are read as with --full.")
@click.option("--structural", "mode", flag_value="structural",
              help="Only the structural checks: names, images, sizes, modes, index.")
@click.option("--max-duration", metavar="DURATION", help="Stop checking after this long.")
@click.option("--max-bytes", metavar="SIZE", help="Check at most this much (e.g. 10G) this run.")
@click.option("--rate", metavar="SIZE", help="Check at most this much per second (e.g. 200M).")
@click.option("--since", metavar="AGE", help="Skip objects verified within AGE (e.g. 7d).")
@click.option("--metrics-file", type=click.Path(path_type=Path),
              help="Write a Prometheus textfile here (atomically).")
@click.option("--wait", default="0", metavar="SECONDS",
              help="Wait this long for another sweep to finish (else exit 7).")
@click.option("--quiet", "-q", is_flag=True, help="Print only problems (cron).")
@policy_option
@json_option
@click.pass_obj
def verify(obj: Context, mode: str, max_duration: str | None, max_bytes: str | None,
           rate: str | None, since: str | None, metrics_file: Path | None, wait: str,
           quiet: bool, policy_path: Path | None, as_json: bool) -> None:
    """Check the store: exit 0 clean, 6 problems found (corrupt objects are quarantined
    and their artifacts marked damaged), 7 another sweep is running, 3 store unusable.

    Bounded runs (--max-duration/--max-bytes) continue where the last one stopped.  Every
    name is judged again by its stored signatures under the trust policy (the default one
    if it exists); names it refuses are reported as signature-rejected.  The report says
    whether the store's filesystem gives objects kernel fs-verity, and why not; objects
    stored before it had fs-verity get it while they are checked."""
    from cas.integrity import policy
    from cas.integrity import verify as verify_mod
    from cas.integrity.verify_report import write_metrics
    from cas.ops import signing
    from cas.ops.gc import parse_duration
    rules = policy.load(policy_path) if policy_path or policy.default_path() else None
    limits = verify_mod.Limits(
        max_duration=None if max_duration is None else parse_duration(max_duration),
        max_bytes=None if max_bytes is None else parse_size(max_bytes),
        rate=None if rate is None else parse_size(rate),
        since=None if since is None else parse_duration(since))
    with obj.open_store() as store, store.write_errors():
        report = run_with_progress("verify", None, lambda progress: verify_mod.sweep(
            store, mode=mode, limits=limits, wait=parse_duration(wait), progress=progress,
            act=True), show=not (quiet or as_json))  # the CLI quarantines and marks
        if rules is not None:
            report.findings += signing.recheck(store, rules)
    if metrics_file is not None:
        write_metrics(metrics_file, report)
    text = report.human(quiet)
    if as_json or text:
        emit(as_json, report.to_json(), text)
    if not report.clean:
        raise click.exceptions.Exit(errors.PROBLEMS_FOUND)


@cli.command()
@click.option("--from", "source", metavar="SOURCE",
              help="A cas store path, oci:PATH, ollama:PATH or docker://REF holding good "
              "copies.")
@registry_options
@json_option
@click.pass_obj
def repair(obj: Context, /, source: str | None, as_json: bool, **connection: Any) -> None:
    """Fix what can be fixed in place (object files with a write bit get mode 0444) and
    restore damaged objects from SOURCE (digests checked before they enter the store);
    exit 6 if some remain damaged (always, without --from, while any is marked).  A
    registry (docker://REF) serves the blobs of REF's repository by digest."""
    from cas.integrity.verify_state import sweep_lock
    from cas.ops.repair import repair as repair_store
    options = registry_settings(**connection)
    with obj.open_store() as store, store.write_errors(), sweep_lock(store):
        report = repair_store(store, source, options)
    emit(as_json, report.to_json(), report.human())
    if not report.complete:
        raise click.exceptions.Exit(errors.PROBLEMS_FOUND)
