#!/bin/sh
# Turns a fresh `debootstrap --variant=minbase` tree into the twin's guest. Run by
# `cargo xtask build-image` inside the chroot; its text is part of the image's input hash, so
# any edit here yields a new image.
set -eu

echo twin >/etc/hostname
cat >/etc/hosts <<'EOF'
127.0.0.1	localhost
127.0.1.1	twin
::1	localhost ip6-localhost ip6-loopback
EOF
# The kernel is booted with root=/dev/vda rw; fsck at boot is pointless on a throw-away overlay.
cat >/etc/fstab <<'EOF'
/dev/vda	/	ext4	rw,errors=remount-ro	0	0
EOF

# A small initrd: only what finds and mounts a virtio root. MODULES=dep would look at the
# build host, not the guest.
cat >/etc/initramfs-tools/conf.d/safetytwin.conf <<'EOF'
MODULES=list
COMPRESS=zstd
EOF
cat >/etc/initramfs-tools/modules <<'EOF'
virtio_pci
virtio_blk
virtio_console
ext4
crc32c_generic
EOF

# Root logs in on the serial console without a password: the twin has no network and is
# reachable only through libvirt on its host, where root already has everything.
passwd -d root >/dev/null
# Password ages count days since the epoch at build time; pin them to SOURCE_DATE_EPOCH.
days=$((SOURCE_DATE_EPOCH / 86400))
awk -F: -v OFS=: -v d="$days" '$3 != "" { $3 = d } { print }' /etc/shadow >/etc/shadow.new
cat /etc/shadow.new >/etc/shadow
rm /etc/shadow.new

# Nothing may change the twin behind the replayer's back or slow its boot: no apt/dpkg/fs
# maintenance timers, no first-boot wizard waiting on the console, no network waits.
systemctl mask --quiet \
    apt-daily.timer apt-daily-upgrade.timer apt-daily.service apt-daily-upgrade.service \
    dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    systemd-firstboot.service systemd-networkd-wait-online.service \
    systemd-timesyncd.service getty@tty1.service
systemctl set-default --quiet multi-user.target

# qemu-guest-agent has no [Install] section: udev starts it when the virtio port
# org.qemu.guest_agent.0 appears. Fail the build if that ever changes.
grep -q qemu-guest-agent.service /lib/udev/rules.d/*qemu-guest-agent*.rules

# Empty, not absent: systemd then generates a machine id on each twin's first boot.
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id

update-initramfs -u -k all

# Bytes that differ between builds of the same inputs or are useless in a twin.
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/ldconfig/aux-cache
rm -f /var/log/dpkg.log /var/log/alternatives.log /var/log/bootstrap.log
rm -rf /var/log/apt/* /var/lib/dpkg/*-old /var/cache/debconf/*-old /etc/*-
rm -f /boot/initrd.img-*.bak
# ConditionNeedsUpdate= units (ldconfig, update-done) have nothing to do on first boot.
touch /etc/.updated /var/.updated
