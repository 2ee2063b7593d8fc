"""scripts/vm-test.sh on this machine: what it can be checked for without booting the VM
(the boot itself is `make vm-test`, run by CI): shell lint, and the one-line refusal that
names the Debian package of a missing tool."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

SCRIPTS = [ROOT / "scripts" / "vm-test.sh", *sorted((ROOT / "scripts" / "vm").glob("*.sh"))]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_vm_scripts_pass_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed: apt-get install --no-install-recommends shellcheck")
    proc = subprocess.run(["shellcheck", "--severity=warning", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_missing_qemu_is_refused_in_one_line_naming_its_package(tmp_path):
    """A PATH holding every command of this machine except qemu-system-x86_64. The other
    tools the script needs may be missing too (a new machine lacks debootstrap until the
    first VM run installs it): the one line names each missing package, qemu's first."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if not Path(d).is_dir() or Path(d).is_symlink():
            continue
        for cmd in Path(d).iterdir():
            if cmd.name != "qemu-system-x86_64" and not (bin_dir / cmd.name).exists():
                (bin_dir / cmd.name).symlink_to(cmd)
    env = {**os.environ, "PATH": str(bin_dir)}
    proc = subprocess.run(["bash", str(SCRIPTS[0])], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 2
    others = [pkg for cmd, pkg in (("debootstrap", "debootstrap"), ("mkfs.ext4", "e2fsprogs"))
              if shutil.which(cmd, path=str(bin_dir)) is None]
    packages = " ".join(["qemu-system-x86", *others])
    assert proc.stderr.splitlines() == [
        f"vm-test.sh: missing {packages}: apt-get install {packages} (or run with --install)"]
    assert proc.stdout == ""
