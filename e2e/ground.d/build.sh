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

build_kube() { # workdir outdir
  local work=$1/kube out=$2 kmod replaces major minor
  mkdir -p "$work"
  cp "$here/go/kube/main.go" "$work/main.go"
  kmod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  [ -f "$kmod" ] || die "cannot download k8s.io/kubernetes@$KUBERNETES_VERSION"
  # k8s.io/kubernetes replaces its staging modules by local paths, which do not apply to a
  # dependency; point each one at its published v0.MINOR.PATCH release instead.
  replaces=$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$kmod")
  {
    echo "module orrery.dev/ground/kube"
    echo "go 1.24.0"
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo "require go.etcd.io/etcd/etcdctl/v3 $ETCD_VERSION"
    for m in $replaces; do echo "replace $m => $m v0.${KUBERNETES_VERSION#v1.}"; done
  } >"$work/go.mod"
  (cd "$work" && go mod tidy)
  major=1
  minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local ld="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  go_build "$work" "$out/kube" . "$ld"
  for link in "${kube_links[@]}"; do ln -sf kube "$out/$link"; done
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
  build_kube "$work" "$out.partial"
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
}

cmd_bin_dir() { bin_dir; }

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
