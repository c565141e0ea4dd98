"""The ``cas`` command line: a thin layer over ``cas.Store``, one function per command.

Only ``main`` turns an error into output and an exit code: a one-line message on stderr
(a JSON object with ``--json``), the exit code carried by the error class (see
``cas.errors``), and a traceback only with ``--debug``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import artifacts, errors
from .checkout import LinkMode
from .checkout import checkout as checkout_tree
from .hashing import Progress
from .progress import run_with_progress
from .store import AddResult, Store

F = TypeVar("F", bound=Callable[..., Any])
STORE_ENV = "CAS_STORE"


class Context:
    """What the group options and ``--json`` say; ``main`` reads it to report errors."""

    def __init__(self) -> None:
        self.store_path: str | None = None
        self.debug = False
        self.json = False

    def open_store(self) -> Store:
        if not self.store_path:
            raise click.UsageError(f"no store given: use --store PATH or set ${STORE_ENV}")
        return Store.open(self.store_path)


def json_option(fn: F) -> F:
    """``--json`` on every command: machine-readable output and errors."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        ctx.find_object(Context).json = value  # type: ignore[union-attr]
        return value

    return click.option("--json", "as_json", is_flag=True, callback=remember,
                        expose_value=True, help="Print machine-readable JSON.")(fn)


def emit(as_json: bool, value: Any, human: str) -> None:
    click.echo(json.dumps(value, sort_keys=True) if as_json else human)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "-s", envvar=STORE_ENV, metavar="PATH",
              help=f"The store to use (default: ${STORE_ENV}).")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="cas")
@click.pass_context
def cli(ctx: click.Context, store: str | None, debug: bool) -> None:
    """cas — a content-addressed object store with integrity metadata."""
    context = ctx.ensure_object(Context)
    context.store_path, context.debug = store, debug


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--no-fsync", is_flag=True,
              help="Do not fsync objects before publishing them (faster, not crash-durable).")
@json_option
@click.pass_obj
def init(obj: Context, path: Path, no_fsync: bool, as_json: bool) -> None:
    """Create a new store at PATH."""
    with Store.init(path, fsync=not no_fsync) as store:
        emit(as_json, store.summary(), f"initialised cas store at {store.path}")


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
@click.pass_obj
def add(obj: Context, files: tuple[Path, ...], as_json: bool) -> None:
    """Add FILES to the store; print each object id (reflinked where possible)."""
    results = []
    with obj.open_store() as store:
        for path in files:
            size = path.stat().st_size if path.is_file() else None
            result = run_with_progress(path.name, size, functools.partial(_add, store, path))
            results.append({"path": str(path), **result.to_json()})
            if not as_json:
                state = "stored" if result.new else "already stored"
                click.echo(f"{result.object_id}  {path}  ({state}, {result.method})")
    if as_json:
        click.echo(json.dumps(results, sort_keys=True))


def _add(store: Store, path: Path, progress: Progress) -> AddResult:
    return store.add_path(path, progress=progress)


@cli.command()
@click.argument("object_ref", metavar="OBJECT")
@json_option
@click.pass_obj
def cat(obj: Context, object_ref: str, as_json: bool) -> None:
    """Write an object's bytes to stdout (OBJECT: object id or sha256:<OCI digest>).

    The output is always the raw bytes; --json only makes errors machine-readable.
    """
    with obj.open_store() as store, store.open_verified(store.resolve(object_ref)) as src:
        shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()


@cli.command()
@click.argument("object_refs", nargs=-1, metavar="[OBJECT]...")
@json_option
@click.pass_obj
def stat(obj: Context, object_refs: tuple[str, ...], as_json: bool) -> None:
    """Show the store's summary, or the given objects' size, mode and times."""
    with obj.open_store() as store:
        if not object_refs:
            summary = store.summary()
            emit(as_json, summary, "\n".join(f"{k}: {v}" for k, v in summary.items()))
            return
        infos = [store.stat_object(store.resolve(ref)).to_json() for ref in object_refs]
        emit(as_json, infos, "\n".join(
            f"{i['object']}  size {i['size']}  mode {i['mode']}  links {i['nlink']}"
            for i in infos))


@cli.command("import")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--name", "-n", help="Name for the artifact (default: from the source).")
@click.option("--no-keep-compressed", is_flag=True,
              help="Do not keep compressed tar layers (export then cannot be bit-exact).")
@json_option
@click.pass_obj
def import_(obj: Context, sources: tuple[str, ...], name: str | None, no_keep_compressed: bool,
            as_json: bool) -> None:
    """Import an artifact: a directory, files, oci:PATH[:TAG] or ollama:[PATH][/model:tag]."""
    with obj.open_store() as store:
        records = artifacts.import_artifacts(store, list(sources), name,
                                             keep_compressed=not no_keep_compressed)
    emit(as_json, [r.to_json() for r in records],
         "\n".join(f"{r.name}  {r.image}" for r in records))


@cli.command()
@click.argument("name")
@click.argument("destination")
@json_option
@click.pass_obj
def export(obj: Context, name: str, destination: str, as_json: bool) -> None:
    """Export artifact NAME to oci:PATH[:TAG], ollama:PATH or tar:PATH (a reproducible tar
    layer of its tree: sorted, mtime 0, uid/gid 0)."""
    with obj.open_store() as store:
        result = artifacts.export_artifact(store, name, destination)
    emit(as_json, result, f"exported {result['name']} to {destination}")


@cli.command()
@click.argument("name")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--link", type=click.Choice([m.value for m in LinkMode]), default="auto",
              show_default=True, help="How files are made from objects.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check reflinked and hardlinked objects against their digests first "
              "(--no-verify: metadata only; copies are always checked).")
@json_option
@click.pass_obj
def checkout(obj: Context, name: str, dest: Path, link: str, verify: bool,
             as_json: bool) -> None:
    """Materialise artifact NAME's tree at DEST (which must not exist)."""
    mode = LinkMode(link)
    with obj.open_store() as store:
        image = store.get_image(store.names.get(name).image)
        result = checkout_tree(store, image, dest, mode, verify=verify)
    human = f"checked out {result.files} files ({result.bytes} bytes) to {dest}: " + ", ".join(
        f"{n} {m}" for m, n in sorted(result.methods.items()))
    if mode is LinkMode.HARDLINK:
        human += "\nnote: hardlinked files are the store's read-only objects; never write to them"
    emit(as_json, result.to_json(), human)


@cli.command()
@click.argument("source")
@click.argument("target")
@json_option
@click.pass_obj
def tag(obj: Context, source: str, target: str, as_json: bool) -> None:
    """Give artifact SOURCE another name TARGET."""
    with obj.open_store() as store:
        new = artifacts.tag(store, source, target)
    emit(as_json, new.to_json(), f"{new.name}  {new.image}")


@cli.command("ls")
@json_option
@click.pass_obj
def ls(obj: Context, as_json: bool) -> None:
    """List the named artifacts (DAMAGED: an object it needs is corrupt or missing)."""
    from .quarantine import damaged_artifacts
    with obj.open_store() as store:
        records = list(store.names)
        damaged = damaged_artifacts(store)
    emit(as_json, [{**r.to_json(), "damaged": damaged.get(r.name, [])} for r in records],
         "\n".join(f"{r.name}\t{r.kind}\t{r.image}" + ("\tDAMAGED" if r.name in damaged
                                                         else "") for r in records))


@cli.command()
@click.argument("name")
@json_option
@click.pass_obj
def inspect(obj: Context, name: str, as_json: bool) -> None:
    """Show artifact NAME: its tree with sizes and digests, and its blobs."""
    with obj.open_store() as store:
        info = artifacts.inspect(store, name)
    lines = [f"{info['name']}  image {info['image']}  ({info['kind']}, {info['size']} bytes)"]
    for e in info["entries"]:
        digest = e.get("object", "inline" if e.get("inline") else e.get("target", ""))
        lines.append(f"  {e['type']:<7} {e['mode']} {e['size']:>12}  {e['path']}  {digest}")
    for b in info["blobs"]:
        lines.append(f"  blob    {b['size']:>17}  {b['sha256']}  {b['media_type']}")
    emit(as_json, info, "\n".join(lines))


@cli.command()
@click.argument("names", nargs=-1, required=True)
@json_option
@click.pass_obj
def rm(obj: Context, names: tuple[str, ...], as_json: bool) -> None:
    """Remove artifact names (their bytes go at the next GC)."""
    with obj.open_store() as store:
        removed = [store.names.remove(n) for n in names]
    emit(as_json, [r.to_json() for r in removed], "\n".join(f"removed {r.name}" for r in removed))


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
@click.option("--quiet", "-q", is_flag=True, help="No output unless something fails (cron).")
@json_option
@click.pass_obj
def gc(obj: Context, grace: str, wait: str, max_duration: str | None, dry_run: bool,
       thorough: bool, quiet: bool, as_json: bool) -> None:
    """Remove objects no name needs (safe beside running imports and readers)."""
    from . import gc as gc_mod
    with obj.open_store() as store:
        report = gc_mod.collect(
            store, grace=gc_mod.parse_duration(grace), dry_run=dry_run,
            wait=gc_mod.parse_duration(wait), thorough=thorough,
            max_duration=None if max_duration is None else gc_mod.parse_duration(max_duration))
    if quiet and not as_json:
        return
    verb = "would remove" if dry_run else "removed"
    lines = [f"{oid}" for oid in report.removed]
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
    from . import usage
    with obj.open_store() as store:
        report = usage.measure(store, reflinks=reflinks)
    lines = [f"objects: {report.objects}  bytes: {report.object_bytes}  on disk: "
             f"{report.disk_bytes}",
             f"artifacts: {report.logical_bytes} bytes as files, {report.referenced_bytes} "
             f"stored; dedup saves {report.dedup_saved_bytes}",
             f"unreferenced (gc would free): {report.unreferenced_bytes}"]
    if report.reflink_shared_bytes is not None:
        lines.append(f"shared by reflinks: {report.reflink_shared_bytes}")
    lines += [f"  {a.name}  unique {a.unique_bytes}  shared {a.shared_bytes}" for a in
              report.artifacts]
    emit(as_json, report.to_json(), "\n".join(lines))


cli.add_command(du, "stats")


@cli.command()
@click.option("--full/--structural", default=True,
              help="Rehash objects (default), or only the cheap structural checks.")
@click.option("--max-duration", metavar="DURATION", help="Stop hashing after this long.")
@click.option("--max-bytes", metavar="SIZE", help="Hash at most this much (e.g. 10G) this run.")
@click.option("--rate", metavar="SIZE", help="Hash at most this much per second (e.g. 200M).")
@click.option("--since", metavar="AGE", help="Skip objects verified within AGE (e.g. 7d).")
@click.option("--metrics-file", type=click.Path(path_type=Path),
              help="Write a Prometheus textfile here (atomically).")
@click.option("--wait", default="0", metavar="SECONDS",
              help="Wait this long for another sweep to finish (else exit 7).")
@click.option("--quiet", "-q", is_flag=True, help="Print only problems (cron).")
@json_option
@click.pass_obj
def verify(obj: Context, full: bool, max_duration: str | None, max_bytes: str | None,
           rate: str | None, since: str | None, metrics_file: Path | None, wait: str,
           quiet: bool, as_json: bool) -> None:
    """Check the store: exit 0 clean, 6 problems found (corrupt objects are quarantined
    and their artifacts marked damaged), 7 another sweep is running, 3 store unusable.

    Bounded runs (--max-duration/--max-bytes) continue where the last one stopped."""
    from . import verify as verify_mod
    from .gc import parse_duration
    from .verify_report import write_metrics
    limits = verify_mod.Limits(
        max_duration=None if max_duration is None else parse_duration(max_duration),
        max_bytes=None if max_bytes is None else _size(max_bytes),
        rate=None if rate is None else _size(rate),
        since=None if since is None else parse_duration(since))
    with obj.open_store() as store:
        report = verify_mod.sweep(store, full=full, limits=limits, wait=parse_duration(wait))
    if metrics_file is not None:
        write_metrics(metrics_file, report)
    text = report.human(quiet)
    if as_json or text:
        emit(as_json, report.to_json(), text)
    if not report.clean:
        raise click.exceptions.Exit(errors.PROBLEMS_FOUND)


@cli.command()
@click.option("--from", "source", required=True, metavar="SOURCE",
              help="A cas store path, oci:PATH or ollama:PATH holding good copies.")
@json_option
@click.pass_obj
def repair(obj: Context, source: str, as_json: bool) -> None:
    """Restore damaged objects from SOURCE (digests checked before they enter the store);
    exit 6 if some remain damaged."""
    from .quarantine import repair as repair_store
    from .verify_state import sweep_lock
    with obj.open_store() as store, sweep_lock(store):
        report = repair_store(store, source)
    emit(as_json, report.to_json(), report.human())
    if not report.complete:
        raise click.exceptions.Exit(errors.PROBLEMS_FOUND)


_SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _size(text: str) -> int:
    """``1048576``, ``512K``, ``200M``, ``10G`` (binary units) → bytes."""
    value = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = _SIZE_UNITS.get(value[-1:], 1)
    try:
        size = int(float(value[:-1] if unit > 1 else value) * unit)
    except ValueError:
        raise errors.BadInput(message=f"bad size {text!r}: use e.g. 4096, 512K, 10G") from None
    if size <= 0:
        raise errors.BadInput(message=f"bad size {text!r}: must be positive")
    return size


def registry_options(fn: F) -> F:
    """``--insecure``, ``--username``, ``--password``/``--password-stdin`` for registries."""
    for option in reversed([
            click.option("--insecure", is_flag=True,
                         help="Allow plain HTTP and unverified TLS (local test registries)."),
            click.option("--username", "-u", help="Registry user (else the auth files)."),
            click.option("--password", "-p", help="Registry password (prefer --password-stdin)."),
            click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")]):
        fn = option(fn)
    return fn


def _registry_options(insecure: bool, username: str | None, password: str | None,
                      password_stdin: bool, platform: str | None = None) -> Any:
    from .auth import Credentials
    from .registry import Options
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    if (username is None) != (password is None):
        raise click.UsageError("give both --username and a password, or neither")
    credentials = Credentials(username, password) if username and password is not None else None
    return Options(insecure=insecure, credentials=credentials, platform=platform)


@cli.command()
@click.argument("ref", metavar="REF")
@click.option("--name", "-n", help="Name for the artifact (default: HOST/REPO:TAG).")
@click.option("--platform", metavar="OS/ARCH", help="Pick this platform from an index.")
@registry_options
@json_option
@click.pass_obj
def pull(obj: Context, ref: str, name: str | None, platform: str | None, insecure: bool,
         username: str | None, password: str | None, password_stdin: bool,
         as_json: bool) -> None:
    """Pull REF ([docker://]HOST[:PORT]/REPO[:TAG|@sha256:...]) from a registry and name it."""
    from . import registry
    options = _registry_options(insecure, username, password, password_stdin, platform)
    with obj.open_store() as store:
        record = run_with_progress("pull", None, lambda progress: registry.pull(
            store, ref, name, options, progress))
    emit(as_json, record.to_json(), f"{record.name}  {record.image}")


@cli.command()
@click.argument("name")
@click.argument("ref", metavar="REF")
@click.option("--mount-from", metavar="REPO",
              help="Mount blobs the registry holds in REPO instead of uploading them.")
@registry_options
@json_option
@click.pass_obj
def push(obj: Context, name: str, ref: str, mount_from: str | None, insecure: bool,
         username: str | None, password: str | None, password_stdin: bool,
         as_json: bool) -> None:
    """Push artifact NAME to REF (same manifest, same digests as it was imported with)."""
    from . import registry
    options = _registry_options(insecure, username, password, password_stdin)
    with obj.open_store() as store:
        record = store.names.get(name)
        digest = registry.push_image(store, store.get_image(record.image), ref, options,
                                     default_tag=record.name.rpartition(":")[2],
                                     mount_from=mount_from)
    emit(as_json, {"name": record.name, "destination": ref, "digest": digest},
         f"pushed {record.name} to {ref} ({digest})")


@cli.command()
@click.argument("ref", metavar="REF")
@registry_options
@json_option
@click.pass_obj
def referrers(obj: Context, ref: str, insecure: bool, username: str | None,
              password: str | None, password_stdin: bool, as_json: bool) -> None:
    """List the artifacts that refer to REF's manifest (referrers API or tag fallback)."""
    from . import registry
    found = registry.referrers(ref, _registry_options(insecure, username, password,
                                                      password_stdin))
    emit(as_json, found, "\n".join(f"{d['digest']}  {d.get('artifactType', d['mediaType'])}"
                                   for d in found))


@cli.command("mount")
@click.argument("name")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Without kernel fs-verity, rehash the artifact's objects before mounting.")
@json_option
@click.pass_obj
def mount_cmd(obj: Context, name: str, mountpoint: Path, verify: bool, as_json: bool) -> None:
    """Mount artifact NAME read-only at MOUNTPOINT (EROFS image + overlayfs; root only)."""
    from . import mount as mount_mod
    with obj.open_store() as store:
        result = mount_mod.mount(store, name, mountpoint, verify=verify)
    human = (f"mounted {result.artifact} at {result.mountpoint} (image {result.image}, "
             f"verification: {result.verification}, {result.seconds:.2f}s)")
    if result.verification == "userspace":
        human += f"\nwarning: {mount_mod.WARNING}"
    elif result.verification == "none":
        human += "\nwarning: objects were not verified (--no-verify)"
    emit(as_json, result.to_json(), human)


@cli.command("umount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@json_option
@click.pass_obj
def umount_cmd(obj: Context, mountpoint: Path, as_json: bool) -> None:
    """Unmount an artifact mounted with ``cas mount``."""
    from . import mount as mount_mod
    with obj.open_store() as store:
        target = mount_mod.umount(store, mountpoint)
    emit(as_json, {"mountpoint": str(target)}, f"unmounted {target}")


def _report(error: BaseException, as_json: bool, debug: bool) -> int:
    if debug:
        traceback.print_exception(error)
    if isinstance(error, errors.CasError):
        payload, code = error.to_json(), error.exit_code
    elif isinstance(error, OSError):
        message = f"{error.filename}: {error.strerror}" if error.filename else str(error)
        payload, code = {"error": "os-error", "message": message}, 1
    else:
        payload, code = {"error": "internal-error", "message": repr(error)}, 1
    line = json.dumps(payload, sort_keys=True) if as_json else f"cas: error: {payload['message']}"
    click.echo(line, err=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, map errors to one line on stderr and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    context = Context()
    context.debug = "--debug" in args
    try:
        with cli.make_context("cas", args, obj=context) as ctx:
            cli.invoke(ctx)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("cas: interrupted", err=True)
        return 130
    except BrokenPipeError:
        # the reader went away (cas cat | head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # every other error: one line, mapped exit code
        return _report(exc, context.json, context.debug)


if __name__ == "__main__":
    sys.exit(main())
