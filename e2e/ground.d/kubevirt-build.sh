# shellcheck shell=bash
# KubeVirt for the live tier, built on this machine: its binaries from the Go module proxy, a
# Debian rootfs for virt-launcher and virt-handler, and the image tarballs. Sourced by e2e/images
# (commands kubevirt, kubevirt-list, kubevirt-bin-dir), which sets here, cache_root, live (its
# tools, for mkimage) and the pins of versions.env, and defines say, die and layer_tar.
#
# Caches, each keyed by the hash of what decides its bits:
#   <cache>/kubevirt/bin/<version>-<key>   the binaries, KubeVirt's config files and SHA256SUMS
#   <cache>/kubevirt/rootfs-<suite>-<key>.tar  the Debian rootfs (a layer tarball)
#   <cache>/images/kubevirt-*-<key>.tar    the image tarballs
# A directory without a matching SHA256SUMS is rebuilt; every result is written beside its final
# name and renamed into place when complete.

kubevirt_bin_key() {
  {
    grep '^KUBEVIRT_VERSION=' "$here/versions.env"
    find "$here/kubevirt/libnbd" -type f | LC_ALL=C sort | xargs cat
    sed -n '/^# kubevirt-recipe-begin/,/^# kubevirt-recipe-end/p' "$here/ground.d/kubevirt-build.sh"
    go env GOVERSION GOARCH
    gcc --version | head -1
  } | sha256sum | cut -c1-16
}

kubevirt_bin_dir() { printf '%s/kubevirt/bin/%s-%s\n' "$cache_root" "$KUBEVIRT_VERSION" "$(kubevirt_bin_key)"; }

kubevirt_outputs() {
  local c
  for c in "${kubevirt_static_cmds[@]}" "${kubevirt_cgo_cmds[@]}"; do basename "$c"; done
  echo container-disk
  printf '%s\n' "${kubevirt_files[@]}"
}

kubevirt_bin_is_complete() {
  local dir=$1 f
  [ -f "$dir/SHA256SUMS" ] || return 1
  (cd "$dir" && sha256sum --quiet --check SHA256SUMS >/dev/null 2>&1) || return 1
  while read -r f; do [ -f "$dir/$f" ] || return 1; done < <(kubevirt_outputs)
}

# kubevirt-recipe-begin
# The images, as virt-operator derives them from its own reference <registry>/virt-operator:<tag>.
kubevirt_registry=quay.io/kubevirt
kubevirt_small_images=(virt-operator virt-api virt-controller virt-exportproxy virt-exportserver)
kubevirt_node_images=(virt-launcher virt-handler)

# Statically linked Go programs; virt-launcher and virt-handler need cgo (libvirt, loaded at run
# time) and are built apart. container-disk is C.
kubevirt_static_cmds=(virtctl virt-operator virt-api virt-controller virt-exportproxy virt-exportserver
  virt-launcher-monitor virt-freezer virt-probe virt-chroot virt-tail virt-launcher/libvirt-hook-client)
kubevirt_cgo_cmds=(virt-launcher virt-handler)
# Files of the module the images carry, by the name they have in the build, and the manifests
# KubeVirt releases (the operator with its CRD and RBAC, and a KubeVirt CR), made for these images.
kubevirt_files=(qemu.conf virtqemud.conf nsswitch.conf qemu-hook node-labeller.sh
  kubevirt-operator.yaml kubevirt-cr.yaml)

# Both Go builds and the C compile run at the lowest priority, one package at a time: the
# machine is shared with running grounds and tests.
kubevirt_go() { # workdir go-arguments...
  local dir=$1
  shift
  # The checksum database has no entries for these modules; go.sum still pins what the proxy serves.
  (cd "$dir" && GONOSUMDB='kubevirt.io/virt-template-*,github.com/rhobs/operator-observability-toolkit' \
    nice -n 19 go "$@")
}

# The wrapper module: KubeVirt's own replace lines repeated (a dependency's do not apply), its
# staging modules taken at their published release, and our stub for libnbd.
kubevirt_module() { # workdir kubevirt-go.mod
  local work=$1 kmod=$2 c
  {
    echo "module orrery.dev/ground/kubevirt"
    echo "go 1.24.0"
    echo "require kubevirt.io/kubevirt $KUBEVIRT_VERSION"
    sed -n '/^replace (/,/^)/s#^[[:space:]]*\([^ ]*\) => \([^./][^ ]*\) \(v[^ ]*\)$#replace \1 => \2 \3#p' "$kmod"
    echo "replace kubevirt.io/api => kubevirt.io/api $KUBEVIRT_VERSION"
    echo "replace kubevirt.io/client-go => kubevirt.io/client-go $KUBEVIRT_VERSION"
    echo "replace libguestfs.org/libnbd => ./libnbd"
  } >"$work/go.mod"
  {
    printf 'package tools\n\nimport (\n'
    for c in "${kubevirt_static_cmds[@]}" "${kubevirt_cgo_cmds[@]}"; do printf '\t_ "kubevirt.io/kubevirt/cmd/%s"\n' "$c"; done
    printf '\t_ "kubevirt.io/kubevirt/tools/manifest-templator"\n'
    printf ')\n'
  } >"$work/tools.go"
  cp -r "$here/kubevirt/libnbd" "$work/libnbd"
  kubevirt_go "$work" mod tidy
}

# The release manifests, rendered as KubeVirt's hack/build-manifests.sh does: first the generated
# parts (CRD, RBAC) included, then the variables set.
kubevirt_manifests() { # workdir module-dir outdir
  local work=$1 src=$2 out=$3 m
  kubevirt_go "$work" build -p 1 -trimpath -o "$work/manifest-templator" kubevirt.io/kubevirt/tools/manifest-templator
  for m in kubevirt-operator kubevirt-cr; do
    "$work/manifest-templator" --process-files --generated-manifests-dir="$src/manifests/generated/" \
      --input-file="$src/manifests/release/$m.yaml.in" >"$work/$m.yaml.in"
    "$work/manifest-templator" --process-vars --namespace=kubevirt --container-prefix="$kubevirt_registry" \
      --container-tag="$KUBEVIRT_VERSION" --image-pull-policy=IfNotPresent --verbosity=2 \
      --kubevirt-logo-path="$src/assets/kubevirt_logo.png" \
      --input-file="$work/$m.yaml.in" >"$out/$m.yaml"
  done
}

build_kubevirt() { # outdir
  local out=$1 work json kmod src commit ld v c pkgs=()
  work="$cache_root/build/kubevirt-$(basename "$out")"
  rm -rf "$work" "$out.partial"
  mkdir -p "$work" "$out.partial"
  json=$(cd "$work" && go mod download -json "kubevirt.io/kubevirt@$KUBEVIRT_VERSION")
  kmod=$(sed -n 's/.*"GoMod": "\(.*\)",/\1/p' <<<"$json")
  src=$(sed -n 's/.*"Dir": "\(.*\)",/\1/p' <<<"$json")
  commit=$(sed -n 's/.*"Hash": "\([0-9a-f]*\)".*/\1/p' <<<"$json")
  if [ ! -f "$kmod" ] || [ ! -d "$src" ]; then die "cannot download kubevirt.io/kubevirt@$KUBEVIRT_VERSION"; fi
  kubevirt_module "$work" "$kmod"
  # What `virtctl version` and every component report (KubeVirt's hack/version.sh sets the same).
  v=kubevirt.io/client-go/version
  ld="-s -w -X $v.gitVersion=$KUBEVIRT_VERSION -X $v.gitCommit=$commit -X $v.gitTreeState=clean"
  ld+=" -X $v.buildDate=1970-01-01T00:00:00Z"
  for c in "${kubevirt_static_cmds[@]}"; do pkgs+=("kubevirt.io/kubevirt/cmd/$c"); done
  CGO_ENABLED=0 kubevirt_go "$work" build -p 1 -trimpath -tags selinux -ldflags "$ld" -o "$out.partial/" "${pkgs[@]}"
  pkgs=()
  for c in "${kubevirt_cgo_cmds[@]}"; do pkgs+=("kubevirt.io/kubevirt/cmd/$c"); done
  # libvirt_dlopen: the libvirt bindings load libvirt.so when first used, so no libvirt-dev here.
  CGO_ENABLED=1 kubevirt_go "$work" build -p 1 -trimpath -tags selinux,libvirt_dlopen -ldflags "$ld" \
    -o "$out.partial/" "${pkgs[@]}"
  nice -n 19 gcc -O2 -static -o "$out.partial/container-disk" "$src/cmd/container-disk-v2alpha/main.c"
  strip "$out.partial/container-disk"
  install -m 0644 "$src/cmd/virt-launcher/qemu.conf" "$src/cmd/virt-launcher/virtqemud.conf" \
    "$src/cmd/virt-launcher/nsswitch.conf" "$out.partial/"
  install -m 0755 "$src/cmd/virt-launcher/qemu" "$out.partial/qemu-hook"
  install -m 0755 "$src/cmd/virt-launcher/node-labeller/node-labeller.sh" "$out.partial/"
  kubevirt_manifests "$work" "$src" "$out.partial"
  # shellcheck disable=SC2046 # one word per file
  (cd "$out.partial" && sha256sum $(kubevirt_outputs) >SHA256SUMS)
  rm -rf "$out" "$work"
  mv "$out.partial" "$out"
}
# kubevirt-recipe-end

ensure_kubevirt_bin() {
  local dir start
  dir=$(kubevirt_bin_dir)
  if kubevirt_bin_is_complete "$dir"; then
    say "KubeVirt binaries up to date in $dir"
  else
    [ -e "$dir" ] && say "cached KubeVirt binaries in $dir are incomplete or corrupt: rebuilding"
    command -v go >/dev/null || die "go is not installed"
    command -v gcc >/dev/null || die "gcc is not installed (virt-launcher, virt-handler and container-disk need it)"
    say "building KubeVirt $KUBEVIRT_VERSION into $dir (about 6 min on 2 cores, more if Go modules must be downloaded)"
    start=$(date +%s)
    build_kubevirt "$dir"
    kubevirt_bin_is_complete "$dir" || die "build finished but $dir does not verify"
    # Builds of other inputs are stale (about 600 MB each).
    find "$cache_root/kubevirt/bin" -mindepth 1 -maxdepth 1 ! -path "$dir" -exec rm -rf {} +
    say "KubeVirt built in $(($(date +%s) - start))s"
  fi
  kubevirt_bin=$dir
}

# ---------------------------------------------------------------------------------------------
# the Debian rootfs of virt-launcher and virt-handler

# The Debian mirror this machine's apt uses (KubeVirt's own base is CentOS Stream; Debian trixie
# has the libvirt and QEMU generation it is built against).
kubevirt_mirror() {
  local url
  url=$(sed -n 's#^URIs: *\(https\{0,1\}://[^ ]*/debian\)/\{0,1\}$#\1#p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
  [ -n "$url" ] || url=$(sed -n 's#^deb \(https\{0,1\}://[^ ]*/debian\)/\{0,1\} .*#\1#p' /etc/apt/sources.list 2>/dev/null | head -1)
  echo "${url:-http://deb.debian.org/debian}"
}

kubevirt_rootfs_key() {
  {
    grep '^KUBEVIRT_DEBIAN_SUITE=' "$here/versions.env"
    cat "$here/kubevirt/virtqemud"
    sed -n '/^# kubevirt-rootfs-begin/,/^# kubevirt-rootfs-end/p' "$here/ground.d/kubevirt-build.sh"
  } | sha256sum | cut -c1-16
}

kubevirt_rootfs_path() { printf '%s/kubevirt/rootfs-%s-%s.tar\n' "$cache_root" "$KUBEVIRT_DEBIAN_SUITE" "$(kubevirt_rootfs_key)"; }

# kubevirt-rootfs-begin
# What virt-launcher and virt-handler run or exec: libvirtd with the QEMU driver, virtlogd and
# virsh (node-labeller.sh); QEMU for x86_64, qemu-img, UEFI firmware; passt and passt-repair;
# xorriso (cloud-init disks); nftables, iproute2, procps, findutils, util-linux, tar.
kubevirt_packages=libvirt-daemon,libvirt-daemon-driver-qemu,libvirt-daemon-log,libvirt-clients,qemu-system-x86,qemu-utils,ovmf,passt,xorriso,nftables,iproute2,procps,findutils,tar

build_kubevirt_rootfs() { # output tarball
  local out=$1 entry
  entry=$(printf '%q' "$here/kubevirt/virtqemud")
  rm -f "$out.partial"
  mkdir -p "$(dirname "$out")"
  # The hooks: the qemu user (107) KubeVirt runs VMs as; /var/run as a relative link, since
  # virt-handler reads the launcher's /var/run through /proc/<pid>/root; the virtqemud entry; no
  # emulators but x86_64 (libvirt probes each one it finds, slowly under emulation).
  # shellcheck disable=SC2016 # the hooks expand $1 (the rootfs) when mmdebstrap runs them
  nice -n 19 mmdebstrap --quiet --variant=essential --format=tar --skip=output/dev \
    --include="$kubevirt_packages" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='echo "qemu:x:107:107:qemu:/home/qemu:/bin/bash" >>"$1/etc/passwd"' \
    --customize-hook='echo "qemu:x:107:" >>"$1/etc/group"' \
    --customize-hook='mkdir -p "$1/home/qemu" && chown 107:107 "$1/home/qemu"' \
    --customize-hook='rm "$1/var/run" && ln -s ../run "$1/var/run"' \
    --customize-hook="install -m 0755 $entry \"\$1/usr/sbin/virtqemud\"" \
    --customize-hook='rm -f "$1"/usr/bin/qemu-system-i386 "$1"/usr/bin/qemu-system-x86_64-microvm' \
    "$KUBEVIRT_DEBIAN_SUITE" "$out.partial" "$(kubevirt_mirror)" >&2
  mv "$out.partial" "$out"
}
# kubevirt-rootfs-end

ensure_kubevirt_rootfs() {
  local out start
  out=$(kubevirt_rootfs_path)
  if [ -f "$out" ]; then
    say "KubeVirt rootfs up to date in $out"
  else
    command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
    say "building the Debian $KUBEVIRT_DEBIAN_SUITE rootfs of virt-launcher and virt-handler into $out"
    start=$(date +%s)
    build_kubevirt_rootfs "$out"
    # Rootfs tarballs of other inputs are stale.
    find "$cache_root/kubevirt" -maxdepth 1 -name 'rootfs-*.tar' ! -path "$out" -delete
    say "rootfs built in $(($(date +%s) - start))s"
  fi
  kubevirt_rootfs=$out
}

# ---------------------------------------------------------------------------------------------
# images

kubevirt_ref() { printf '%s/%s:%s\n' "$kubevirt_registry" "$1" "$KUBEVIRT_VERSION"; }

# kubevirt-images-begin
# Debian keeps daemons in /usr/sbin (node-labeller.sh runs virtqemud, virt-handler sysctl).
# mkimage puts its own PATH first; the runtime takes the last value of a repeated variable.
kubevirt_node_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# The small images share one layer: their static binaries, root and a user 1001 (as upstream's
# passwd-image), /tmp and /.version.
stage_kubevirt_small() { # dir
  local dir=$1 c
  rm -rf "$dir"
  mkdir -p "$dir/etc" "$dir/tmp" "$dir/usr/bin"
  chmod 1777 "$dir/tmp"
  for c in "${kubevirt_small_images[@]}"; do install -m 0755 "$kubevirt_bin/$c" "$dir/usr/bin/$c"; done
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot-user:x:1001:1001::/home/nonroot-user:/sbin/nologin\n' \
    >"$dir/etc/passwd"
  printf 'root:x:0:\nnonroot-user:x:1001:\n' >"$dir/etc/group"
  echo "$KUBEVIRT_VERSION" >"$dir/.version"
}

# What KubeVirt adds to its launcher and handler bases: the programs, libvirt's configuration
# and hook, nsswitch.conf; virt-launcher-monitor may bind low ports for passt as a non-root user.
stage_kubevirt_node() { # dir
  local dir=$1 b
  rm -rf "$dir"
  mkdir -p "$dir/usr/bin" "$dir/etc/libvirt/hooks" "$dir/usr/lib64/qemu-kvm"
  for b in virt-launcher virt-launcher-monitor virt-freezer virt-probe virt-tail libvirt-hook-client \
    container-disk node-labeller.sh virt-handler virt-chroot; do
    install -m 0755 "$kubevirt_bin/$b" "$dir/usr/bin/$b"
  done
  setcap cap_net_bind_service=+ep "$dir/usr/bin/virt-launcher-monitor"
  install -m 0644 "$kubevirt_bin/qemu.conf" "$kubevirt_bin/virtqemud.conf" "$dir/etc/libvirt/"
  install -m 0644 "$kubevirt_bin/nsswitch.conf" "$dir/etc/"
  install -m 0755 -o 107 -g 107 "$kubevirt_bin/qemu-hook" "$dir/etc/libvirt/hooks/qemu"
  echo "$KUBEVIRT_VERSION" >"$dir/.version"
}

# Like layer_tar, with owners and file capabilities kept.
kubevirt_node_layer_tar() { # dir output
  tar --sort=name --numeric-owner --mtime=@0 --format=pax --xattrs --xattrs-include=security.capability \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -C "$1" -cf "$2" .
}

kubevirt_image_tarball() { # name key stage-function user env layer... -- image...
  local name=$1 key=$2 stage=$3 user=$4 env=$5 out work args=() spec
  shift 5
  out=$cache_root/images/kubevirt-$name-$key.tar
  if [ -f "$out" ]; then echo "$out"; return; fi
  say "building image tarball kubevirt-$name"
  work=$cache_root/build/image-kubevirt-$name-$key
  rm -rf "$work"
  mkdir -p "$work"
  while [ "$1" != -- ]; do args+=(-layer "$1"); shift; done
  shift
  "$stage" "$work/root"
  if [ "$stage" = stage_kubevirt_node ]; then
    kubevirt_node_layer_tar "$work/root" "$work/layer.tar"
  else
    layer_tar "$work/root" "$work/layer.tar"
  fi
  args+=(-layer "$work/layer.tar" -o "$out.partial")
  [ -z "$user" ] || args+=(-user "$user")
  [ -z "$env" ] || args+=(-env "$env")
  for spec in "$@"; do args+=(-image "$spec"); done
  nice -n 19 "$live/mkimage" "${args[@]}"
  rm -rf "$work"
  rm -f "$cache_root/images/kubevirt-$name"-*.tar
  mv "$out.partial" "$out"
  echo "$out"
}

build_kubevirt_images() {
  local key c images=()
  key=$(
    {
      basename -a "$kubevirt_bin" "$kubevirt_rootfs"
      sed -n '/^# kubevirt-images-begin/,/^# kubevirt-images-end/p' "$here/ground.d/kubevirt-build.sh"
      sed -n '/^layer_tar()/,/^}/p' "$here/images"
      sha256sum "$live/mkimage" | cut -d' ' -f1
    } | sha256sum | cut -c1-16
  )
  mkdir -p "$cache_root/images"
  for c in "${kubevirt_small_images[@]}"; do images+=("$(kubevirt_ref "$c")=/usr/bin/$c"); done
  kubevirt_image_tarball small "$key" stage_kubevirt_small 1001 "" -- "${images[@]}"
  kubevirt_image_tarball node "$key" stage_kubevirt_node "" "PATH=$kubevirt_node_path" "$kubevirt_rootfs" -- \
    "$(kubevirt_ref virt-launcher)=/usr/bin/virt-launcher" "$(kubevirt_ref virt-handler)=/usr/bin/virt-handler"
}
# kubevirt-images-end

kubevirt_list() {
  local c
  for c in "${kubevirt_small_images[@]}" "${kubevirt_node_images[@]}"; do kubevirt_ref "$c"; done
}
