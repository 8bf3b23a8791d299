# shellcheck shell=bash
# The ground's settings, names, paths and ports, and the clients every part uses.
# Sourced by e2e/ground, which sets here, cache_root and the pins of versions.env.

say() { printf 'ground: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# State of one ground lives in <cache>/grounds/<name>:
#   kubeadm.yaml, port-base    the configuration the certificates were made for
#   pki/, kubeconfigs/         made once by the real kubeadm, reused by every later `up`
#   tenant-etcd/               CA, server and root client certificates of the tenants' etcd
#   data/<etcd>/               etcd data, kept across down/up so a warm `up` is fast
#   logs/<component>.log       output of the last start of each component
#   pids/<component>.pid       what `down` stops, and nothing else

components=(etcd tenant-etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
live_components=(containerd kubelet kube-proxy)

# The live tier's fixed names and networks (the host has one of each: one live ground at a time).
live_node="live-0"
live_bridge=orrery0
live_pod_cidr=10.88.0.0/16
# The management cluster's Service range, and the cluster DNS address in it.
service_cidr=10.96.0.0/16
live_dns_ip=10.96.0.10
live_taint=orrery.dev/live
live_storage_class="ground-local"
live_volume_count=12
live_volume_size=8Gi

# Sets the ground's name, paths and ports from the environment.
load_ground() {
  ground=${ORRERY_GROUND:-default}
  [[ $ground =~ ^[a-z0-9][a-z0-9-]*$ ]] || die "ORRERY_GROUND must be lowercase letters, digits and '-', not '$ground'"
  state=$cache_root/grounds/$ground
  pki=$state/pki
  kubeconfigs=$state/kubeconfigs
  tenant=$state/tenant-etcd
  node_count=${ORRERY_GROUND_NODES:-3}
  [[ $node_count =~ ^[0-9]+$ ]] || die "ORRERY_GROUND_NODES must be a number, not '$node_count'"
  # A ground keeps the ports it was first set up with (its certificates and kubeconfigs name
  # them), so an unset ORRERY_GROUND_PORT_BASE means "whatever this ground uses".
  recorded_base=""
  if [ -f "$state/port-base" ]; then recorded_base=$(<"$state/port-base"); fi
  port_base=${ORRERY_GROUND_PORT_BASE:-${recorded_base:-16440}}
  if ! [[ $port_base =~ ^[0-9]+$ ]] || ((port_base < 1024 || port_base > 65527)); then
    die "ORRERY_GROUND_PORT_BASE must be a port from 1024 to 65527, not '$port_base'"
  fi
  port_api=$port_base
  port_etcd=$((port_base + 1))
  port_etcd_peer=$((port_base + 2))
  port_kcm=$((port_base + 3))
  port_scheduler=$((port_base + 4))
  port_kwok=$((port_base + 5))
  port_tenant=$((port_base + 6))
  port_tenant_peer=$((port_base + 7))
  api_url=https://127.0.0.1:$port_api
  tenant_url=https://127.0.0.1:$port_tenant
  # The live tier, remembered in the state from the first `up --live` on.
  live_dir=$state/live
  live=false
  if [ -f "$live_dir/enabled" ]; then live=true; fi
  if $live; then
    components+=("${live_components[@]}")
    load_live
  fi
}

load_live() {
  port_kubelet=$((port_base + 8))
  port_kubelet_healthz=$((port_base + 9))
  port_proxy_healthz=$((port_base + 10))
  port_proxy_metrics=$((port_base + 11))
  port_stream=$((port_base + 12))
  ((port_stream <= 65535)) || die "the live tier needs ORRERY_GROUND_PORT_BASE + 12 <= 65535"
  containerd_sock=$state/containerd/containerd.sock
  # The kubelet runs with root /var/lib/kubelet (kubevirt.sh), a bind mount of this directory.
  kubelet_data=$state/kubelet
  kubelet_root=$kubelet_host_root
  cgroup_root=/orrery-ground-$ground
  node_ip=""
  if [ -f "$live_dir/node-ip" ]; then node_ip=$(<"$live_dir/node-ip"); fi
}

require_port_base() {
  [ -z "$recorded_base" ] || [ "$recorded_base" = "$port_base" ] ||
    die "ground '$ground' was set up on port base $recorded_base, not $port_base; use that base or run 'e2e/ground down --purge' first"
}

# Clients of the ground's apiserver and etcds, as the admin; `bin` is set by the command.
kctl() { "$bin/kubectl" --kubeconfig "$kubeconfigs/admin.conf" "$@"; }

etcdctl_main() {
  "$bin/etcdctl" --endpoints "https://127.0.0.1:$port_etcd" --cacert "$pki/etcd/ca.crt" \
    --cert "$pki/etcd/healthcheck-client.crt" --key "$pki/etcd/healthcheck-client.key" "$@"
}

etcdctl_tenant() {
  "$bin/etcdctl" --endpoints "$tenant_url" --cacert "$tenant/ca.crt" \
    --cert "$tenant/root.crt" --key "$tenant/root.key" "$@"
}
