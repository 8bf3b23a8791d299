# shellcheck shell=bash
# KubeVirt on the live node: the host paths it assumes, its install through virt-operator and a
# KubeVirt CR, and what `down` must take away after it. Sourced by e2e/ground, which sets here,
# cache_root and the pins of versions.env. The binaries and images come from `e2e/images kubevirt`.

# The kubelet root KubeVirt (and the kubelet's own device-plugin socket) assume. It is a bind
# mount of the ground's <state>/kubelet, so the node's data stays in the ground's state.
kubelet_host_root=/var/lib/kubelet
# Host paths virt-handler mounts (from virt-operator's DaemonSet). /run/kubevirt is mounted
# Bidirectional, so it must be a shared mount; the others are made here so that `down` knows
# them as the ground's and removes them.
kubevirt_share_dir=/run/kubevirt
kubevirt_host_dirs=(/run/kubevirt-private /run/kubevirt-libvirt-runtimes /run/kubevirt-image-volume
  /run/kubevirt-kernel-boot /var/lib/kubevirt-node-labeller)
kubevirt_namespace=kubevirt

# Binds a directory onto a path and makes it a shared mount (so mounts made below it by the
# kubelet and virt-handler propagate between the host and their containers). "/" is a private
# mount here, so without the bind there is nothing to share. Records what it created.
shared_bind() { # source target
  local src=$1 dst=$2 root
  if [ ! -e "$dst" ]; then
    mkdir -p "$dst"
    echo "$dst" >>"$live_dir/host-paths"
  fi
  mkdir -p "$src"
  if mountpoint -q "$dst"; then
    root=$(findmnt -n -o FSROOT --mountpoint "$dst" | tail -1)
    [ "$src" = "$dst" ] || [ "$root" = "$(realpath "$src")" ] ||
      die "$dst is already a mount of $root: another kubelet or live ground uses it; stop that first"
  else
    mount --bind "$src" "$dst"
  fi
  mount --make-rshared "$dst"
}

# The node changes KubeVirt needs, made before the kubelet starts; `unmake_kubevirt_host` undoes them.
make_kubevirt_host() {
  local d
  touch "$live_dir/host-paths"
  # containerd checks that a Bidirectional hostPath is on a shared mount by the path as written,
  # /var/run/kubevirt, without following the /var/run link, so the mount it finds is "/". That
  # one (and only that one) becomes shared, as it is on systemd hosts; `down` makes it private.
  if [ "$(findmnt -n -o PROPAGATION --mountpoint /)" = private ]; then
    mount --make-shared /
    touch "$live_dir/root-made-shared"
  fi
  shared_bind "$kubelet_data" "$kubelet_host_root"
  shared_bind "$kubevirt_share_dir" "$kubevirt_share_dir"
  for d in "${kubevirt_host_dirs[@]}"; do
    [ -e "$d" ] && continue
    mkdir -p "$d"
    echo "$d" >>"$live_dir/host-paths"
  done
}

# After every pod is gone: unmounts what is left below KubeVirt's paths and the kubelet root
# (container disks, hotplugged volumes, pod volumes), then the binds, and removes the paths the
# ground made. Paths that were there before `up` stay.
unmake_kubevirt_host() {
  local d m
  for d in "$kubelet_host_root" "$kubevirt_share_dir" "${kubevirt_host_dirs[@]}"; do
    for m in $(mounts_under "$d"); do
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "cannot unmount $m"
    done
  done
  if [ -f "$live_dir/host-paths" ]; then
    while read -r d; do
      if [ -z "$d" ] || [ ! -e "$d" ]; then continue; fi
      mountpoint -q "$d" && { say "cannot remove $d: still mounted"; continue; }
      rm -rf "$d"
    done <"$live_dir/host-paths"
    rm -f "$live_dir/host-paths"
  fi
  if [ -f "$live_dir/root-made-shared" ]; then
    mount --make-private /
    rm -f "$live_dir/root-made-shared"
  fi
}

kubevirt_available() {
  local ready c
  [ "$(kctl -n "$kubevirt_namespace" get kubevirt kubevirt \
    -o 'jsonpath={.status.conditions[?(@.type=="Available")].status}')" = True ] || return 1
  # After a restart the CR may still carry the condition from before `down`: each of the four
  # components must have a Ready pod as well.
  ready=$(kctl -n "$kubevirt_namespace" get pods \
    -o 'jsonpath={range .items[*]}{.metadata.labels.kubevirt\.io}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')
  for c in virt-operator virt-api virt-controller virt-handler; do
    grep -qx "$c True" <<<"$ready" || return 1
  done
  # virtctl's verbs (console, addvolume, ...) go through virt-api's aggregated API.
  [ "$(kctl get apiservice v1.subresources.kubevirt.io \
    -o 'jsonpath={.status.conditions[?(@.type=="Available")].status}')" = True ]
}

# The operator as KubeVirt releases it, placed on the live node with one replica: a kustomize
# patch over the rendered manifest, applied server-side (its CRD is too large for client-side
# apply's annotation). The CR is applied apart, once its CRD is established.
write_kubevirt_manifests() {
  local dir=$live_dir/kubevirt
  mkdir -p "$dir"
  cp "$kubevirt_bin/kubevirt-operator.yaml" "$dir/"
  cat >"$dir/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [kubevirt-operator.yaml]
patches:
  - target: {kind: Deployment, name: virt-operator}
    patch: |
      - {op: replace, path: /spec/replicas, value: 1}
      - {op: remove, path: /spec/template/spec/affinity}
      - op: replace
        path: /spec/template/spec/nodeSelector
        value: {orrery.dev/ground-node: live}
      - op: add
        path: /spec/template/spec/tolerations/-
        value: {key: $live_taint, operator: Exists, effect: NoSchedule}
YAML
  # Emulation (the machine's /dev/kvm runs only patched guest kernels), one replica of each
  # component, everything on the live node, and disks hot-plugged into running VMs.
  cat >"$live_dir/kubevirt-cr.yaml" <<YAML
apiVersion: kubevirt.io/v1
kind: KubeVirt
metadata: {name: kubevirt, namespace: $kubevirt_namespace}
spec:
  imagePullPolicy: IfNotPresent
  configuration:
    developerConfiguration:
      useEmulation: true
      featureGates: [HotplugVolumes]
  infra:
    replicas: 1
    nodePlacement:
      nodeSelector: {orrery.dev/ground-node: live}
      tolerations: [{key: $live_taint, operator: Exists, effect: NoSchedule}]
  workloads:
    nodePlacement:
      nodeSelector: {orrery.dev/ground-node: live}
      tolerations: [{key: $live_taint, operator: Exists, effect: NoSchedule}]
YAML
}

# Prints KubeVirt's state and, for each of its pods not Ready, the log tails of its containers.
kubevirt_failure_report() {
  local pod ready c
  kctl -n "$kubevirt_namespace" get kubevirt,pods -o wide >&2 || true
  say "virt-api's aggregated API: $(kctl get apiservice v1.subresources.kubevirt.io \
    -o 'jsonpath={.status.conditions[?(@.type=="Available")].message}' 2>&1)"
  while read -r pod ready; do
    [ -n "$pod" ] || continue
    [[ $ready == *true* && $ready != *false* ]] && continue
    for c in $(kctl -n "$kubevirt_namespace" get pod "$pod" \
      -o 'jsonpath={.spec.initContainers[*].name} {.spec.containers[*].name}'); do
      say "last lines of $pod/$c:"
      kctl -n "$kubevirt_namespace" logs "$pod" -c "$c" --tail=30 >&2 2>&1 || true
    done
  done < <(kctl -n "$kubevirt_namespace" get pods \
    -o 'jsonpath={range .items[*]}{.metadata.name}{" "}{.status.containerStatuses[*].ready}{"\n"}{end}' 2>/dev/null)
  say "events in $kubevirt_namespace:"
  kctl -n "$kubevirt_namespace" get events --sort-by=.lastTimestamp 2>&1 | tail -n 20 >&2 || true
}

wait_kubevirt_available() { # seconds
  local deadline=$((SECONDS + $1))
  until kubevirt_available 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      kubevirt_failure_report
      die "KubeVirt did not become Available within ${1}s"
    fi
    sleep 2
  done
}

# Installs KubeVirt and waits until it reports Available.
up_kubevirt() {
  local start_ns ms
  start_ns=$(date +%s%N)
  write_kubevirt_manifests
  kctl apply --server-side --force-conflicts --field-manager=orrery-ground -k "$live_dir/kubevirt" >/dev/null
  kctl wait --for=condition=Established --timeout=60s crd/kubevirts.kubevirt.io >/dev/null
  # virt-operator's webhook admits the CR: on a ground that comes back up, until its pod runs again
  # the apply is refused.
  local deadline=$((SECONDS + 180))
  until kctl apply --server-side --force-conflicts --field-manager=orrery-ground \
    -f "$live_dir/kubevirt-cr.yaml" >/dev/null 2>"$state/logs/kubevirt-apply.log"; do
    if ((SECONDS >= deadline)); then
      cat "$state/logs/kubevirt-apply.log" >&2
      kubevirt_failure_report
      die "the KubeVirt CR could not be applied"
    fi
    sleep 2
  done
  wait_kubevirt_available 600
  ms=$((($(date +%s%N) - start_ns) / 1000000))
  say "KubeVirt $KUBEVIRT_VERSION Available in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s"
}

# What a stopped live node must not leave: mounts below its paths, VM or container processes,
# the kubelet's cgroups. Prints each leftover; fails if there is one.
live_leftovers() {
  local d h left=0 pid
  for d in "$state" "$kubelet_host_root" "$kubevirt_share_dir" "${kubevirt_host_dirs[@]}"; do
    for h in $(mounts_under "$d"); do say "left behind: mount $h"; left=1; done
  done
  for pid in $(pgrep -f 'qemu-system|virt-launcher|virt-handler|containerd-shim' || true); do
    # Only processes of this node: their cgroup is under the kubelet's cgroup root.
    grep -q "$cgroup_root" "/proc/$pid/cgroup" 2>/dev/null || continue
    say "left behind: process $pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
    left=1
  done
  for h in /sys/fs/cgroup/*/; do
    [ -d "${h%/}$cgroup_root" ] && { say "left behind: cgroup ${h%/}$cgroup_root"; left=1; }
  done
  return "$left"
}
