"""The VM's provisioning path, checked here since a VM cannot boot on this machine:
the Vagrantfile provisions with scripts/setup.sh (the script CI runs), and that path is
valid shell (`bash -n`, and shellcheck where Debian's package is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .conftest import ROOT

VAGRANTFILE = ROOT / "Vagrantfile"
SETUP = ROOT / "scripts" / "setup.sh"


def provision_script() -> str:
    """The inline shell the Vagrantfile runs as root (the ``PROVISION`` heredoc)."""
    m = re.search(r"^PROVISION = <<~'SHELL'\n(.*?)^SHELL$", VAGRANTFILE.read_text(), re.M | re.S)
    assert m, "the Vagrantfile keeps its provisioning in a PROVISION <<~'SHELL' heredoc"
    lines = m.group(1).splitlines()
    indent = min(len(l) - len(l.lstrip()) for l in lines if l.strip())  # <<~ strips it
    return "#!/usr/bin/env bash\n" + "\n".join(l[indent:] for l in lines) + "\n"


def test_vagrantfile_is_debian_12_provisioned_by_the_ci_setup_script():
    text = VAGRANTFILE.read_text()
    assert re.search(r'"debian/bookworm64"', text), "Debian 12 (bookworm) box"
    assert re.search(r'config\.vm\.provision "shell".*inline: PROVISION', text)
    script = provision_script()
    assert re.search(r"^cd /vagrant$", script, re.M) and re.search(r"^bash scripts/setup\.sh$", script, re.M)
    assert "set -euo pipefail" in script, "a failing setup must fail `vagrant up`"
    # CI runs the same script: .ci/run -> make test -> make setup -> bash scripts/setup.sh
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^setup:\n\tbash scripts/setup\.sh$", (ROOT / "Makefile").read_text(), re.M)
    assert SETUP.exists()


def test_setup_installs_mininet_without_open_vswitch():
    text = SETUP.read_text()
    assert re.search(r"\bmininet bridge-utils iputils-ping\b", text)
    assert "--no-install-recommends" in text and "openvswitch" not in text


@pytest.mark.parametrize("which", ["setup.sh", "Vagrantfile provision"])
def test_provisioning_shell_parses(which, tmp_path):
    path = SETUP
    if which != "setup.sh":
        path = tmp_path / "provision.sh"
        path.write_text(provision_script())
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("which", ["setup.sh", "Vagrantfile provision"])
def test_provisioning_shell_passes_shellcheck(which, tmp_path):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed: apt-get install --no-install-recommends shellcheck")
    path = SETUP
    if which != "setup.sh":
        path = tmp_path / "provision.sh"
        path.write_text(provision_script())
    proc = subprocess.run(["shellcheck", "--severity=style", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


RUBY_STUB = r"""
# a stand-in for Vagrant's config object: records every setting the Vagrantfile makes
class Rec
  def initialize(path, log) @path, @log = path, log end
  def method_missing(name, *args, **kw, &blk)
    key = "#{@path}.#{name}".sub(/^\./, "")
    @log << [key, args.map(&:to_s), kw.transform_values(&:to_s)]
    blk.call(Rec.new(key, @log)) if blk
    Rec.new(key, @log)
  end
  def respond_to_missing?(*) true end
end
module Vagrant
  LOG = []
  def self.configure(version) yield Rec.new("", LOG) end
end
load ARGV[0]
Vagrant::LOG.each { |k, a, kw| puts [k, a.join(" "), kw.map { |x, y| "#{x}=#{y}" }.join(" ")].join(" | ") }
"""


def test_vagrantfile_evaluates_where_ruby_is_installed(tmp_path):
    if shutil.which("ruby") is None:
        pytest.skip("ruby is not installed (Vagrant brings its own)")
    proc = subprocess.run(["ruby", "-c", str(VAGRANTFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    stub = tmp_path / "stub.rb"
    stub.write_text(RUBY_STUB)
    proc = subprocess.run(["ruby", str(stub), str(VAGRANTFILE)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    calls = proc.stdout
    assert "vm.box= | debian/bookworm64" in calls
    assert re.search(r"^vm\.provision \| shell \| .*inline=.*bash scripts/setup\.sh", calls, re.M | re.S), calls
    assert "vm.provider | virtualbox" in calls and "vm.provider.cpus= | 2" in calls
