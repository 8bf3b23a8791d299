# shellcheck shell=bash
# The control plane: certificates, etcd, kube-apiserver, controller-manager, scheduler,
# kwok with its fake nodes, and the tenants' etcd.
# Sourced by e2e/ground, which sets here, cache_root and the pins of versions.env.
#
# Why not `kwokctl --runtime binary` (kwok v0.7.0): its etcd speaks plain http without client
# certificates (fixed in its code), its PKI is its own rather than kubeadm's, and NodeRestriction
# and the live tier's apiserver flags would be patches over its defaults; the tenants' etcd and the
# live node stay here anyway. It would save few lines and lose realism, so the ground keeps its own.

# ---------------------------------------------------------------------------------------------
# certificates

write_kubeadm_config() {
  # kubeadm reads a loopback advertiseAddress as "find a global address on lo" and fails, and
  # it only uses this address for certificate SANs and the component kubeconfigs (which
  # ensure_pki points at 127.0.0.1). The kubernetes Service IP is in the SANs anyway.
  cat >"$state/kubeadm.yaml" <<YAML
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: 10.96.0.1
  bindPort: $port_api
nodeRegistration:
  name: ground
  criSocket: unix:///run/containerd/containerd.sock
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: $KUBERNETES_VERSION
clusterName: orrery-ground-$ground
certificatesDir: $pki
controlPlaneEndpoint: 127.0.0.1:$port_api
apiServer:
  certSANs: [127.0.0.1, localhost${node_ip:+, $node_ip}]
networking:
  serviceSubnet: $service_cidr
  dnsDomain: cluster.local
etcd:
  local:
    dataDir: $state/data/etcd
    serverCertSANs: [127.0.0.1]
    peerCertSANs: [127.0.0.1]
YAML
}

# Certificates and kubeconfigs from the real kubeadm, made once per ground.
ensure_pki() {
  [ -f "$state/pki.done" ] && return
  say "making certificates and kubeconfigs with kubeadm"
  write_kubeadm_config
  rm -rf "$pki" "$kubeconfigs"
  if ! { "$bin/kubeadm" init phase certs all --config "$state/kubeadm.yaml" &&
    "$bin/kubeadm" init phase kubeconfig all --config "$state/kubeadm.yaml" --kubeconfig-dir "$kubeconfigs"; } \
    >"$state/logs/kubeadm.log" 2>&1; then
    tail -n 30 "$state/logs/kubeadm.log" >&2
    die "kubeadm could not make the certificates"
  fi
  local conf
  for conf in "$kubeconfigs"/*.conf; do
    "$bin/kubectl" config set-cluster "orrery-ground-$ground" --server "$api_url" --kubeconfig "$conf" >/dev/null
  done
  echo "$port_base" >"$state/port-base"
  touch "$state/pki.done"
}

# The tenants' etcd has a CA of its own, as an etcd someone else runs would.
ensure_tenant_pki() {
  [ -f "$tenant/root.key" ] && return
  say "making certificates for tenant-etcd with openssl"
  rm -rf "$tenant"
  mkdir -p "$tenant"
  local conf=$tenant/openssl.cnf
  cat >"$conf" <<'CNF'
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
CNF
  openssl req -x509 -config "$conf" -extensions ca -newkey rsa:2048 -nodes -days 3650 \
    -subj "/CN=orrery-ground-tenant-etcd-ca" -keyout "$tenant/ca.key" -out "$tenant/ca.crt" 2>/dev/null
  tenant_cert server "/CN=tenant-etcd" "$conf"
  # etcd takes the common name of a client certificate as the user: root.
  tenant_cert root "/CN=root" "$conf" client
  rm -f "$conf"
}

tenant_cert() { # name subject openssl.cnf [extensions]
  openssl req -config "$3" -new -newkey rsa:2048 -nodes -subj "$2" \
    -keyout "$tenant/$1.key" -out "$tenant/$1.csr" 2>/dev/null
  openssl x509 -req -in "$tenant/$1.csr" -CA "$tenant/ca.crt" -CAkey "$tenant/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$3" -extensions "${4:-$1}" \
    -out "$tenant/$1.crt" 2>/dev/null
  rm -f "$tenant/$1.csr"
}

# ---------------------------------------------------------------------------------------------
# components

start_etcd() {
  start etcd --name=ground \
    --listen-client-urls="https://127.0.0.1:$port_etcd" --advertise-client-urls="https://127.0.0.1:$port_etcd" \
    --listen-peer-urls="https://127.0.0.1:$port_etcd_peer" --initial-advertise-peer-urls="https://127.0.0.1:$port_etcd_peer" \
    --initial-cluster="ground=https://127.0.0.1:$port_etcd_peer" --initial-cluster-token="orrery-ground-$ground" \
    --client-cert-auth --trusted-ca-file="$pki/etcd/ca.crt" \
    --cert-file="$pki/etcd/server.crt" --key-file="$pki/etcd/server.key" \
    --peer-client-cert-auth --peer-trusted-ca-file="$pki/etcd/ca.crt" \
    --peer-cert-file="$pki/etcd/peer.crt" --peer-key-file="$pki/etcd/peer.key" \
    --unsafe-no-fsync
}

start_tenant_etcd() {
  start tenant-etcd --name=tenant \
    --listen-client-urls="$tenant_url" --advertise-client-urls="$tenant_url" \
    --listen-peer-urls="https://127.0.0.1:$port_tenant_peer" --initial-advertise-peer-urls="https://127.0.0.1:$port_tenant_peer" \
    --initial-cluster="tenant=https://127.0.0.1:$port_tenant_peer" --initial-cluster-token="orrery-ground-$ground-tenant" \
    --client-cert-auth --trusted-ca-file="$tenant/ca.crt" \
    --cert-file="$tenant/server.crt" --key-file="$tenant/server.key" \
    --peer-client-cert-auth --peer-trusted-ca-file="$tenant/ca.crt" \
    --peer-cert-file="$tenant/server.crt" --peer-key-file="$tenant/server.key" \
    --unsafe-no-fsync
}

start_apiserver() {
  # The apiserver advertises 127.0.0.1. The default "lease" endpoint reconciler would write that
  # into the Endpoints of the `kubernetes` Service, which validation rejects for a loopback
  # address, and it would log the failure forever. Nothing on the ground reaches the apiserver
  # through that Service (kwok pods do not run), so the Endpoints are left alone: "none".
  #
  # A live ground's pods do reach it through that Service: there the apiserver listens on every
  # address, advertises the node's, and the lease reconciler keeps the Endpoints.
  local endpoint=(--advertise-address=127.0.0.1 --bind-address=127.0.0.1 --endpoint-reconciler-type=none)
  if $live; then endpoint=(--advertise-address="$node_ip" --bind-address=0.0.0.0 --endpoint-reconciler-type=lease); fi
  start kube-apiserver \
    "${endpoint[@]}" --secure-port="$port_api" \
    --etcd-servers="https://127.0.0.1:$port_etcd" --etcd-cafile="$pki/etcd/ca.crt" \
    --etcd-certfile="$pki/apiserver-etcd-client.crt" --etcd-keyfile="$pki/apiserver-etcd-client.key" \
    --tls-private-key-file="$pki/apiserver.key" --client-ca-file="$pki/ca.crt" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction,PodSecurity,ValidatingAdmissionPolicy \
    --enable-bootstrap-token-auth=true --allow-privileged=true \
    --service-cluster-ip-range=$service_cidr \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" --proxy-client-key-file="$pki/front-proxy-client.key" \
    --requestheader-client-ca-file="$pki/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra-
}

start_controller_manager() {
  local conf=$kubeconfigs/controller-manager.conf
  # Upstream's client limit of 20 requests/s would make the controller-manager, not the system
  # under test, the bottleneck of scale tests with hundreds of Deployments.
  # --kubeconfig is the marker argument.
  start kube-controller-manager \
    --authentication-kubeconfig="$conf" --authorization-kubeconfig="$conf" \
    --bind-address=127.0.0.1 --secure-port="$port_kcm" \
    --client-ca-file="$pki/ca.crt" --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
    --cluster-name="orrery-ground-$ground" \
    --controllers='*,bootstrapsigner,tokencleaner' --leader-elect=false \
    --kube-api-qps=100 --kube-api-burst=200 \
    --concurrent-deployment-syncs=10 --concurrent-replicaset-syncs=10 \
    --use-service-account-credentials=true --service-account-private-key-file="$pki/sa.key" \
    --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --service-cluster-ip-range=$service_cidr
}

start_scheduler() {
  local conf=$kubeconfigs/scheduler.conf
  start kube-scheduler \
    --authentication-kubeconfig="$conf" --authorization-kubeconfig="$conf" \
    --bind-address=127.0.0.1 --secure-port="$port_scheduler" --leader-elect=false \
    --kube-api-qps=100 --kube-api-burst=200
}

start_kwok() {
  # kwok also loads ~/.kwok/kwok.yaml unless its work dir is elsewhere: keep it in the state.
  mkdir -p "$state/kwok"
  cat >"$state/kwok.yaml" <<'YAML'
# kwok reads its flags' defaults from here; the ground passes every setting as a flag.
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options: {}
YAML
  # Only nodes annotated kwok.x-k8s.io/node=fake are kwok's, so a real kubelet can join later.
  # A node lease (as kubelets keep) is cheaper than a status heartbeat; the pod CIDR has room
  # for every pod the fake nodes can take (kwok's default /24 has 254 addresses).
  KWOK_WORKDIR=$state/kwok start kwok \
    --kubeconfig="$kubeconfigs/admin.conf" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --server-address="127.0.0.1:$port_kwok" \
    --node-lease-duration-seconds=40 --cidr=10.244.0.1/16
}

# kubeadm's admin.conf is in the group kubeadm:cluster-admins, which `kubeadm init` binds to
# cluster-admin; the ground makes that binding itself, as system:masters (super-admin.conf).
ensure_admin_binding() {
  local super=(--kubeconfig "$kubeconfigs/super-admin.conf")
  "$bin/kubectl" "${super[@]}" get clusterrolebinding kubeadm:cluster-admins >/dev/null 2>&1 && return
  "$bin/kubectl" "${super[@]}" create clusterrolebinding kubeadm:cluster-admins \
    --clusterrole=cluster-admin --group=kubeadm:cluster-admins >/dev/null
}

node_names() {
  local i
  for ((i = 0; i < node_count; i++)); do echo "kwok-node-$i"; done
}

# Fake nodes for kwok to keep Ready. They carry no taint, so pods land there as on any node.
ensure_nodes() {
  local name
  for name in $(node_names); do
    cat <<YAML
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    type: kwok
    orrery.dev/ground-node: kwok
    kubernetes.io/hostname: $name
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "250"}
  capacity: {cpu: "32", memory: 256Gi, pods: "250"}
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: $KUBERNETES_VERSION
YAML
  done >"$state/nodes.yaml"
  if ((node_count > 0)); then
    kctl apply --server-side --force-conflicts --field-manager=orrery-ground -f "$state/nodes.yaml" >/dev/null
  fi
  # Fewer nodes than last time: remove the surplus.
  local surplus
  surplus=$(kctl get nodes -l orrery.dev/ground-node=kwok -o name | grep -vxF -f <(node_names | sed 's#^#node/#') || true)
  if [ -n "$surplus" ]; then
    # shellcheck disable=SC2086 # one word per node
    kctl delete --wait=false $surplus >/dev/null
  fi
}

# ---------------------------------------------------------------------------------------------
# readiness checks, each quiet and fast; wait_for repeats them

api_ready() { curl -fsS --max-time 2 --cacert "$pki/ca.crt" "$api_url/readyz"; }
# The secure ports of controller-manager and scheduler serve /healthz to anyone.
kcm_healthy() { curl -fsSk --max-time 2 "https://127.0.0.1:$port_kcm/healthz"; }
scheduler_healthy() { curl -fsSk --max-time 2 "https://127.0.0.1:$port_scheduler/healthz"; }
kwok_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$port_kwok/healthz"; }
etcd_healthy() { etcdctl_main endpoint health; }
tenant_healthy() { etcdctl_tenant endpoint health; }
default_service_account() { kctl -n default get serviceaccount default; }

nodes_ready() {
  ((node_count == 0)) && return 0
  # shellcheck disable=SC2046 # one word per node
  kctl wait --for=condition=Ready --timeout=5s $(node_names | sed 's#^#node/#')
}

# The tenants' etcd requires authentication, as a shared production etcd would: the root user
# (no password: the client certificate with CN=root proves it) holds the root role.
ensure_tenant_auth() {
  local out
  out=$(etcdctl_tenant auth status 2>/dev/null || true)
  [[ $out == *"Authentication Status: true"* ]] && return
  say "enabling authentication on tenant-etcd"
  etcdctl_tenant user get root >/dev/null 2>&1 || etcdctl_tenant user add root --no-password >/dev/null
  out=$(etcdctl_tenant user get root)
  [[ $out =~ Roles:.*root ]] || etcdctl_tenant user grant-role root root >/dev/null
  etcdctl_tenant auth enable >/dev/null
}
