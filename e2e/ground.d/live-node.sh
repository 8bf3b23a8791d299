# shellcheck shell=bash
# The live tier: a real node (containerd, kubelet, kube-proxy) on this machine.
# Sourced by e2e/ground, which sets here, cache_root and the pins of versions.env.

# State of the live tier, in the ground's state dir:
#   live/enabled, live/node-ip     that this ground is live, and the node address it was made for
#   live/*.yaml, *.toml, *.conf    configurations and kubeconfigs of containerd, kubelet, kube-proxy
#   live/cni/                      CNI configuration; live/cni-ipam/ the addresses handed out
#   live/sysctl.orig               kernel settings as they were before the live tier changed them
#   containerd/                    containerd's root (images, snapshots), state and socket
#   kubelet/                       the kubelet's root directory (pod volumes) and pod logs,
#                                  mounted at /var/lib/kubelet while the node runs (kubevirt.sh)
#   live/kubevirt/, kubevirt-cr.yaml  KubeVirt's operator manifest (with our patch) and its CR
#   live/host-paths                the host paths outside the state that `up` made, for `down`
#   volumes/pv-N/                  the data of PersistentVolume ground-pv-N

# Kernel settings the live tier needs (forwarding, bridged traffic through iptables) or that the
# kubelet sets on start (it tunes panic and overcommit unless protectKernelDefaults). `down` puts
# back what was there before.
live_sysctls=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet)

sysctl_path() { printf '/proc/sys/%s\n' "${1//.//}"; }

# Makes this (new) ground live: picks the node address, which the certificates then name.
enable_live() {
  local ip=${ORRERY_GROUND_NODE_IP:-}
  if [ -z "$ip" ]; then
    ip=$(ip -4 -o addr show scope global | awk '{sub("/.*", "", $4); print $4; exit}')
  fi
  [ -n "$ip" ] || die "no global IPv4 address on this machine for the live node: set ORRERY_GROUND_NODE_IP"
  mkdir -p "$live_dir"
  echo "$ip" >"$live_dir/node-ip"
  touch "$live_dir/enabled"
  live=true
  components+=("${live_components[@]}")
  load_live
}

live_tools_present() {
  local t missing=()
  for t in containerd containerd-shim-runc-v2 runc ctr iptables ip6tables conntrack ip; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  for t in bridge host-local loopback portmap; do
    [ -x "/usr/lib/cni/$t" ] || missing+=("/usr/lib/cni/$t")
  done
  ((${#missing[@]} == 0)) || die "the live tier needs ${missing[*]}: run e2e/install-deps"
}

# A client certificate signed by the ground's CA, in a kubeconfig for the ground's apiserver.
live_kubeconfig() { # name user group
  local name=$1 key=$live_dir/$1.key crt=$live_dir/$1.crt conf=$live_dir/$1.conf
  [ -f "$conf" ] && return
  openssl req -new -newkey rsa:2048 -nodes -subj "${3:+/O=$3}/CN=$2" -keyout "$key" -out "$live_dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$live_dir/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 \
    -extfile <(printf 'keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n') \
    -out "$crt" 2>/dev/null
  rm -f "$live_dir/$name.csr"
  local k=(--kubeconfig "$conf.partial")
  "$bin/kubectl" config set-cluster "orrery-ground-$ground" --server "$api_url" \
    --certificate-authority "$pki/ca.crt" --embed-certs "${k[@]}" >/dev/null
  "$bin/kubectl" config set-credentials "$2" --client-certificate "$crt" --client-key "$key" --embed-certs "${k[@]}" >/dev/null
  "$bin/kubectl" config set-context default --cluster "orrery-ground-$ground" --user "$2" "${k[@]}" >/dev/null
  "$bin/kubectl" config use-context default "${k[@]}" >/dev/null
  rm -f "$key" "$crt"
  mv "$conf.partial" "$conf"
}

write_live_configs() {
  mkdir -p "$live_dir/cni" "$live_dir/cni-ipam" "$state/containerd" "$kubelet_data/pod-logs"
  cat >"$live_dir/containerd.toml" <<TOML
# containerd of the live node of ground '$ground': everything it keeps is under $state.
version = 2
root = "$state/containerd/root"
state = "$state/containerd/state"
[grpc]
  address = "$containerd_sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$state/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  stream_server_address = "127.0.0.1"
  stream_server_port = "$port_stream"
  enable_selinux = false
  # Processes here lack CAP_SYS_RESOURCE, so runc cannot lower a container's OOM score below
  # containerd's own (the kubelet asks -998 for sandboxes): keep it at containerd's.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$state/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$live_dir/cni"
    max_conf_num = 1
TOML
  cat >"$live_dir/cni/10-orrery-ground.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "orrery-ground",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$live_bridge",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$live_pod_cidr"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$live_dir/cni-ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  # No nameserver for pods with dnsPolicy Default (CoreDNS among them): nothing outside this
  # machine is to be asked. Pods with ClusterFirst get CoreDNS.
  : >"$live_dir/resolv.conf"
  cat >"$live_dir/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: $port_kubelet
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $port_kubelet_healthz
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$containerd_sock
cgroupDriver: cgroupfs
cgroupRoot: $cgroup_root
# These machines have cgroup v1 (hybrid); Kubernetes 1.34 still runs there when told to.
failCgroupV1: false
failSwapOn: false
clusterDNS: [$live_dns_ip]
clusterDomain: cluster.local
resolvConf: $live_dir/resolv.conf
podLogsDir: $kubelet_root/pod-logs
volumePluginDir: $kubelet_root/volume-plugins
registerNode: true
registerWithTaints:
  - {key: $live_taint, value: "true", effect: NoSchedule}
serializeImagePulls: false
# The images are imported, never pulled: never collect them, and evict only when really short.
# Disk thresholds are absolute: under disk pressure the kubelet deletes every image no container
# uses (the pause image and the worker's containerDisk among them), and 1% of a large shared disk
# is gigabytes that builds come and go through.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 512Mi, nodefs.inodesFree: 1%, imagefs.available: 512Mi}
nodeStatusReportFrequency: 1m
YAML
  # kube-proxy exits as soon as its configuration file is written to (a supervisor is to restart
  # it), so the file is replaced only when its content changes: `up` on a running ground keeps it.
  replace_if_changed "$live_dir/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $live_dir/kube-proxy.conf}
mode: iptables
hostnameOverride: $live_node
clusterCIDR: $live_pod_cidr
healthzBindAddress: 127.0.0.1:$port_proxy_healthz
metricsBindAddress: 127.0.0.1:$port_proxy_metrics
# Leave the host's conntrack settings and route_localnet alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
nodePortAddresses: [primary]
YAML
}

# Writes stdin to the file unless the file holds exactly that already.
replace_if_changed() { # file
  cat >"$1.new"
  if cmp -s "$1.new" "$1"; then rm -f "$1.new"; else mv "$1.new" "$1"; fi
}

# Saves the kernel settings once (until `down` restores them), then sets what the node needs.
prepare_host() {
  local k
  if [ ! -f "$live_dir/sysctl.orig" ]; then
    for k in "${live_sysctls[@]}"; do
      [ -f "$(sysctl_path "$k")" ] && printf '%s=%s\n' "$k" "$(<"$(sysctl_path "$k")")"
    done >"$live_dir/sysctl.orig.partial"
    mv "$live_dir/sysctl.orig.partial" "$live_dir/sysctl.orig"
  fi
  for k in net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables; do
    [ -f "$(sysctl_path "$k")" ] || die "the kernel has no $k (bridge netfilter): the live tier needs it"
    echo 1 >"$(sysctl_path "$k")"
  done
  # The kubelet's cgroup root, in every cgroup hierarchy. A new cpuset cgroup has no CPUs or
  # memory nodes until given its parent's.
  local h dir
  for h in /sys/fs/cgroup/*/; do
    [ -f "$h/cgroup.procs" ] || continue
    dir=${h%/}$cgroup_root
    mkdir -p "$dir"
    if [ -f "$dir/cpuset.cpus" ] && [ -z "$(<"$dir/cpuset.cpus")" ]; then
      cat "${h%/}/cpuset.cpus" >"$dir/cpuset.cpus"
      cat "${h%/}/cpuset.mems" >"$dir/cpuset.mems"
    fi
  done
}

crictl_live() { "$live_bin/crictl" --runtime-endpoint "unix://$containerd_sock" --image-endpoint "unix://$containerd_sock" --timeout 30s "$@"; }
ctr_live() { ctr --address "$containerd_sock" --namespace k8s.io "$@"; }

# Imports each image tarball once per containerd root.
import_images() { # tarball...
  local tarball mark=$state/containerd/imported
  mkdir -p "$mark"
  for tarball in "$@"; do
    [ -f "$mark/$(basename "$tarball")" ] && continue
    say "importing $(basename "$tarball") into containerd"
    ctr_live images import "$tarball" >"$state/logs/ctr-import.log" 2>&1 ||
      { tail -n 20 "$state/logs/ctr-import.log" >&2; die "ctr could not import $tarball"; }
    touch "$mark/$(basename "$tarball")"
  done
}

containerd_ready() { ctr --address "$containerd_sock" version; }
kubelet_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$port_kubelet_healthz/healthz"; }
proxy_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$port_proxy_healthz/healthz"; }
live_node_ready() { kctl wait --for=condition=Ready --timeout=5s "node/$live_node"; }

start_containerd() {
  start containerd
}

start_kubelet() {
  start kubelet --kubeconfig="$live_dir/kubelet.conf" --root-dir="$kubelet_root" \
    --hostname-override="$live_node" --node-ip="$node_ip" \
    --node-labels="orrery.dev/ground-node=live,kubernetes.io/os=linux"
}

# This machine's network answers a TCP connection to any address it does not know (on 443 with an
# HTTP 404). A connection to a Service IP made before kube-proxy has written its rule reaches that
# answer and may stay open: kube-apiserver kept such a connection for an aggregated API's
# availability check, which then failed for good. Refuse what kube-proxy did not translate, as a
# cluster network does (the filter table sees the address after kube-proxy's DNAT).
refuse_untranslated_service_ips() {
  local chain=ORRERY-UNTRANSLATED-SERVICES base
  # Idempotent: `up` on a running ground comes here again.
  iptables -w -N "$chain" 2>/dev/null || iptables -w -F "$chain"
  iptables -w -A "$chain" -d "$service_cidr" -p tcp -j REJECT --reject-with tcp-reset
  iptables -w -A "$chain" -d "$service_cidr" -j REJECT
  for base in OUTPUT FORWARD; do
    iptables -w -C "$base" -j "$chain" 2>/dev/null || iptables -w -I "$base" -j "$chain"
  done
}

start_kube_proxy() {
  refuse_untranslated_service_ips
  start kube-proxy
}

# Brings up the node, then what runs on it (live-addons.sh).
# The live node needs room to work in (images, VM disks, volumes, logs), and so do the builds
# that run beside it; short of it, the kubelet starts deleting the images it cannot pull again.
# Refuse early with what to do rather than fail later at random.
check_free_space() {
  local need_gib=10 free_kib
  free_kib=$(df --output=avail -k "$cache_root" | tail -1)
  if ((free_kib < need_gib * 1024 * 1024)); then
    die "only $((free_kib / 1024 / 1024)) GiB free under $cache_root; the live tier needs $need_gib GiB (free some: 'cargo clean', or 'e2e/ground down --purge' for grounds no longer used)"
  fi
}

up_live() {
  live_tools_present
  check_free_space
  local tarballs
  say "live tier: node $live_node at $node_ip"
  tarballs=$("$here/images" build) || die "e2e/images could not build the images"
  tarballs+=$'\n'$("$here/images" kubevirt) || die "e2e/images could not build KubeVirt"
  # The worker disk image NodePools boot, as a containerDisk on the node.
  tarballs+=$'\n'$("$here/images" worker) || die "e2e/images could not build the worker image"
  live_bin=$("$here/images" bin-dir)
  kubevirt_bin=$("$here/images" kubevirt-bin-dir)
  echo "$live_bin" >"$live_dir/live-bin"
  live_kubeconfig kubelet "system:node:$live_node" system:nodes
  live_kubeconfig kube-proxy system:kube-proxy
  write_live_configs
  prepare_host
  make_kubevirt_host
  start_containerd
  wait_for 30 "its socket" containerd containerd_ready
  # shellcheck disable=SC2086 # one path per line, no spaces
  import_images $tarballs
  start_kube_proxy
  start_kubelet
  wait_for 60 "healthy" kubelet kubelet_healthy
  wait_for 60 "healthy" kube-proxy proxy_healthy
  wait_for 120 "node $live_node Ready" kubelet live_node_ready
  ensure_volumes
  apply_coredns
  run_smoke_pod
  wait_for 120 "CoreDNS Ready" kubelet coredns_ready
  up_kubevirt
}

# Everything mounted under a directory, deepest first.
mounts_under() { # dir
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -ru
}

# Deletes the iptables rules and chains kube-proxy, the kubelet, the CNI plugins and the ground made
# (named KUBE-*, CNI-* or ORRERY-*) that are still there after kube-proxy's own cleanup.
clean_iptables() {
  local cmd table chains rules rule c
  for cmd in iptables ip6tables; do
    for table in filter nat mangle; do
      chains=$("$cmd" -w -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-|ORRERY-)/ { print $2 }') || continue
      [ -n "$chains" ] || continue
      # First the rules that jump to them, then their rules, then the chains.
      rules=$("$cmd" -w -t "$table" -S | grep -E -- '^-A .* -j (KUBE-|CNI-|ORRERY-)' || true)
      while read -r rule; do
        [ -n "$rule" ] || continue
        eval "$cmd -w -t $table -D ${rule#-A }" 2>/dev/null || true
      done <<<"$rules"
      for c in $chains; do "$cmd" -w -t "$table" -F "$c" 2>/dev/null || true; done
      for c in $chains; do "$cmd" -w -t "$table" -X "$c" 2>/dev/null || true; done
    done
  done
}

# Stops the live tier and removes what it leaves on the host: the kubelet first (so it restarts
# nothing), then every pod through the CRI (their containers, network namespaces and CNI
# addresses), containerd, kube-proxy and its rules, mounts, the bridge, the kubelet's cgroups,
# and the kernel settings as they were.
stop_live() {
  local pid m h live_bin=""
  [ -f "$live_dir/live-bin" ] && live_bin=$(<"$live_dir/live-bin")
  stop_components kubelet
  if running_pid containerd >/dev/null && [ -x "$live_bin/crictl" ]; then
    crictl_live rmp --all --force >"$state/logs/crictl.log" 2>&1 ||
      { say "crictl could not remove every pod; last lines of $state/logs/crictl.log:"; tail -n 10 "$state/logs/crictl.log" >&2; }
  fi
  stop_components containerd kube-proxy
  # The apiserver takes its address out of the `kubernetes` Endpoints on the way out: let it, while
  # etcd still runs.
  stop_components kube-apiserver
  # Shims of containers that crictl could not remove hold mounts: end them, by PID.
  for pid in $(pgrep -f -- "-address $containerd_sock" || true); do
    [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" = containerd-shim-runc-v2 ] || continue
    say "ending containerd-shim (pid $pid) left by containerd"
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ -x "$bin/kube-proxy" ]; then
    "$bin/kube-proxy" --cleanup >"$state/logs/kube-proxy-cleanup.log" 2>&1 ||
      say "kube-proxy --cleanup failed; see $state/logs/kube-proxy-cleanup.log"
  fi
  clean_iptables
  for m in $(mounts_under "$state"); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "cannot unmount $m"
  done
  unmake_kubevirt_host
  if ip link show "$live_bridge" >/dev/null 2>&1; then ip link delete "$live_bridge"; fi
  # The pods are gone, and so are the addresses CNI handed them.
  rm -rf "$live_dir/cni-ipam"
  for h in /sys/fs/cgroup/*/; do
    [ -d "${h%/}$cgroup_root" ] || continue
    find "${h%/}$cgroup_root" -depth -type d -exec rmdir {} + 2>/dev/null ||
      say "cannot remove the cgroup ${h%/}$cgroup_root (processes left in it?)"
  done
  # A sandbox that failed half-way leaves its network namespace file unmounted.
  for m in /run/netns/cni-*; do
    [ -f "$m" ] && ! mountpoint -q "$m" && rm -f "$m"
  done
  # Directories containerd 1.6 and CNI keep at fixed places (shim sockets, network namespaces,
  # CNI results): removed when empty, so only what the live tier made goes.
  rmdir /run/containerd/s /run/containerd /var/lib/cni/results /var/lib/cni /run/netns 2>/dev/null || true
  if [ -f "$live_dir/sysctl.orig" ]; then
    local kv
    while IFS= read -r kv; do
      [ -f "$(sysctl_path "${kv%%=*}")" ] && echo "${kv#*=}" >"$(sysctl_path "${kv%%=*}")"
    done <"$live_dir/sysctl.orig"
    rm -f "$live_dir/sysctl.orig"
  fi
  live_leftovers || die "the live node did not stop cleanly (see above)"
}
