# shellcheck shell=bash
# The worker disk image Orrery's NodePools boot as KubeVirt VMs: a Debian guest with the ground's
# kubelet, kubeadm and kubectl, containerd with every image a node runs preloaded (there is no
# registry), and cloud-init, packaged as a KubeVirt containerDisk. Sourced by e2e/images
# (commands worker, worker-ref, worker-kernel-args, worker-check), which sets here, cache_root,
# PAUSE_TAG, live (its tools: mkimage, crictl) and the pins of versions.env, and defines say, die,
# layer_tar and build_node_images.
#
# The image orrery.dev/worker:<version> (one per WORKER_KUBERNETES_VERSIONS) holds, each mode 0444:
#   /disk/worker.qcow2   the guest's disk: one ext4 filesystem labelled orrery-root on the whole
#                        disk (no partition table, no bootloader), 6 GiB virtual, compressed qcow2
#   /boot/vmlinuz, /boot/initrd.img   the guest's own kernel and initrd, for KubeVirt's kernelBoot
# and boots with the kernel command line `e2e/images worker-kernel-args` prints.
#
# Caches, each keyed by the hash of what decides its bits:
#   <cache>/worker/rootfs-<suite>-<key>.tar      the Debian tree from mmdebstrap (suite, packages)
#   <cache>/images/worker-<version>-<key>.tar    the image tarball (the tree, e2e/worker/, the kube
#                                                binary of <version>, the preloaded tarballs, this
#                                                recipe)
# Every result is written beside its final name and renamed into place when complete.

# The version of the image being built or checked (ensure_worker_image sets it).
worker_version=$KUBERNETES_VERSION

worker_ref() { printf 'orrery.dev/worker:%s\n' "${1:-$worker_version}"; }

worker_root_label="orrery-root"
# The kernel command line of kernelBoot (spec.domain.firmware.kernelBoot.kernelArgs): the root
# filesystem by its label, mounted read-write by the initrd, and the console on the serial port
# KubeVirt connects (`virtctl console`).
worker_kernel_args="root=LABEL=$worker_root_label rw console=ttyS0"

# The image groups of e2e/images preloaded into the guest's containerd: the sandbox, kube-proxy,
# CoreDNS and konnectivity-agent of the image's version, and the CSI node plugin (more images a
# node runs go here).
worker_preload_groups() {
  local minor=${worker_version#v1.} konnectivity coredns
  minor=${minor%%.*}
  konnectivity=$(addon_releases 2 "$minor")
  coredns=$(addon_releases 3 "$minor")
  if [ -z "$konnectivity" ] || [ -z "$coredns" ]; then die "TENANT_ADDON_RELEASES has no entry for minor $minor"; fi
  echo pause
  if [ "$worker_version" = "$KUBERNETES_VERSION" ]; then echo kube-proxy; else echo "kube-proxy-$worker_version"; fi
  if [ "$konnectivity" = "$KONNECTIVITY_VERSION" ]; then echo konnectivity; else echo "konnectivity-$konnectivity"; fi
  if [ "$coredns" = "$COREDNS_VERSION" ]; then echo coredns; else echo "coredns-$coredns"; fi
  echo csi-node
}

# ---------------------------------------------------------------------------------------------
# the Debian tree

worker_rootfs_key() {
  {
    grep '^WORKER_DEBIAN_SUITE=' "$here/versions.env"
    sed -n '/^# worker-rootfs-begin/,/^# worker-rootfs-end/p' "$here/ground.d/worker-image.sh"
  } | sha256sum | cut -c1-16
}

worker_rootfs_path() { printf '%s/worker/rootfs-%s-%s.tar\n' "$cache_root" "$WORKER_DEBIAN_SUITE" "$(worker_rootfs_key)"; }

# worker-rootfs-begin
# A cloud VM (kernel with virtio built in, systemd, udev, cloud-init; systemd-networkd and
# -resolved as the network stack cloud-init renders for), a Kubernetes node's runtime and tools
# (containerd, runc, the CNI plugins, iptables, conntrack, ethtool, socat, iproute2, kmod), and
# what operators reach it with (openssh-server, sudo, qemu-guest-agent).
worker_packages=linux-image-cloud-amd64,systemd,systemd-sysv,systemd-resolved,udev,dbus,cloud-init
worker_packages+=,containerd,runc,containernetworking-plugins,iptables,conntrack,ethtool,socat,iproute2
worker_packages+=,kmod,netbase,procps,openssh-server,sudo,ca-certificates,curl,e2fsprogs,qemu-guest-agent
# The filesystems the CSI node plugin makes and grows on the node's disks.
worker_packages+=,xfsprogs

# The security archive the host's apt uses (next to the mirror kubevirt_mirror finds).
worker_security_mirror() {
  local url
  url=$(sed -n 's#^URIs: *\(https\{0,1\}://[^ ]*/debian-security\)/\{0,1\}$#\1#p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
  [ -n "$url" ] || url=$(sed -n 's#^deb \(https\{0,1\}://[^ ]*/debian-security\)/\{0,1\} .*#\1#p' /etc/apt/sources.list 2>/dev/null | head -1)
  echo "${url:-http://deb.debian.org/debian-security}"
}

build_worker_rootfs() { # output tarball
  local out=$1 s=$WORKER_DEBIAN_SUITE mirror
  mirror=$(kubevirt_mirror)
  rm -f "$out.partial"
  mkdir -p "$(dirname "$out")"
  # The suite with its point-release and security updates, as a cloud image has them. The hook
  # runs before the kernel is installed: the initrd then carries e2fsck for the root filesystem
  # (its type cannot be probed inside the build).
  # shellcheck disable=SC2016 # the hook expands $1 (the tree) when mmdebstrap runs it
  nice -n 19 mmdebstrap --quiet --variant=minbase --format=tar \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" && echo FSTYPE=ext4 >"$1/etc/initramfs-tools/conf.d/fstype.conf"' \
    --include="$worker_packages" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$s" "$out.partial" "deb $mirror $s main" "deb $mirror $s-updates main" \
    "deb $(worker_security_mirror) $s-security main" >&2
  mv "$out.partial" "$out"
}
# worker-rootfs-end

ensure_worker_rootfs() {
  local out start
  out=$(worker_rootfs_path)
  if [ -f "$out" ]; then
    say "worker rootfs up to date in $out"
  else
    command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (e2e/install-deps)"
    say "building the Debian $WORKER_DEBIAN_SUITE tree of the worker image into $out"
    start=$(date +%s)
    build_worker_rootfs "$out"
    # Trees of other inputs are stale.
    find "$cache_root/worker" -maxdepth 1 -name 'rootfs-*.tar' ! -path "$out" -delete
    say "worker rootfs built in $(($(date +%s) - start))s"
  fi
  worker_rootfs=$out
}

# ---------------------------------------------------------------------------------------------
# the image

# worker-image-begin
worker_disk_size=6G

# The guest's own files (e2e/worker/ is laid out as the guest's tree; executables keep their bit),
# the ground's Kubernetes binaries and crictl, the CNI plugins where network add-ons expect them,
# and the services.
stage_worker() { # tree
  local tree=$1 f p
  while read -r f; do
    mkdir -p "$(dirname "$tree/$f")"
    sed -e "s#@PAUSE_IMAGE@#registry.k8s.io/pause:$PAUSE_TAG#g" -e "s#@ROOT_LABEL@#$worker_root_label#g" \
      "$here/worker/$f" >"$tree/$f"
    if [ -x "$here/worker/$f" ]; then chmod 0755 "$tree/$f"; else chmod 0644 "$tree/$f"; fi
  done < <(cd "$here/worker" && find . -type f | LC_ALL=C sort)
  # The multi-call binary runs the component its name says, as upstream's packages install them.
  install -m 0755 "$kube_bin/kube" "$tree/usr/bin/kube"
  for f in kubelet kubeadm kubectl; do ln -sfn kube "$tree/usr/bin/$f"; done
  install -m 0755 "$live/crictl" "$tree/usr/bin/crictl"
  mkdir -p "$tree/opt/cni/bin"
  for p in "$tree"/usr/lib/cni/*; do ln -sfn "/usr/lib/cni/$(basename "$p")" "$tree/opt/cni/bin/$(basename "$p")"; done
  # systemd-resolved serves names to the node; kubeadm points the kubelet at its upstream list.
  ln -sfn ../run/systemd/resolve/stub-resolv.conf "$tree/etc/resolv.conf"
  # Each VM makes its own host keys (cloud-init's ssh module) and machine-id (systemd) at first boot.
  rm -f "$tree"/etc/ssh/ssh_host_*
  : >"$tree/etc/machine-id"
  # The pod network's and the node address's units wait (as path units) for the node to join; see
  # orrery-pod-network and orrery-node-address.
  chroot "$tree" systemctl --quiet enable systemd-networkd.service systemd-resolved.service containerd.service \
    kubelet.service orrery-pod-network.path orrery-node-address.path
  # Nothing to fetch from in a tenant's VM, and a node does not upgrade itself.
  chroot "$tree" systemctl --quiet mask apt-daily.timer apt-daily-upgrade.timer
}

# containerd's store keeps a format of its own: the host's containerd writes the guest's only if
# both are the same minor release.
worker_check_containerd() { # tree
  local host guest
  host=$(containerd --version | awk '{print $3}')
  # shellcheck disable=SC2016 # a dpkg-query format, not a shell expansion
  guest=$(chroot "$1" dpkg-query -W -f='${Version}' containerd)
  [ "${host%.*}" = "${guest%.*}" ] ||
    die "the host's containerd $host cannot preload images for the guest's $guest (same minor release needed)"
}

# Imports image tarballs into the guest's containerd (namespace k8s.io, where the CRI looks) by
# running the host's containerd on the guest's /var/lib/containerd for the time of the import.
preload_worker_images() { # tree tarball...
  local tree=$1 tmp pid t i
  shift
  tmp=$(mktemp -d /tmp/orrery-worker-containerd.XXXXXX)
  cat >"$tmp/config.toml" <<EOF
version = 2
root = "$tree/var/lib/containerd"
state = "$tmp/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$tmp/containerd.sock"
[ttrpc]
  address = "$tmp/containerd.sock.ttrpc"
EOF
  containerd --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
  pid=$!
  # shellcheck disable=SC2064 # the pid and directory are fixed now
  trap "kill $pid 2>/dev/null; rm -rf '$tmp'" EXIT
  for i in $(seq 50); do
    ctr --address "$tmp/containerd.sock" version >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || die "containerd for the preload did not start: $(tail -5 "$tmp/containerd.log")"
    [ "$i" -lt 50 ] || die "containerd for the preload did not answer"
    sleep 0.2
  done
  for t in "$@"; do
    nice -n 19 ctr --address "$tmp/containerd.sock" -n k8s.io images import "$t" >&2
  done
  # A clean stop closes its databases.
  kill -TERM "$pid"
  wait "$pid" || true
  trap - EXIT
  rm -rf "$tmp"
}

# kube-proxy's bottom layer holds the same multi-call binary as /usr/bin/kube: one inode for both
# keeps a single copy on the disk and in the guest's page cache. Packages replace the file by
# renaming (never in place), which leaves the image's copy alone.
share_worker_kube() { # tree
  local tree=$1 f
  while read -r f; do
    if cmp -s "$f" "$tree/usr/bin/kube"; then
      ln -f "$f" "$tree/usr/bin/kube"
      return
    fi
  done < <(find "$tree/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots" -path '*/fs/usr/local/bin/kube' -type f)
}

# The tree as an ext4 filesystem image (mkfs copies it in: no loop device, no mount), then as a
# compressed qcow2.
worker_disk() { # tree qcow2
  local tree=$1 raw=${2%.qcow2}.raw
  rm -f "$raw"
  truncate -s "$worker_disk_size" "$raw"
  nice -n 19 mkfs.ext4 -q -F -L "$worker_root_label" -m 1 -d "$tree" "$raw"
  nice -n 19 qemu-img convert -c -f raw -O qcow2 "$raw" "$2"
  rm -f "$raw"
}

build_worker() { # tree-tarball output
  local out=$2 work tree kernel initrd
  work=$cache_root/build/worker-$(basename "$out" .tar)
  tree=$work/tree
  rm -rf "$work" "$out.partial"
  mkdir -p "$tree" "$work/image/disk" "$work/image/boot"
  tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$1" -C "$tree"
  worker_check_containerd "$tree"
  stage_worker "$tree"
  preload_worker_images "$tree" "${worker_preload[@]}"
  share_worker_kube "$tree"
  kernel=$(find "$tree/boot" -name 'vmlinuz-*' | head -1)
  initrd=$(find "$tree/boot" -name 'initrd.img-*' | head -1)
  if [ ! -f "$kernel" ] || [ ! -f "$initrd" ]; then die "no kernel and initrd in the worker's /boot"; fi
  install -m 0444 "$kernel" "$work/image/boot/vmlinuz"
  install -m 0444 "$initrd" "$work/image/boot/initrd.img"
  worker_disk "$tree" "$work/image/disk/worker.qcow2"
  chmod 0444 "$work/image/disk/worker.qcow2"
  rm -rf "$tree"
  layer_tar "$work/image" "$work/layer.tar"
  # KubeVirt runs the image with its own container-disk program mounted at this path.
  nice -n 19 "$live/mkimage" -o "$out.partial" -layer "$work/layer.tar" -image "$(worker_ref)=/usr/bin/container-disk"
  rm -rf "$work"
  # Images of this version with other inputs are stale (a few hundred MB each).
  rm -f "$cache_root/images/worker-$worker_version"-*.tar
  mv "$out.partial" "$out"
}
# worker-image-end

worker_key() {
  {
    basename "$worker_rootfs"
    echo "$worker_version $PAUSE_TAG"
    sha256sum "$kube_bin/kube" "$live/crictl" "$live/mkimage" | cut -d' ' -f1
    basename -a "${worker_preload[@]}"
    (cd "$here/worker" && find . -type f | LC_ALL=C sort | xargs sha256sum)
    (cd "$here/worker" && find . -type f -perm -u+x | LC_ALL=C sort)
    sed -n '/^# worker-image-begin/,/^# worker-image-end/p' "$here/ground.d/worker-image.sh"
    sed -n '/^layer_tar()/,/^}/p' "$here/images"
    containerd --version
  } | sha256sum | cut -c1-16
}

# The image tarballs the guest preloads, from e2e/images' node images.
worker_preload_tarballs() {
  local list tarballs g t found
  list=$(build_node_images)
  mapfile -t tarballs <<<"$list"
  worker_preload=()
  for g in $(worker_preload_groups); do
    found=""
    for t in "${tarballs[@]}"; do [[ $(basename "$t") =~ ^${g//./\\.}-[0-9a-f]{16}\.tar$ ]] && found=$t; done
    [ -n "$found" ] || die "no image tarball of group $g"
    worker_preload+=("$found")
  done
}

# Builds the worker image tarball unless it exists; prints its path.
ensure_worker_image() { # version
  local out start t
  worker_version=$1
  [ "$(id -u)" = 0 ] || die "the worker image is built as root (chroot, its containerd, file owners)"
  kube_bin=$("$here/ground" build-kube "$worker_version") || die "cannot build Kubernetes $worker_version"
  [ -x "$kube_bin/kube" ] || die "no kube binary in $kube_bin: run 'e2e/ground build' first"
  for t in mkfs.ext4 qemu-img containerd ctr; do
    command -v "$t" >/dev/null || die "$t is not installed (e2e/install-deps)"
  done
  worker_preload_tarballs
  ensure_worker_rootfs
  out=$cache_root/images/worker-$worker_version-$(worker_key).tar
  if [ -f "$out" ]; then
    say "worker image up to date in $out"
  else
    say "building the worker image $(worker_ref) into $out"
    start=$(date +%s)
    build_worker "$worker_rootfs" "$out"
    say "worker image built in $(($(date +%s) - start))s"
  fi
  worker_image=$out
}

# ---------------------------------------------------------------------------------------------
# worker-check: the image booted as KubeVirt boots it, without KubeVirt

# What the guest reports on its serial console once cloud-init has finished, one
# "orrery-check <what> <value>" line each.
worker_check_script() {
  cat <<'SCRIPT'
#!/bin/sh
exec >/dev/ttyS0 2>&1
while [ ! -f /var/lib/cloud/instance/boot-finished ]; do sleep 1; done
r() { echo "orrery-check $*"; }
r cloud-init "$(cloud-init status | cut -d' ' -f2)"
r cgroup "$(stat -fc %T /sys/fs/cgroup)"
r containerd "$(systemctl is-active containerd)"
for i in $(ctr -n k8s.io images ls -q | grep -v '^sha256:'); do r image "$i"; done
r crictl-images "$(crictl images -q | wc -l)"
r kubelet "$(kubelet --version)"
r kubeadm "$(kubeadm version -o short)"
r kubectl "$(kubectl version --client | head -1)"
r kubelet-unit "$(systemctl is-enabled kubelet)"
r pod-network-unit "$(systemctl is-enabled orrery-pod-network.path) $(systemctl is-active orrery-pod-network.path)"
r node-address-unit "$(systemctl is-enabled orrery-node-address.path) $(systemctl is-active orrery-node-address.path)"
# A pod on the host network (no CNI configuration yet) from the preloaded sandbox image, with
# containers of the preloaded kube-proxy image: runc under systemd's cgroups, as the kubelet runs
# them. One prints kube-proxy's version, one (privileged, as kube-proxy runs) the guest's nat table
# through the image's iptables.
mkdir -p /tmp/check
echo '{"metadata":{"name":"check","namespace":"default","uid":"check"},"log_directory":"/tmp/check",
  "linux":{"cgroup_parent":"system.slice","security_context":{"privileged":true,"namespace_options":{"network":2}}}}' >/tmp/check/pod.json
echo '{"metadata":{"name":"version"},"image":{"image":"@KUBE_PROXY_IMAGE@"},"log_path":"version.log",
  "command":["/usr/local/bin/kube-proxy","--version"]}' >/tmp/check/version.json
echo '{"metadata":{"name":"iptables"},"image":{"image":"@KUBE_PROXY_IMAGE@"},"log_path":"iptables.log",
  "command":["/usr/local/bin/iptables","-t","nat","-S"],"linux":{"security_context":{"privileged":true}}}' >/tmp/check/iptables.json
# Runs a container of the pod to its end; prints the first line of its output.
run_container() { # config
  c=$(crictl create "$pod" "$1" /tmp/check/pod.json) && crictl start "$c" >/dev/null || return 0
  for i in $(seq 60); do [ -n "$(crictl ps -a -q --state exited --id "$c")" ] && break; sleep 1; done
  crictl logs "$c" 2>&1 | head -1
}
pod=$(crictl runp /tmp/check/pod.json) || pod=none
r pod "$(run_container /tmp/check/version.json)"
r pod-iptables "$(run_container /tmp/check/iptables.json)"
r modules $(lsmod | awk '$1 == "overlay" || $1 == "br_netfilter" {print $1}' | sort)
r sysctl $(sysctl -n net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables)
r address $(ip -4 -o addr show scope global | awk '{print $2, $4}')
r failed-units $(systemctl --failed --plain --no-legend | awk '{print $1}')
# The node checks of a join run before discovery, which has no server to find here.
timeout 60 kubeadm join phase preflight 10.0.2.2:6443 --token abcdef.0123456789abcdef \
  --discovery-token-unsafe-skip-ca-verification 2>&1 | grep -E '\[(WARNING|ERROR)' | while read -r l; do r preflight "$l"; done
r done
SCRIPT
}

# A seed disk as KubeVirt writes one (cloudInitNoCloud or cloudInitConfigDrive) with user-data
# that runs the check script.
worker_check_seed() { # qemu-tree workdir nocloud|configdrive
  local q=$1 dir=$2/seed ud
  rm -rf "$dir"
  ud=$(
    printf '#cloud-config\nwrite_files:\n  - path: /usr/local/sbin/orrery-check\n    permissions: "0755"\n    content: |\n'
    worker_check_script | sed -e "s#@KUBE_PROXY_IMAGE@#registry.k8s.io/kube-proxy:$worker_version#" -e 's/^/      /'
    printf 'runcmd:\n  - [systemd-run, --no-block, --unit=orrery-check, /usr/local/sbin/orrery-check]\n'
  )
  if [ "$3" = configdrive ]; then
    mkdir -p "$dir/openstack/latest"
    echo "$ud" >"$dir/openstack/latest/user_data"
    printf '{"instance_id":"worker-check.default","uuid":"%s","hostname":"worker-check"}\n' \
      "$(cat /proc/sys/kernel/random/uuid)" >"$dir/openstack/latest/meta_data.json"
    worker_qemu "$q" xorriso -as mkisofs -quiet -o "$2/seed.iso" -V config-2 -J -R "$dir" 2>"$2/xorriso.log" ||
      die "cannot write the seed disk: $(cat "$2/xorriso.log")"
  else
    mkdir -p "$dir"
    echo "$ud" >"$dir/user-data"
    echo '{"instance-id":"worker-check","local-hostname":"worker-check"}' >"$dir/meta-data"
    worker_qemu "$q" xorriso -as mkisofs -quiet -o "$2/seed.iso" -V cidata -J -R "$dir" 2>"$2/xorriso.log" ||
      die "cannot write the seed disk: $(cat "$2/xorriso.log")"
  fi
}

# QEMU from the tree of KubeVirt's launcher image (the host has none), run with that tree's loader.
worker_qemu() { # qemu-tree program args...
  local q=$1 p=$2
  shift 2
  "$q/lib64/ld-linux-x86-64.so.2" --library-path "$q/usr/lib/x86_64-linux-gnu" "$q/usr/bin/$p" "$@"
}

# The same, started in the background (the loader is the process: $! can stop it).
worker_qemu_bg() { # qemu-tree program args...
  local q=$1 p=$2
  shift 2
  "$q/lib64/ld-linux-x86-64.so.2" --library-path "$q/usr/lib/x86_64-linux-gnu" "$q/usr/bin/$p" "$@" &
  worker_qemu_pid=$!
}

# The references the preloaded tarballs hold (their manifests' RepoTags).
worker_preloaded_refs() {
  local t
  for t in "${worker_preload[@]}"; do
    tar -xOf "$t" manifest.json | grep -o '"RepoTags":\[[^]]*\]' | grep -o '"[^"]*"' | grep -vx '"RepoTags"' | tr -d '"'
  done
}

worker_expect() { # report line
  grep -qxF "orrery-check $2" "$1" || echo "expected \"$2\""
}

# Compares the guest's report with what the image must provide; prints the mismatches.
worker_check_verdict() { # report
  local log=$1 ref
  worker_expect "$log" "cloud-init done"
  worker_expect "$log" "cgroup cgroup2fs"
  worker_expect "$log" "containerd active"
  while read -r ref; do worker_expect "$log" "image $ref"; done < <(worker_preloaded_refs)
  worker_expect "$log" "kubelet Kubernetes $worker_version"
  worker_expect "$log" "kubeadm $worker_version"
  worker_expect "$log" "kubelet-unit enabled"
  worker_expect "$log" "pod Kubernetes $worker_version"
  worker_expect "$log" "pod-iptables -P PREROUTING ACCEPT"
  worker_expect "$log" "pod-network-unit enabled active"
  worker_expect "$log" "node-address-unit enabled active"
  worker_expect "$log" "modules br_netfilter overlay"
  worker_expect "$log" "sysctl 1 1"
  worker_expect "$log" "failed-units"
  grep -q '^orrery-check address [a-z0-9]* [0-9.]*/[0-9]*' "$log" || echo "expected an IPv4 address from DHCP"
  if grep -q '^orrery-check preflight \[ERROR' "$log"; then echo "kubeadm's preflight failed"; fi
}

# Boots the worker image under emulation (TCG; 1 vCPU, 2 GiB, q35, virtio disk and NIC, user-mode
# network with DHCP) from its own kernel and initrd, with a seed disk; checks the guest's report.
cmd_worker_check() { # [nocloud|configdrive] [version]
  local ds=${1:-nocloud} work q layer start pid t finished="" bad
  [[ $ds =~ ^(nocloud|configdrive)$ ]] || die "worker-check: datasource nocloud or configdrive"
  ensure_live_tools
  ensure_worker_image "${2:-$KUBERNETES_VERSION}"
  ensure_kubevirt_rootfs
  mkdir -p "$cache_root/build"
  work=$(mktemp -d "$cache_root/build/worker-check.XXXXXX")
  q=$work/qemu
  mkdir -p "$q" "$work/image"
  tar -xf "$kubevirt_rootfs" -C "$q"
  layer=$(tar -xOf "$worker_image" manifest.json | sed -n 's/.*"Layers":\["\([^"]*\)".*/\1/p')
  tar -xOf "$worker_image" "$layer" | tar -xz -C "$work/image"
  worker_qemu "$q" qemu-img create -q -f qcow2 -F qcow2 -b "$work/image/disk/worker.qcow2" "$work/disk.qcow2"
  worker_check_seed "$q" "$work" "$ds"
  say "booting $(worker_ref) under emulation with a $ds seed (serial console: $work/serial.log)"
  start=$(date +%s)
  : >"$work/serial.log"
  worker_qemu_bg "$q" qemu-system-x86_64 -L "$q/usr/share/qemu" -L "$q/usr/share/seabios" -nodefaults \
    -machine q35,accel=tcg -cpu max -smp 1 -m 2048 -display none -serial "file:$work/serial.log" \
    -kernel "$work/image/boot/vmlinuz" -initrd "$work/image/boot/initrd.img" -append "$worker_kernel_args" \
    -drive "file=$work/disk.qcow2,if=virtio,format=qcow2" -drive "file=$work/seed.iso,if=virtio,format=raw,readonly=on" \
    -nic user,model=virtio-net-pci 2>"$work/qemu.log"
  pid=$worker_qemu_pid
  # shellcheck disable=SC2064 # the pid is fixed now
  trap "kill $pid 2>/dev/null" EXIT
  for t in $(seq 600); do
    if [ -z "$finished" ] && grep -q 'Cloud-init .* finished at' "$work/serial.log"; then
      finished=$(($(date +%s) - start))
      say "cloud-init finished ${finished}s after power-on"
    fi
    grep -q '^orrery-check done' "$work/serial.log" && break
    kill -0 "$pid" 2>/dev/null || die "QEMU stopped; see $work/qemu.log and $work/serial.log"
    [ "$t" -lt 600 ] || die "no report from the guest in 600s; see $work/serial.log"
    sleep 1
  done
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  trap - EXIT
  tr -d '\r' <"$work/serial.log" | grep '^orrery-check ' >"$work/report"
  sed -n 's/^orrery-check preflight /kubeadm join preflight: /p' "$work/report" | while read -r t; do say "$t"; done
  bad=$(worker_check_verdict "$work/report")
  [ -z "$bad" ] || die "the worker image failed its check (see $work/serial.log):"$'\n'"$bad"
  rm -rf "$work"
  say "worker image checked: booted, cloud-init ($ds) finished in ${finished}s, images preloaded, a pod ran kube-proxy and its iptables, the pod network unit waits, kubelet and kubeadm $worker_version"
}
