# shellcheck shell=bash
# Building the pinned binaries into the cache, and finding them: the commands build and bin-dir.
# Sourced by e2e/ground, which sets here, cache_root and the pins of versions.env.

# The build key covers everything that decides the binaries' bits: the pins, the Go sources and
# the build recipe (between the markers below: its text is hashed as it stands, so it is moved only
# verbatim). Another key means another directory, so stale binaries are never used.
build_key() {
  {
    # The live tier's pins (from "# live-tier-begin" on) key the live tier's own builds only.
    sed '/^# live-tier-begin/,$d' "$here/versions.env"
    find "$here/go" -type f | LC_ALL=C sort | xargs cat
    sed -n '/^# build-recipe-begin/,/^# build-recipe-end/p' "$here/ground.d/build.sh"
    go env GOVERSION GOARCH
  } | sha256sum | cut -c1-16
}

bin_dir() { printf '%s/bin/%s-%s\n' "$cache_root" "$KUBERNETES_VERSION" "$(build_key)"; }

kube_links=(etcd etcdctl kubeadm kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet)

# A complete build has a manifest whose checksums all match and every link in place.
build_is_complete() {
  local dir=$1 link
  [ -f "$dir/SHA256SUMS" ] || return 1
  (cd "$dir" && sha256sum --quiet --check SHA256SUMS >/dev/null 2>&1) || return 1
  for link in "${kube_links[@]}"; do [ -x "$dir/$link" ] || return 1; done
  return 0
}

# build-recipe-begin
go_build() { # dir output package ldflags
  (cd "$1" && go build -trimpath -ldflags "-s -w $4" -o "$2" "$3")
}

build_kube() { # workdir outdir version with-etcd(true|false)
  local work=$1/kube out=$2 version=$3 with_etcd=$4 kmod replaces major minor
  mkdir -p "$work"
  cp "$here/go/kube/main.go" "$work/main.go"
  if $with_etcd; then cp "$here/go/kube/etcd.go" "$work/etcd.go"; fi
  kmod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  [ -f "$kmod" ] || die "cannot download k8s.io/kubernetes@$version"
  # k8s.io/kubernetes replaces its staging modules by local paths, which do not apply to a
  # dependency; point each one at its published v0.MINOR.PATCH release instead.
  replaces=$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$kmod")
  {
    echo "module orrery.dev/ground/kube"
    echo "go 1.24.0"
    echo "require k8s.io/kubernetes $version"
    if $with_etcd; then
      echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
      echo "require go.etcd.io/etcd/etcdctl/v3 $ETCD_VERSION"
    fi
    for m in $replaces; do echo "replace $m => $m v0.${version#v1.}"; done
  } >"$work/go.mod"
  (cd "$work" && go mod tidy)
  major=1
  minor=${version#v1.}; minor=${minor%%.*}
  local ld="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  go_build "$work" "$out/kube" . "$ld"
  for link in "${kube_links[@]}"; do
    if $with_etcd || [[ $link != etcd* ]]; then ln -sf kube "$out/$link"; fi
  done
}

build_tool() { # workdir outdir name module version package ldflags
  local work=$1/$3 out=$2
  mkdir -p "$work"
  printf 'module orrery.dev/ground/%s\ngo 1.24.0\n' "$3" >"$work/go.mod"
  printf 'package tools\n\nimport _ "%s"\n' "$6" >"$work/tools.go"
  (cd "$work" && go get "$4@$5" && go mod tidy)
  go_build "$work" "$out/$3" "$6" "$7"
}

build_all() { # outdir
  local out=$1 work
  work="$cache_root/build/$(basename "$out")"
  rm -rf "$work" "$out.partial"
  mkdir -p "$work" "$out.partial"
  build_kube "$work" "$out.partial" "$KUBERNETES_VERSION" true
  build_tool "$work" "$out.partial" kwok sigs.k8s.io/kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok ""
  build_tool "$work" "$out.partial" helm helm.sh/helm/v3 "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  (cd "$out.partial" && sha256sum kube kwok helm >SHA256SUMS)
  rm -rf "$out" "$work"
  mv "$out.partial" "$out"
}
# build-recipe-end

cmd_build() {
  local dir start
  dir=$(bin_dir)
  if build_is_complete "$dir"; then
    say "binaries up to date in $dir"
  else
    [ -e "$dir" ] && say "cached binaries in $dir are incomplete or corrupt: rebuilding"
    command -v go >/dev/null || die "go is not installed (CI installs it through .ci/run)"
    say "building Kubernetes $KUBERNETES_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, helm $HELM_VERSION into $dir"
    start=$(date +%s)
    build_all "$dir"
    build_is_complete "$dir" || die "build finished but $dir does not verify"
    say "built in $(( $(date +%s) - start ))s"
  fi
  ln -sfn "$(basename "$dir")" "$cache_root/bin/current"
  ensure_csi_sanity
}

cmd_bin_dir() { bin_dir; }

# The CSI conformance suite: <cache>/tools/csi-sanity-<version>-<key>/csi-sanity, keyed by its pin,
# this recipe and the Go toolchain only, so it never rebuilds the binaries above.
csi_sanity_key() {
  {
    echo "$CSI_SANITY_VERSION"
    sed -n '/^# csi-sanity-recipe-begin/,/^# csi-sanity-recipe-end/p' "$here/ground.d/build.sh"
    go env GOVERSION GOARCH
  } | sha256sum | cut -c1-16
}

csi_sanity_dir() { printf '%s/tools/csi-sanity-%s-%s\n' "$cache_root" "$CSI_SANITY_VERSION" "$(csi_sanity_key)"; }

# csi-sanity-recipe-begin
build_csi_sanity() { # outdir
  local out=$1 work
  work="$cache_root/build/$(basename "$out")"
  rm -rf "$work" "$out.partial"
  mkdir -p "$work" "$out.partial"
  build_tool "$work" "$out.partial" csi-sanity github.com/kubernetes-csi/csi-test/v5 "$CSI_SANITY_VERSION" \
    github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity "-X main.VERSION=$CSI_SANITY_VERSION"
  (cd "$out.partial" && sha256sum csi-sanity >SHA256SUMS)
  rm -rf "$out" "$work"
  mv "$out.partial" "$out"
}
# csi-sanity-recipe-end

csi_sanity_is_complete() { # dir
  [ -f "$1/SHA256SUMS" ] && [ -x "$1/csi-sanity" ] &&
    (cd "$1" && sha256sum --quiet --check SHA256SUMS >/dev/null 2>&1)
}

ensure_csi_sanity() {
  local dir start
  dir=$(csi_sanity_dir)
  if csi_sanity_is_complete "$dir"; then return; fi
  say "building csi-sanity $CSI_SANITY_VERSION into $dir"
  start=$(date +%s)
  build_csi_sanity "$dir"
  csi_sanity_is_complete "$dir" || die "build finished but $dir does not verify"
  say "built csi-sanity in $(( $(date +%s) - start ))s"
}

# csi-sanity's path for `env`, without building: empty when it is not built.
locate_csi_sanity() {
  local dir
  command -v go >/dev/null || return 0
  dir=$(csi_sanity_dir)
  if [ -x "$dir/csi-sanity" ]; then echo "$dir/csi-sanity"; fi
}

# Tenant versions: the Kubernetes releases tenants run on the live tier (TENANT_KUBERNETES_VERSIONS
# in versions.env). The ground's own version is its build above; every other one is a multi-call
# kube binary without etcd in <cache>/kube/<version>-<key>, keyed like the ground's binaries.
tenant_kube_key() { # version
  {
    echo "$1"
    cat "$here/go/kube/main.go"
    sed -n '/^# build-recipe-begin/,/^# build-recipe-end/p' "$here/ground.d/build.sh"
    go env GOVERSION GOARCH
  } | sha256sum | cut -c1-16
}

tenant_kube_dir() { # version
  if [ "$1" = "$KUBERNETES_VERSION" ]; then bin_dir; return; fi
  printf '%s/kube/%s-%s\n' "$cache_root" "$1" "$(tenant_kube_key "$1")"
}

tenant_kube_is_complete() { # dir
  [ -f "$1/SHA256SUMS" ] && [ -x "$1/kube" ] &&
    (cd "$1" && sha256sum --quiet --check SHA256SUMS >/dev/null 2>&1)
}

# e2e/ground build-kube VERSION: build (or reuse) that version's kube binary; print its directory.
cmd_build_kube() {
  local version=${1:-} dir work start
  [[ " $TENANT_KUBERNETES_VERSIONS " == *" $version "* ]] ||
    die "usage: e2e/ground build-kube VERSION, one of TENANT_KUBERNETES_VERSIONS: $TENANT_KUBERNETES_VERSIONS"
  if [ "$version" = "$KUBERNETES_VERSION" ]; then cmd_build; bin_dir; return; fi
  dir=$(tenant_kube_dir "$version")
  if ! tenant_kube_is_complete "$dir"; then
    command -v go >/dev/null || die "go is not installed (CI installs it through .ci/run)"
    say "building Kubernetes $version (a tenant version) into $dir"
    start=$(date +%s)
    work="$cache_root/build/$(basename "$dir")"
    rm -rf "$work" "$dir.partial"
    mkdir -p "$work" "$dir.partial"
    build_kube "$work" "$dir.partial" "$version" false
    (cd "$dir.partial" && sha256sum kube >SHA256SUMS)
    rm -rf "$dir" "$work"
    mv "$dir.partial" "$dir"
    tenant_kube_is_complete "$dir" || die "build finished but $dir does not verify"
    say "built Kubernetes $version in $(( $(date +%s) - start ))s"
  fi
  echo "$dir"
}

# Whether a build is in place, without hashing it: `env` runs before every test, and `up`
# verifies the checksums anyway.
build_is_present() {
  local dir=$1 link
  [ -f "$dir/SHA256SUMS" ] || return 1
  for link in "${kube_links[@]}" kwok helm; do [ -x "$dir/$link" ] || return 1; done
}

# The binaries for commands that must not build (`env`): those the current sources select if
# they are built, else the last build, so `env` also works where Go is not installed.
locate_bin() {
  local dir
  if command -v go >/dev/null; then
    dir=$(bin_dir)
    if build_is_present "$dir"; then echo "$dir"; return; fi
  fi
  dir=$cache_root/bin/current
  build_is_present "$dir" || die "no built binaries in $cache_root/bin: run 'e2e/ground build' or 'e2e/ground up'"
  (cd "$dir" && pwd -P)
}
