#!/usr/bin/env bash
# Build (or reuse) the Debian 12 VM image of the `vm` Molecule scenario, from Debian's
# packages only: debootstrap with a kernel, systemd, openssh-server and python3; an ext4 disk
# image filled from that tree without mounting anything (mkfs.ext4 -d); the kernel and
# initrd beside it for qemu's direct kernel boot. Each VM boots a qcow2 overlay of it
# (ansible/molecule/vm/vmctl.py), so the image itself never changes.
#
# Usage: .ci/vm-image.sh        prints the image directory on stdout (progress on stderr):
#          base.img  vmlinuz  initrd.img  id_ed25519 (root's SSH key)  known_hosts
#   CLARITY_VM_CACHE   where images are cached (default /var/cache/clarity-molecule/vm).
#                      An image is reused while its package lists and the customisation
#                      below are unchanged; older images are removed.
#
# Needs root (debootstrap), and Debian's debootstrap, e2fsprogs, openssh-client.
set -euo pipefail

CACHE="${CLARITY_VM_CACHE:-${CLARITY_MOLECULE_CACHE:-/var/cache/clarity-molecule}/vm}"
# The server before the playbook: kernel, systemd, SSH, python3, ifupdown networking.
VM_PACKAGES="linux-image-amd64,initramfs-tools,systemd,systemd-sysv,dbus,udev,openssh-server,\
python3,iproute2,ifupdown,isc-dhcp-client,procps,sudo"
# The Debian packages the roles install on the Redis and worker hosts, installed here, at
# native speed in the chroot: under TCG, dpkg and apt take about ten minutes of the VMs'
# CPU for them. The roles still run their apt tasks (which find them installed) and
# configure everything else as on metal; installing them is what the container scenarios
# prove. A package a role adds later and this list lacks is simply installed by the role
# (CI's `vm` log shows it as a changed apt task: add it here). The second line is the
# common role's hardening tools and unattended-upgrades (6 minutes of TCG when left out).
ROLE_PACKAGES="ca-certificates nftables systemd-timesyncd python3-apt redis-server redis-tools cron
prometheus-redis-exporter prometheus-node-exporter python3-venv
unattended-upgrades auditd needrestart sysstat debsums apt-show-versions libpam-tmpdir libpam-pwquality"

log() { printf '=== %s  %s\n' "$(date +%T)" "$*" >&2; }

apt_source_uris() {  # every URI of this machine's apt sources (deb822 first, then one-line format)
    grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' || true
    grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '{print $2}' || true
}

debian_mirror() {  # the mirror apt already uses on this machine
    local m
    m=$(apt_source_uris | grep -v security | head -n1 || true)
    [[ -n "$m" ]] || { echo "no Debian mirror found in /etc/apt" >&2; return 1; }
    echo "$m"
}

security_mirror() {  # security_mirror MIRROR: this machine's security source, else MIRROR-security
    local m
    m=$(apt_source_uris | grep security | head -n1 || true)
    echo "${m:-${1%/}-security}"
}

customise_rootfs() {  # customise_rootfs ROOTFS OUT MIRROR: turn the debootstrapped tree into a server
    local rootfs="$1" out="$2" mirror="$3"
    # Every VM gets its own machine id at first boot (the overlay keeps it across reboots).
    : > "$rootfs/etc/machine-id"
    rm -f "$rootfs/var/lib/dbus/machine-id"
    echo clarity-vm > "$rootfs/etc/hostname"
    printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > "$rootfs/etc/hosts"
    printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' > "$rootfs/etc/fstab"
    # eth0 (net.ifnames=0): qemu's user-mode NIC, SSH from the controller and the mirror.
    # The private NIC (eth1, on the VDE switch) gets its static address from create.yml,
    # as a provider would hand out a server's private address.
    cat > "$rootfs/etc/network/interfaces" <<'EOF'
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp
EOF
    # A stock Debian server's sources, the security pocket included (the common role adds
    # it only where no source has it: that path is the container scenarios'). Without it
    # here, each VM would refresh apt's lists under TCG once the role had added it.
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
        "$mirror" "$mirror" "$(security_mirror "$mirror")" > "$rootfs/etc/apt/sources.list"
    # Root logs in with this image's key only (sshd's default: prohibit-password).
    install -d -m 0700 "$rootfs/root/.ssh"
    ssh-keygen -q -t ed25519 -N '' -C clarity-vm -f "$out/id_ed25519"
    install -m 0600 "$out/id_ed25519.pub" "$rootfs/root/.ssh/authorized_keys"
    # Every VM has the host keys generated in the tree: pinned on the controller under one
    # alias (ssh -o HostKeyAlias=clarity-vm), so no host key is ever accepted blindly.
    sed 's/^/clarity-vm /' "$rootfs"/etc/ssh/ssh_host_ed25519_key.pub > "$out/known_hosts"
    # apt's daily timers would run apt-get in the middle of a converge or a reboot test and
    # hold the dpkg lock on a slow TCG VM; the package lists are refreshed by the roles.
    ln -sf /dev/null "$rootfs/etc/systemd/system/apt-daily.timer"
    ln -sf /dev/null "$rootfs/etc/systemd/system/apt-daily-upgrade.timer"
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    # No service starts inside the chroot: they start at the VM's first boot, as after an
    # install on metal followed by a reboot.
    printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"
    chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
    # shellcheck disable=SC2086  # a list of package names
    chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive sh -c \
        "apt-get update -qq && apt-get install -qq -y $(echo $ROLE_PACKAGES) && apt-get clean"
    rm -f "$rootfs/usr/sbin/policy-rc.d"
    : > "$rootfs/etc/resolv.conf"
}

image_key() {
    {
        printf '%s\n%s\n' "$VM_PACKAGES" "$ROLE_PACKAGES"
        declare -f customise_rootfs security_mirror apt_source_uris
    } | sha256sum | cut -c1-12
}

build() {  # build DIR: debootstrap, customise, mkfs.ext4 -d; DIR appears only when complete
    local dir="$1" tmp rootfs mirror start
    start=$(date +%s)
    mirror=$(debian_mirror)
    tmp=$(mktemp -d "$CACHE/build.XXXX")
    rootfs="$tmp/rootfs"
    log "debootstrap bookworm ($VM_PACKAGES) from $mirror"
    debootstrap --variant=minbase --include="$VM_PACKAGES" bookworm "$rootfs" "$mirror" \
        > "$tmp/debootstrap.log" 2>&1 \
        || { tail -n 30 "$tmp/debootstrap.log" >&2; rm -rf "$tmp"; return 1; }
    log "customise the tree; install the roles' packages"
    customise_rootfs "$rootfs" "$tmp" "$mirror" > "$tmp/customise.log" 2>&1 \
        || { tail -n 30 "$tmp/customise.log" >&2; rm -rf "$tmp"; return 1; }
    cp "$rootfs"/boot/vmlinuz-* "$tmp/vmlinuz"
    cp "$rootfs"/boot/initrd.img-* "$tmp/initrd.img"
    log "mkfs.ext4 -d (no mount)"
    truncate -s 4G "$tmp/base.img"
    mkfs.ext4 -q -F -L clarity-root -d "$rootfs" "$tmp/base.img"
    # Overlays refer to it: it must never change under a running VM.
    chmod 0444 "$tmp/base.img"
    rm -rf "$rootfs"
    echo "$(( $(date +%s) - start ))" > "$tmp/build-seconds"
    mv "$tmp" "$dir"
    log "image built in $(cat "$dir/build-seconds")s: $dir"
}

main() {
    local key dir old
    mkdir -p "$CACHE"
    key=$(image_key)
    dir="$CACHE/image-$key"
    if [[ -s "$dir/base.img" ]]; then
        log "VM image cached: $dir"
    else
        build "$dir"
    fi
    # Images of older package lists or recipes are dead weight (VMs use the current one);
    # so are builds interrupted more than a day ago.
    for old in "$CACHE"/image-*; do
        if [[ -e "$old" && "$old" != "$dir" ]]; then rm -rf "$old"; fi
    done
    find "$CACHE" -maxdepth 1 -name 'build.*' -mmin +1440 -exec rm -rf {} +
    echo "$dir"
}

main "$@"
