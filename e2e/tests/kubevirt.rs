//! Real KubeVirt on the live tier: a VirtualMachine booted from the worker containerDisk (the
//! image NodePools boot) under emulation, with cloud-init, pod networking both ways, a disk
//! hot-plugged into the running guest, and nothing left once it is deleted.
//!
//! Runs against the live ground named by `ORRERY_GROUND` (`e2e/ground up --live` installs
//! KubeVirt; `e2e/images worker` builds the image it imports):
//!
//! ```sh
//! ORRERY_GROUND=live cargo test -p orrery-e2e --test kubevirt
//! ```
//!
//! Every test fails, never skips, when that ground is down, has no live tier or no KubeVirt.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use orrery_e2e::live::{Namespace, live_ground};
use orrery_e2e::{processes_mentioning, repo_root, unique_name};

const KUBEVIRT_VERSION: &str = "v1.8.2";
const ETCD_IMAGE: &str = "registry.k8s.io/etcd:3.6.4-0";
const KUBE_IMAGE: &str = "registry.k8s.io/kube-apiserver:v1.34.4";
const LAUNCHER_IMAGE: &str = "quay.io/kubevirt/virt-launcher:v1.8.2";
/// Emulated boots take 60–120 s on these machines (DESIGN.md); a VM that needs more is broken.
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);
const TIMEOUT: Duration = Duration::from_secs(180);

/// What `e2e/images` prints for a command (a path or an image reference).
fn images(command: &str) -> String {
    let out = Command::new(repo_root().join("e2e/images"))
        .arg(command)
        .output()
        .expect("e2e/images runs");
    assert!(
        out.status.success(),
        "e2e/images {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn virtctl_path() -> PathBuf {
    PathBuf::from(images("kubevirt-bin-dir")).join("virtctl")
}

/// What the VM tests wait for in their namespace.
trait Waits {
    /// Polls until `check` gives a value; on timeout fails with `what` and KubeVirt's view.
    fn wait<T>(&self, what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T;
}

impl Waits for Namespace<'_> {
    fn wait<T>(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = check() {
                return v;
            }
            if start.elapsed() > timeout {
                let state = self
                    .try_kubectl(&["get", "vm,vmi,pods,pvc", "-o", "wide"])
                    .unwrap_or_default();
                let events = self
                    .try_kubectl(&["get", "events", "--sort-by=.lastTimestamp"])
                    .unwrap_or_default();
                panic!("timed out after {timeout:?} waiting for {what}\n{state}\n{events}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The guest's cloud-init: a file served over HTTP on port 8080 (for a pod to fetch), the answer
/// of a management-cluster Service written to the serial console, and a watcher that reports on
/// the console the first SCSI disk plugged in later. The console is the guest's only voice here.
fn user_data(service_url: &str, token: &str) -> String {
    format!(
        r#"#cloud-config
write_files:
  - path: /run/orrery-probe/token
    content: "{token}"
runcmd:
  - [systemd-run, --unit=orrery-http, python3, -m, http.server, "8080", --directory, /run/orrery-probe]
  - [systemd-run, --unit=orrery-disk, /bin/sh, -c, 'until ls /dev/sd? >/dev/null 2>&1; do sleep 1; done; sleep 1; echo "orrery-probe disk $(lsblk -dno NAME,SERIAL,SIZE /dev/sd?)" >/dev/ttyS0']
  - [/bin/sh, -c, 'echo "orrery-probe service $(curl -sS --max-time 5 --retry 30 --retry-delay 2 --retry-all-errors {service_url})" >/dev/ttyS0']
final_message: "orrery-probe cloud-init done in $UPTIME s"
"#
    )
}

fn vm_yaml(name: &str, image: &str, kernel_args: &str, user_data: &str) -> String {
    let user_data = serde_json::to_string(user_data).unwrap();
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {{name: {name}}}
spec:
  runStrategy: Always
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      nodeSelector: {{orrery.dev/ground-node: live}}
      tolerations: [{{key: orrery.dev/live, operator: Exists, effect: NoSchedule}}]
      terminationGracePeriodSeconds: 0
      domain:
        cpu: {{cores: 1}}
        memory: {{guest: 1Gi}}
        firmware:
          kernelBoot:
            kernelArgs: "{kernel_args}"
            container:
              image: {image}
              imagePullPolicy: Never
              kernelPath: /boot/vmlinuz
              initrdPath: /boot/initrd.img
        devices:
          logSerialConsole: true
          disks:
            - {{name: root, disk: {{bus: virtio}}}}
            - {{name: cloudinit, disk: {{bus: virtio}}}}
          interfaces: [{{name: default, masquerade: {{}}}}]
      networks: [{{name: default, pod: {{}}}}]
      volumes:
        - name: root
          containerDisk: {{image: {image}, imagePullPolicy: Never, path: /disk/worker.qcow2}}
        - name: cloudinit
          cloudInitNoCloud: {{userData: {user_data}}}
"#
    )
}

/// A pod on the live node that runs one command to completion; returns its log.
fn run_pod(ns: &Namespace, name: &str, image: &str, command: &[&str]) -> String {
    let command = serde_json::to_string(command).unwrap();
    ns.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  nodeSelector: {{orrery.dev/ground-node: live}}
  tolerations: [{{key: orrery.dev/live, operator: Exists, effect: NoSchedule}}]
  containers:
    - name: main
      image: {image}
      imagePullPolicy: Never
      command: {command}
      securityContext: {{runAsUser: 65532, runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}}
"#
    ));
    let object = format!("pod/{name}");
    let phase = ns.wait(&format!("{object} to finish"), TIMEOUT, || {
        let phase = ns.jsonpath(&object, "{.status.phase}");
        (phase == "Succeeded" || phase == "Failed").then_some(phase)
    });
    let logs = ns.try_kubectl(&["logs", &object]).unwrap_or_default();
    assert_eq!(phase, "Succeeded", "{object} failed: {logs}");
    logs
}

/// The serial console of the VM's guest, as KubeVirt logs it beside the launcher.
fn console(ns: &Namespace, launcher: &str) -> String {
    ns.try_kubectl(&["logs", launcher, "-c", "guest-console-log"])
        .unwrap_or_default()
}

/// The line of the console that starts with `prefix`, once it is there.
fn console_line(console: &str, prefix: &str) -> Option<String> {
    console
        .lines()
        .find_map(|l| l.find(prefix).map(|at| l[at..].trim().to_string()))
}

/// Host CPU (share of one core) and resident memory of the process whose command line holds
/// `needle`, measured over `window`.
fn process_usage(needle: &str, window: Duration) -> Option<(f64, u64)> {
    let (pid, _) = processes_mentioning(needle)
        .into_iter()
        .find(|(_, cmd)| cmd.contains("qemu-system"))?;
    let ticks = || -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
        Some(fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?)
    };
    let before = ticks()?;
    std::thread::sleep(window);
    let after = ticks()?;
    // USER_HZ is 100 on Linux.
    let cpu = (after - before) as f64 / 100.0 / window.as_secs_f64();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse::<u64>()
        .ok()?;
    Some((cpu, rss_kib / 1024))
}

#[test]
fn kubevirt_is_available_and_virtctl_is_the_pinned_release() {
    let ground = live_ground();
    let available = ground.kubectl(&[
        "-n",
        "kubevirt",
        "get",
        "kubevirt/kubevirt",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
    ]);
    assert_eq!(available, "True", "KubeVirt is not Available");
    let emulation = ground.kubectl(&[
        "-n",
        "kubevirt",
        "get",
        "kubevirt/kubevirt",
        "-o",
        "jsonpath={.spec.configuration.developerConfiguration.useEmulation} {.spec.configuration.developerConfiguration.featureGates}",
    ]);
    assert_eq!(emulation, r#"true ["HotplugVolumes"]"#);
    let out = Command::new(virtctl_path())
        .args(["version", "--client"])
        .output()
        .expect("virtctl runs");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && version.contains(&format!("GitVersion:\"{KUBEVIRT_VERSION}\"")),
        "virtctl version --client: {version}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn worker_vm_boots_talks_both_ways_takes_a_hotplugged_disk_and_leaves_nothing() {
    let ground = live_ground();
    let ns = Namespace::new(&ground, "kubevirt-vm");
    let image = images("worker-ref");
    let kernel_args = images("worker-kernel-args");

    // A management-cluster Service the guest must reach, as a worker reaches its tenant's
    // apiserver: etcd's /health over the Service IP.
    ns.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: store, labels: {{app: store}}}}
spec:
  nodeSelector: {{orrery.dev/ground-node: live}}
  tolerations: [{{key: orrery.dev/live, operator: Exists, effect: NoSchedule}}]
  containers:
    - name: etcd
      image: {ETCD_IMAGE}
      imagePullPolicy: Never
      command: [etcd, --data-dir=/tmp/etcd, --listen-client-urls=http://0.0.0.0:2379, --advertise-client-urls=http://127.0.0.1:2379]
      securityContext: {{runAsUser: 65532, runAsNonRoot: true, allowPrivilegeEscalation: false}}
---
apiVersion: v1
kind: Service
metadata: {{name: store}}
spec:
  selector: {{app: store}}
  ports: [{{port: 2379}}]
"#
    ));
    let cluster_ip = ns.jsonpath("service/store", "{.spec.clusterIP}");
    assert!(
        cluster_ip.starts_with("10.96."),
        "cluster IP {cluster_ip:?}"
    );
    let token = unique_name("token");

    let powered_on = Instant::now();
    ns.apply(&vm_yaml(
        "worker",
        &image,
        &kernel_args,
        &user_data(&format!("http://{cluster_ip}:2379/health"), &token),
    ));

    // KubeVirt runs it: the VMI becomes Ready with the address of the pod network.
    let ip = ns.wait("the VMI Ready with an IP", BOOT_TIMEOUT, || {
        let ready = ns.jsonpath(
            "vmi/worker",
            "{.status.conditions[?(@.type==\"Ready\")].status}",
        );
        let ip = ns.jsonpath("vmi/worker", "{.status.interfaces[0].ipAddress}");
        (ready == "True" && !ip.is_empty()).then_some(ip)
    });
    let vmi_uid = ns.jsonpath("vmi/worker", "{.metadata.uid}");
    let launcher = ns
        .kubectl(&[
            "get",
            "pods",
            "-l",
            &format!("kubevirt.io/created-by={vmi_uid}"),
            "-o",
            "name",
        ])
        .trim()
        .to_string();
    assert!(
        launcher.starts_with("pod/virt-launcher-"),
        "launcher {launcher:?}"
    );

    // The guest says cloud-init is done on its serial console.
    let done = ns.wait("cloud-init done on the console", BOOT_TIMEOUT, || {
        console_line(&console(&ns, &launcher), "orrery-probe cloud-init done")
    });
    let boot = powered_on.elapsed();
    eprintln!("figure: power-on to cloud-init done {boot:.0?} ({done})");

    // The guest reached the Service IP.
    let service = ns.wait("the guest's answer from the Service", TIMEOUT, || {
        console_line(&console(&ns, &launcher), "orrery-probe service")
    });
    assert!(
        service.contains(r#""health":"true""#),
        "the guest could not reach http://{cluster_ip}:2379/health: {service}"
    );

    // A pod reaches a TCP port in the guest: kubectl as a plain HTTP client.
    let server = format!("--server=http://{ip}:8080");
    let fetched = run_pod(
        &ns,
        "fetch",
        KUBE_IMAGE,
        &["kubectl", &server, "get", "--raw", "/token"],
    );
    assert_eq!(fetched.trim(), token, "what the pod fetched from the guest");

    // A PersistentVolumeClaim hot-plugged into the running VM (its VMI: the VM's own volume
    // requests go through its status, which KubeVirt's controller writes at the same time) shows
    // up in the guest. On a
    // Filesystem volume KubeVirt attaches the file disk.img (what CDI's blank DataVolume makes):
    // a pod creates it, sparse, as the qemu user, with coreutils from the launcher image.
    ns.apply(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: extra}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
"#,
    );
    ns.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: make-disk}}
spec:
  restartPolicy: Never
  nodeSelector: {{orrery.dev/ground-node: live}}
  tolerations: [{{key: orrery.dev/live, operator: Exists, effect: NoSchedule}}]
  containers:
    - name: main
      image: {LAUNCHER_IMAGE}
      imagePullPolicy: Never
      command: [truncate, --size=1G, /pvc/disk.img]
      securityContext: {{runAsUser: 107, runAsGroup: 107, runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}}
      volumeMounts: [{{name: pvc, mountPath: /pvc}}]
  volumes: [{{name: pvc, persistentVolumeClaim: {{claimName: extra}}}}]
"#
    ));
    let phase = ns.wait("disk.img made in the claim", TIMEOUT, || {
        let phase = ns.jsonpath("pod/make-disk", "{.status.phase}");
        (phase == "Succeeded" || phase == "Failed").then_some(phase)
    });
    assert_eq!(phase, "Succeeded", "the pod that makes disk.img failed");
    // virtctl's verbs go through virt-api's aggregated API: it must be Available.
    ns.wait("virt-api's aggregated API Available", TIMEOUT, || {
        let available = ns.jsonpath(
            "apiservice/v1.subresources.kubevirt.io",
            "{.status.conditions[?(@.type==\"Available\")].status}",
        );
        (available == "True").then_some(())
    });
    let out = Command::new(virtctl_path())
        .args([
            "--kubeconfig",
            &ground.kubeconfig(),
            "-n",
            &ns.name,
            "addvolume",
            "worker",
            "--volume-name=extra",
            "--serial=orrery-extra",
        ])
        .output()
        .expect("virtctl runs");
    assert!(
        out.status.success(),
        "virtctl addvolume: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let disk = ns.wait("the hot-plugged disk seen by the guest", TIMEOUT, || {
        console_line(&console(&ns, &launcher), "orrery-probe disk")
    });
    assert!(disk.contains("orrery-extra"), "guest saw: {disk}");

    // Figures of one idle VM, from the host.
    // libvirt names the domain <namespace>_<vmi>.
    let domain = format!("guest={}_worker", ns.name);
    if let Some((cpu, rss)) = process_usage(&domain, Duration::from_secs(10)) {
        eprintln!(
            "figure: idle VM qemu on the host: {:.0}% of a core, {rss} MiB resident",
            cpu * 100.0
        );
    }

    // Deleting the VM leaves nothing: no VMI, no launcher or hotplug pod, no qemu, no mount.
    let launcher_uid = ns.jsonpath(&launcher, "{.metadata.uid}");
    ns.kubectl(&["delete", "vm/worker", "--wait=true", "--timeout=180s"]);
    ns.wait(
        "the VMI, its launcher and hotplug pods gone",
        TIMEOUT,
        || {
            let pods = ns.kubectl(&["get", "vmi,pods", "-o", "name"]);
            let left = pods.lines().any(|p| {
                p.starts_with("virtualmachineinstance")
                    || p.starts_with("pod/virt-launcher-")
                    || p.starts_with("pod/hp-volume-")
            });
            (!left).then_some(())
        },
    );
    ns.wait("no process and no mount of the VM left", TIMEOUT, || {
        let qemu = processes_mentioning(&domain);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounted = mounts
            .lines()
            .any(|l| l.contains(&launcher_uid) || l.contains(&vmi_uid));
        (qemu.is_empty() && !mounted).then_some(())
    });
}
