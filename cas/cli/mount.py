"""Mount commands: mount, umount."""

from __future__ import annotations

from pathlib import Path

import click

from cas.cli.common import Context, cli, emit, json_option


@cli.command("mount")
@click.argument("name")
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Without kernel fs-verity, rehash the artifact's objects before mounting.")
@json_option
@click.pass_obj
def mount_cmd(obj: Context, name: str, mountpoint: Path, verify: bool, as_json: bool) -> None:
    """Mount artifact NAME read-only at MOUNTPOINT (EROFS image + overlayfs; root only)."""
    from cas.ops import mount as mount_mod
    with obj.open_store() as store:
        result = mount_mod.mount(store, name, mountpoint, verify=verify)
    human = (f"mounted {result.artifact} at {result.mountpoint} (image {result.image}, "
             f"verification: {result.verification}, {result.seconds:.2f}s)")
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
    """Unmount an artifact mounted with ``cas mount``."""
    from cas.ops import mount as mount_mod
    with obj.open_store() as store:
        target = mount_mod.umount(store, mountpoint)
    emit(as_json, {"mountpoint": str(target)}, f"unmounted {target}")
