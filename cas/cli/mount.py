"""Mount commands: mount, umount; mkcomposefs (a composefs image from a dumpfile)."""

from __future__ import annotations

from pathlib import Path

import click

from cas.cli.common import (
    Context,
    cli,
    complete_names,
    emit,
    json_option,
    parse_age,
    trust_check,
    trust_options,
    trust_proven_option,
)
from cas.cli.progress import run_with_progress


@cli.command("mount")
@click.argument("name", shell_complete=complete_names)
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Without kernel fs-verity, rehash the artifact's objects before mounting.")
@click.option("--allow-suid-dev", is_flag=True,
              help="Honour setuid/setgid bits, file capabilities and device nodes (images "
              "meant to run as system trees; the default mounts nosuid,nodev).")
@trust_proven_option
@trust_options
@json_option
@click.pass_obj
def mount_cmd(obj: Context, name: str, mountpoint: Path, verify: bool, allow_suid_dev: bool,
              trust_proven: str | None,
              policy_path: Path | None, require_signature: bool, as_json: bool) -> None:
    """Mount artifact NAME read-only at MOUNTPOINT (EROFS image + overlayfs; root only)."""
    from cas.ops import mount as mount_mod
    check = trust_check(policy_path, require_signature)
    with obj.open_store() as store:
        admit = None if check is None else (
            lambda record, _image: check(store, record.name, record.image))
        result = run_with_progress("mount", None, lambda progress: mount_mod.mount(
            store, name, mountpoint, verify=verify, admit=admit,
            allow_suid_dev=allow_suid_dev, trust_proven=parse_age(trust_proven),
            progress=progress), show=not as_json)
    human = (f"mounted {result.artifact} at {result.mountpoint} (image {result.image}, "
             f"verification: {result.verification}, {result.seconds:.2f}s)")
    if result.verifier is not None and result.verifier.summary():
        human += f"\n{result.verifier.summary()}"
    if result.verification == "userspace":
        human += f"\nwarning: {mount_mod.WARNING}\n{result.why_not_kernel()}"
    elif result.verification == "none":
        human += "\nwarning: objects were not verified (--no-verify)"
    emit(as_json, result.to_json(), human)


@cli.command("umount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@json_option
@click.pass_obj
def umount_cmd(obj: Context, mountpoint: Path, as_json: bool) -> None:
    """Unmount an artifact mounted with 'cas mount'."""
    from cas.ops import mount as mount_mod
    with obj.open_store() as store:
        target = mount_mod.umount(store, mountpoint)
    emit(as_json, {"mountpoint": str(target)}, f"unmounted {target}")


@cli.command("mkcomposefs")
@click.argument("dumpfile", type=click.Path(path_type=Path))
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--min-version", default=0, show_default=True, type=click.IntRange(0, 1),
              help="The composefs image format version to use.")
@click.option("--max-version", default=1, show_default=True, type=click.IntRange(0, 1),
              help="Raise the version up to this where the tree needs it (whiteouts).")
@json_option
def mkcomposefs_cmd(dumpfile: Path, image: Path, min_version: int, max_version: int,
                    as_json: bool) -> None:
    """Write the composefs image of DUMPFILE (composefs-dump(5)) at IMAGE, byte for byte
    as mkcomposefs --from-file does; needs no store.  Prints the image's fs-verity digest."""
    from cas.ops import composefs
    digest = composefs.mkcomposefs(dumpfile, image, version=min_version,
                                   max_version=max(min_version, max_version))
    emit(as_json, {"image": str(image), "fsverity": digest}, digest)
