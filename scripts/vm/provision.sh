#!/usr/bin/env bash
# Runs inside the chroot of the VM's root file system (scripts/vm-test.sh mounts proc, sys
# and dev for it): Debian's kernel, then the project's own scripts/setup.sh, exactly as a
# user on Debian 12 runs it. Its content is part of the root file system cache's key.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
# nothing may start services inside the chroot: they would run in the host's namespaces
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
apt-get update -qq
# the host's certificate authorities (copied by vm-test.sh), trusted while provisioning
update-ca-certificates >/dev/null 2>&1
export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# the kernel, and sshd for --cluster's second VM (the first logs into it)
apt-get install -y -qq --no-install-recommends linux-image-amd64 openssh-server >/dev/null
cd /opt/tcps
bash scripts/setup.sh
# setup.sh stops Debian's nginx and haproxy only where systemd runs; in a chroot, disable
# them here so that the VM boots without them
systemctl disable -q nginx haproxy 2>/dev/null || true
apt-get clean
rm -rf /usr/local/share/ca-certificates/host
update-ca-certificates --fresh >/dev/null 2>&1
rm -f /usr/sbin/policy-rc.d
echo "/dev/vda / ext4 defaults 0 1" > /etc/fstab
echo tcps-vm > /etc/hostname
