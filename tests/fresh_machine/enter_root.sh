#!/bin/sh
# enter_root.sh ROOT SCRIPT: run SCRIPT (sh -c) as root of the Debian tree ROOT, the way a fresh machine
# would: a clean environment, /proc, /dev, /sys, a tmpfs on /tmp, the host's DNS configuration, and ROOT
# as a real mount point (pivot_root, not chroot: bubblewrap cannot create namespaces inside a chroot).
#
# Everything happens in private mount and PID namespaces: when SCRIPT ends (or this script is killed),
# the kernel removes every mount made here and kills every process left in the PID namespace, so
# nothing stays behind on the host whatever happens.
# Set HB_FRESH_PIP_CACHE to a host directory to share it as the root's pip cache (/root/.cache/pip).
set -eu
root=$(realpath "$1")
script=$2
if [ "${HB_FRESH_IN_NAMESPACE:-}" != "$$" ]; then
  # --fork: the PID namespace's init is this script (PID 1); --kill-child: it dies with unshare
  exec unshare --mount --propagation private --pid --fork --kill-child \
    sh -c 'HB_FRESH_IN_NAMESPACE=$$ exec sh "$0" "$@"' "$0" "$root" "$script"
fi
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
if [ -n "${HB_FRESH_PIP_CACHE:-}" ]; then
  mkdir -p "$root/root/.cache/pip"
  mount --bind "$HB_FRESH_PIP_CACHE" "$root/root/.cache/pip"
fi
cd "$root"
mkdir -p old
pivot_root . old
exec chroot . /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /bin/sh -c 'umount -l /old && rmdir /old && cd /root && exec /bin/sh -ec "$0"' "$script"
