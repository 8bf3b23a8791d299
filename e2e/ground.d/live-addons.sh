# shellcheck shell=bash
# What the live tier runs on its node: CoreDNS, the PersistentVolumes, the smoke pod.
# Sourced by e2e/ground, which sets here, cache_root and the pins of versions.env.

# Readiness checks, each quiet and fast; wait_for repeats them.
coredns_ready() {
  [ "$(kctl -n kube-system get deployment coredns -o 'jsonpath={.status.readyReplicas}')" = 1 ] || return 1
  # kube-proxy routes the DNS Service once CoreDNS is among its endpoints.
  [ -n "$(kctl -n kube-system get endpointslices -l kubernetes.io/service-name=kube-dns \
    -o 'jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}')" ]
}
smoke_done() {
  local phase
  phase=$(kctl -n default get pod ground-smoke -o 'jsonpath={.status.phase}')
  [ "$phase" = Failed ] && { smoke_failed=1; return 0; }
  [ "$phase" = Succeeded ]
}

apply_coredns() {
  kctl apply --server-side --force-conflicts --field-manager=orrery-ground -f - >/dev/null <<YAML
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
  - {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
  - {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
# As kubeadm's, without "forward": nothing outside this machine is asked.
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
            lameduck 5s
        }
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        prometheus :9153
        cache 30
        reload
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      nodeSelector: {orrery.dev/ground-node: live}
      tolerations: [{key: $live_taint, operator: Exists, effect: NoSchedule}]
      containers:
        - name: coredns
          image: registry.k8s.io/coredns/coredns:$COREDNS_VERSION
          imagePullPolicy: IfNotPresent
          args: [-conf, /etc/coredns/Corefile]
          ports:
            - {name: dns, containerPort: 53, protocol: UDP}
            - {name: dns-tcp, containerPort: 53, protocol: TCP}
            - {name: metrics, containerPort: 9153, protocol: TCP}
          readinessProbe:
            httpGet: {path: /ready, port: 8181}
            periodSeconds: 2
          livenessProbe:
            httpGet: {path: /health, port: 8080}
            initialDelaySeconds: 60
          resources:
            requests: {cpu: 10m, memory: 32Mi}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
          volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  clusterIP: $live_dns_ip
  selector: {k8s-app: kube-dns}
  ports:
    - {name: dns, port: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP}
    - {name: metrics, port: 9153, protocol: TCP}
YAML
}

# The default StorageClass and the PersistentVolumes of the live node. Nothing provisions: the
# volumes are made here, local volumes whose data is a directory under the state dir. Bound ones
# are left alone; Released ones (their claim deleted, Retain kept the data) are wiped and made
# Available again by dropping their claimRef, so repeated test runs never run out.
ensure_volumes() {
  local i name phase dir phases released=() recycled=0
  for ((i = 0; i < live_volume_count; i++)); do
    dir=$state/volumes/pv-$i
    mkdir -p "$dir"
    chmod 0777 "$dir"
  done
  {
    cat <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $live_storage_class
  labels: {app.kubernetes.io/part-of: orrery-ground}
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
YAML
    for ((i = 0; i < live_volume_count; i++)); do
      cat <<YAML
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: ground-pv-$i
  labels: {app.kubernetes.io/part-of: orrery-ground, orrery.dev/ground-volume: "true"}
spec:
  capacity: {storage: $live_volume_size}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: $live_storage_class
  volumeMode: Filesystem
  local: {path: $state/volumes/pv-$i}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$live_node]}]
YAML
    done
  } | kctl apply --server-side --force-conflicts --field-manager=orrery-ground -f - >/dev/null
  phases=$(kctl get pv -l orrery.dev/ground-volume=true \
    -o 'jsonpath={range .items[*]}{.metadata.name}{" "}{.status.phase}{"\n"}{end}')
  while read -r name phase; do
    [[ $name =~ ^ground-pv-[0-9]+$ ]] || continue
    case $phase in Released | Failed) released+=("$name") ;; esac
  done <<<"$phases"
  for name in "${released[@]}"; do
    dir=$state/volumes/pv-${name#ground-pv-}
    find "$dir" -mindepth 1 -delete
    chmod 0777 "$dir"
    kctl patch pv "$name" --type=json -p '[{"op": "remove", "path": "/spec/claimRef"}]' >/dev/null
    recycled=$((recycled + 1))
  done
  say "$live_volume_count PersistentVolumes of class $live_storage_class on $live_node ($recycled released ones wiped and made Available)"
}

# A pod on the live node that runs a real container to completion: image, sandbox, CNI, logs.
run_smoke_pod() {
  local start_ns ms
  kctl -n default delete pod ground-smoke --ignore-not-found --wait=true >/dev/null
  start_ns=$(date +%s%N)
  kctl create -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: ground-smoke, namespace: default, labels: {app.kubernetes.io/part-of: orrery-ground}}
spec:
  restartPolicy: Never
  nodeSelector: {orrery.dev/ground-node: live}
  tolerations: [{key: $live_taint, operator: Exists, effect: NoSchedule}]
  automountServiceAccountToken: false
  containers:
    - name: kubectl
      image: registry.k8s.io/kube-apiserver:$KUBERNETES_VERSION
      command: [kubectl, version, --client]
      securityContext: {runAsUser: 65532, runAsNonRoot: true, readOnlyRootFilesystem: true}
YAML
  smoke_failed=0
  wait_for 120 "a pod running to completion on $live_node" kubelet smoke_done
  ms=$((($(date +%s%N) - start_ns) / 1000000))
  local logs
  logs=$(kctl -n default logs ground-smoke 2>&1 || true)
  if ((smoke_failed)) || [[ $logs != *"Client Version: $KUBERNETES_VERSION"* ]]; then
    kctl -n default describe pod ground-smoke >&2 || true
    die "the smoke pod on $live_node failed; its log: $logs"
  fi
  kctl -n default delete pod ground-smoke --wait=false >/dev/null
  say "a pod ran to completion on $live_node in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s"
}
