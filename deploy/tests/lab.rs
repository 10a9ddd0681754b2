//! The single-node lab end to end, as a learner uses it: `rkube up --detach`, then the
//! stock kubectl against it — a Deployment serving HTTP, logs, exec (with a TTY),
//! port-forward, cp, Services (`kubectl expose`, ClusterIP from the node and from pods,
//! NodePort, LoadBalancer, hostPort, names through the cluster DNS), restarts,
//! OOMKilled, a Job, `run -i`/`run -it --rm` (attach), ConfigMaps and Secrets as files
//! and env, two containers on localhost, PVC data outliving its pod, the whole lab
//! killed and restarted with every container still running — and `rkube down` leaving
//! nothing behind. Needs root (namespaces, cgroups, mounts); one lab serves every step.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

fn skip_or_fail(reason: &str) -> anyhow::Result<()> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!("cannot run under CI: {reason}");
    }
    eprintln!("skipping: {reason}");
    Ok(())
}

struct Lab {
    dir: tempfile::TempDir,
    port: u16,
    /// The ingress controller's HTTP port (a free one, so that labs side by side and a
    /// web server on the machine do not collide on 80).
    ingress_port: u16,
    ingress_https_port: u16,
}

impl Lab {
    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    fn rkube(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = Command::new(env!("CARGO_BIN_EXE_rkube"))
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path())
            .env("RUST_LOG", "warn")
            .output()
            .context("running rkube")?;
        Ok(out)
    }

    fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.args(args).env("KUBECONFIG", self.kubeconfig());
        c
    }

    /// Runs kubectl; Ok(stdout) on success, Err with stderr otherwise.
    fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl_cmd(args).output().context("running kubectl")?;
        if !out.status.success() {
            bail!("kubectl {} failed: {}{}", args.join(" "), String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        let mut child = self.kubectl_cmd(&["apply", "-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        child.stdin.take().context("stdin")?.write_all(yaml.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Polls `kubectl args` until `check` accepts its output.
    fn wait_for(&self, timeout: Duration, what: &str, args: &[&str], check: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            match self.kubectl(args) {
                Ok(out) if check(&out) => return Ok(out),
                Ok(out) => last = out,
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                let pods = self.kubectl(&["get", "pods", "-A", "-o", "wide"]).unwrap_or_default();
                let events = self.kubectl(&["get", "events", "-A"]).unwrap_or_default();
                bail!("timed out after {timeout:?} waiting for {what}; last output:\n{last}\npods:\n{pods}\nevents:\n{events}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn pod_names(&self, selector: &str) -> anyhow::Result<Vec<String>> {
        let out = self.kubectl(&["get", "pods", "-l", selector, "-o", "jsonpath={.items[*].metadata.name}"])?;
        Ok(out.split_whitespace().map(str::to_string).collect())
    }
}

/// A lab is always taken down, even when an assertion panics mid-test.
impl Drop for Lab {
    fn drop(&mut self) {
        if self.dir.path().join("lab.json").exists() {
            let _ = self.rkube(&["down"]);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Lines of /proc/self/mountinfo whose mount point is under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
        .map(str::to_string)
        .collect()
}

/// `Private_Dirty` (kB) of each of the lab's container shims: the memory a shim does not
/// share with the lab process and the other shims.
fn shims_private_dirty_kib(dir: &Path) -> Vec<(u32, u64)> {
    let needle = format!("__rkube-shim\0start\0{}", dir.display());
    let entries = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    entries
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .filter_map(|pid| {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            let line = rollup.lines().find(|l| l.starts_with("Private_Dirty:"))?;
            Some((pid, line.split_whitespace().nth(1)?.parse().ok()?))
        })
        .collect()
}

fn http_get(addr: &str) -> anyhow::Result<String> {
    http_get_host(addr, "x", "/")
}

/// A GET of `path` with a `Host` header, as curl -H 'Host: …' sends it: the whole answer.
fn http_get_host(addr: &str, host: &str, path: &str) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn lab_end_to_end_with_the_stock_kubectl_needs_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return skip_or_fail("the lab needs root (namespaces, cgroups, mounts)");
    }
    if Command::new("kubectl").arg("version").arg("--client").output().is_err() {
        return skip_or_fail("kubectl is not on PATH");
    }
    let lab = Lab { dir: tempfile::Builder::new().prefix("rkube-lab").tempdir()?, port: free_port()?, ingress_port: free_port()?, ingress_https_port: free_port()? };
    let result = run_steps(&lab);
    // Always take the lab down, and check it left nothing behind.
    let down = lab.rkube(&["down"]);
    let settings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lab.dir.path().join("lab.json")).unwrap_or_default()).unwrap_or_default();
    result?;
    let down = down?;
    if !down.status.success() {
        bail!("rkube down failed: {}", String::from_utf8_lossy(&down.stderr));
    }
    let left = mounts_under(lab.dir.path());
    assert!(left.is_empty(), "mounts left under the lab after rkube down: {left:#?}");
    let bridge = settings["bridgeName"].as_str().unwrap_or_default().to_string();
    assert!(!bridge.is_empty());
    let link = Command::new("ip").args(["link", "show", &bridge]).output()?;
    assert!(!link.status.success(), "bridge {bridge} still exists after rkube down");
    // kube-proxy's table and the pod network's masquerade table are named after the bridge.
    let tables = Command::new("nft").args(["list", "tables"]).output()?;
    let tables = String::from_utf8_lossy(&tables.stdout).into_owned();
    assert!(!tables.contains(&bridge), "nftables tables of the lab remain after rkube down: {tables}");
    let cgroup = settings["cgroupRoot"].as_str().unwrap_or_default().to_string();
    for hierarchy in ["memory", "pids", "cpu", "unified", ""] {
        let p = Path::new("/sys/fs/cgroup").join(hierarchy).join(&cgroup);
        assert!(!p.exists(), "cgroup {} still exists after rkube down", p.display());
    }
    let ps = Command::new("pgrep").args(["-f", lab.dir.path().to_string_lossy().as_ref()]).output()?;
    assert!(String::from_utf8_lossy(&ps.stdout).trim().is_empty(), "processes of the lab still run: {}", String::from_utf8_lossy(&ps.stdout));
    Ok(())
}

fn run_steps(lab: &Lab) -> anyhow::Result<()> {
    let started = Instant::now();
    let up = lab.rkube(&["up", "--detach", "--port", &lab.port.to_string(), "--ingress-port", &lab.ingress_port.to_string(), "--ingress-https-port", &lab.ingress_https_port.to_string()])?;
    if !up.status.success() {
        bail!("rkube up failed: {}{}", String::from_utf8_lossy(&up.stdout), String::from_utf8_lossy(&up.stderr));
    }
    let text = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(text.contains("is Ready"), "rkube up says the node is Ready: {text}");
    eprintln!("lab up in {:.1}s", started.elapsed().as_secs_f64());
    let nodes = lab.kubectl(&["get", "nodes"])?;
    assert!(nodes.contains(" Ready "), "{nodes}");
    // What many tutorials run next: every component healthy.
    let cs = lab.kubectl(&["get", "cs"])?;
    for component in ["controller-manager", "scheduler", "etcd-0"] {
        assert!(cs.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == [component, "Healthy", "ok"]), "kubectl get cs: {component} Healthy: {cs}");
    }
    let images = lab.rkube(&["images"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    eprintln!("{images}");

    deployment_serves_http(lab)?;
    services_and_dns(lab)?;
    ingress_routes_to_services(lab)?;
    restarts_and_oom(lab)?;
    statuses_read_like_a_real_cluster(lab)?;
    job_completes(lab)?;
    security_contexts(lab)?;
    seccomp_profiles(lab)?;
    run_and_attach(lab)?;
    config_and_secrets(lab)?;
    two_containers_share_localhost_and_processes(lab)?;
    pvc_outlives_its_pod(lab)?;
    drain_respects_a_disruption_budget(lab)?;
    containers_survive_a_lab_restart(lab)?;
    Ok(())
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox
        command: ["sh", "-c", "mkdir -p /www && echo hello from $(hostname) > /www/index.html && echo serving && exec httpd -f -v -p 8080 -h /www"]
        ports: [{containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
"#;

fn deployment_serves_http(lab: &Lab) -> anyhow::Result<()> {
    let applied = Instant::now();
    lab.apply(WEB)?;
    lab.wait_for(Duration::from_secs(10), "3 ready web replicas in under 10 s", &["get", "deploy", "web", "-o", "jsonpath={.status.readyReplicas}"], |o| o.trim() == "3")?;
    eprintln!("deployment of 3 Ready in {:.1}s", applied.elapsed().as_secs_f64());
    let pods = lab.pod_names("app=web")?;
    assert_eq!(pods.len(), 3);
    let pod = &pods[0];
    // Each pod has its own IP, and answers on it from the node.
    let ip = lab.kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"])?;
    let body = http_get(&format!("{}:8080", ip.trim()))?;
    assert!(body.contains(&format!("hello from {pod}")), "{body}");

    let logs = lab.kubectl(&["logs", pod])?;
    assert!(logs.contains("serving"), "kubectl logs: {logs}");
    let exec = lab.kubectl(&["exec", pod, "--", "cat", "/www/index.html"])?;
    assert_eq!(exec.trim(), format!("hello from {pod}"));
    let hostname = lab.kubectl(&["exec", pod, "--", "hostname"])?;
    assert_eq!(hostname.trim(), pod);
    // kubectl debug: an ephemeral container joins the pod's network namespace (it reaches
    // the web server on localhost), runs once, and shows in the pod's status.
    let debug = lab.kubectl(&["debug", pod, "--image=busybox", "-c", "probe", "-i", "--", "wget", "-qO-", "http://localhost:8080/"])?;
    assert!(debug.contains(&format!("hello from {pod}")), "kubectl debug: {debug}");
    lab.wait_for(
        Duration::from_secs(10),
        "the ephemeral container's exit in the pod's status",
        &["get", "pod", pod, "-o", "jsonpath={.status.ephemeralContainerStatuses[0].name} {.status.ephemeralContainerStatuses[0].state.terminated.exitCode}"],
        |o| o.trim() == "probe 0",
    )?;
    let logs = lab.kubectl(&["logs", pod, "-c", "probe"])?;
    assert!(logs.contains(&format!("hello from {pod}")), "kubectl logs -c probe: {logs}");
    // --target: the debug container joins the web container's PID namespace and sees its
    // server as PID 1.
    let ps = lab.kubectl(&["debug", pod, "--image=busybox", "-c", "ps", "--target=web", "-i", "--", "ps", "-o", "pid,args"])?;
    assert!(ps.lines().any(|l| l.trim().starts_with("1 ") && l.contains("httpd -f -v -p 8080")), "kubectl debug --target=web: {ps}");

    // A shim shares the binary's pages with the lab and the other shims: as a PIE, each
    // one held a private relocated copy of its read-only data (~1.6 MiB); see
    // deploy/build.rs.
    let shims = shims_private_dirty_kib(lab.dir.path());
    assert!(shims.len() >= 3, "the web pods' shims: {shims:?}");
    assert!(shims.iter().all(|(_, kib)| *kib < 1024), "shims' private dirty memory (pid, kB): {shims:?}");

    // logs -f follows new output.
    let mut follow = lab.kubectl_cmd(&["logs", "-f", pod]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let _ = http_get(&format!("{}:8080", ip.trim()));
    let mut stdout = follow.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut seen = String::new();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains("response:200") {
                let _ = tx.send(seen.clone());
                break;
            }
        }
    });
    let _ = http_get(&format!("{}:8080", ip.trim()));
    let followed = rx.recv_timeout(Duration::from_secs(10));
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(followed.is_ok(), "kubectl logs -f showed the access log line");

    // exec -it, through a pseudo-terminal as a user's terminal would be.
    let mut tty = Command::new("script")
        .args(["-qfec", &format!("kubectl exec -it {pod} -- sh"), "/dev/null"])
        .env("KUBECONFIG", lab.kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        let stdin = tty.stdin.as_mut().context("stdin")?;
        std::thread::sleep(Duration::from_secs(2));
        stdin.write_all(b"echo answer=$((6*7))\n")?;
        std::thread::sleep(Duration::from_millis(500));
        stdin.write_all(b"exit\n")?;
    }
    let out = tty.wait_with_output()?;
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("answer=42"), "exec -it session: {screen:?} {}", String::from_utf8_lossy(&out.stderr));

    // port-forward.
    let local = free_port()?;
    let mut pf = lab
        .kubectl_cmd(&["port-forward", &format!("pod/{pod}"), &format!("{local}:8080")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let forwarded = loop {
        match http_get(&format!("127.0.0.1:{local}")) {
            Ok(b) if b.contains("hello from") => break Ok(b),
            other => {
                if Instant::now() > deadline {
                    break other.and_then(|b| Err(anyhow::anyhow!("unexpected answer {b}")));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    let _ = pf.kill();
    let pf_out = pf.wait_with_output()?;
    let forwarded = forwarded.with_context(|| format!("port-forward: {}", String::from_utf8_lossy(&pf_out.stderr)))?;
    assert!(forwarded.contains(&format!("hello from {pod}")), "{forwarded}");

    // cp (tar through exec).
    let dest = lab.dir.path().join("copied.html");
    lab.kubectl(&["cp", &format!("{pod}:/www/index.html"), &dest.to_string_lossy()])?;
    assert_eq!(std::fs::read_to_string(&dest)?.trim(), format!("hello from {pod}"));
    Ok(())
}

const SERVICE_WORKLOADS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - name: client
    image: busybox
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: ReplicationController
metadata: {name: nginx}
spec:
  replicas: 2
  selector: {app: nginx}
  template:
    metadata: {labels: {app: nginx}}
    spec:
      containers:
      - name: nginx
        image: busybox
        command: ["sh", "-c", "mkdir -p /www && echo nginx on $(hostname) > /www/index.html && exec httpd -f -p 8000 -h /www"]
        ports: [{containerPort: 8000}]
        readinessProbe:
          tcpSocket: {port: 8000}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: db
        image: busybox
        command: ["sleep", "3600"]
"#;

/// A pod publishing its port 80 on the node's `host_port` (`docker run -p`).
fn host_port_pod(host_port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hostport}}
spec:
  containers:
  - name: web
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo hello from hostport > /www/index.html && exec httpd -f -p 80 -h /www"]
    ports: [{{containerPort: 80, hostPort: {host_port}}}]
"#
    )
}

/// The pod that answered an HTTP request to the web Deployment ("hello from POD").
fn answering_pod(body: &str) -> Option<String> {
    body.lines().find_map(|l| l.strip_prefix("hello from ")).map(|p| p.trim().to_string())
}

/// GETs `addr` until a web pod answers (kube-proxy programs a new Service within moments;
/// before that, this machine's gateway may accept the connection and say nothing).
fn wait_for_web(addr: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http_get(addr) {
            Ok(body) if answering_pod(&body).is_some() => return Ok(()),
            other if Instant::now() > deadline => bail!("{addr} did not answer as the web Service: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// An in-pod client of the API, as client-go's and kube-rs's in-cluster configuration
/// finds it: the projected token, CA and namespace at the well-known path, and the
/// apiserver behind the `kubernetes` Service's ClusterIP, whose certificate names it.
/// The pod's ServiceAccount gets what a RoleBinding grants and nothing more. (The
/// requests are made with the stock kubectl on the node, with the pod's files: busybox's
/// own TLS cannot agree a cipher suite with the apiserver.)
fn in_cluster_api(lab: &Lab, pods: &[String]) -> anyhow::Result<()> {
    const SA: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    let namespace = lab.kubectl(&["exec", "client", "--", "cat", &format!("{SA}/namespace")])?;
    assert_eq!(namespace.trim(), "default");
    let ca = lab.kubectl(&["exec", "client", "--", "cat", &format!("{SA}/ca.crt")])?;
    assert!(ca.contains("BEGIN CERTIFICATE"), "ca.crt: {ca}");
    let token = lab.kubectl(&["exec", "client", "--", "cat", &format!("{SA}/token")])?;
    let ca_file = lab.dir.path().join("pod-ca.crt");
    std::fs::write(&ca_file, &ca)?;
    let service_ip = lab.kubectl(&["get", "svc", "kubernetes", "-o", "jsonpath={.spec.clusterIP}"])?;
    let server = format!("https://{}:443", service_ip.trim());
    let as_pod = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        let mut cmd = std::process::Command::new("kubectl");
        cmd.args(["--kubeconfig", "/dev/null", "--server", &server, "--certificate-authority"])
            .arg(&ca_file)
            .args(["--token", token.trim()])
            .args(args);
        Ok(cmd.output()?)
    };
    let text = |o: &std::process::Output| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    // The default account may do nothing yet.
    let refused = as_pod(&["get", "pods", "-n", "default"])?;
    assert!(
        text(&refused).contains(r#"User "system:serviceaccount:default:default" cannot list resource "pods""#),
        "an account without a binding listed pods: {}",
        text(&refused)
    );
    lab.kubectl(&["create", "rolebinding", "client-view", "--clusterrole=view", "--serviceaccount=default:default"])?;
    let mut listed = String::new();
    for _ in 0..50 {
        let out = as_pod(&["get", "pods", "-n", "default", "-o", "name"])?;
        listed = text(&out);
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(pods.iter().all(|p| listed.contains(p.as_str())), "list pods with the pod's token: {listed}");
    let secrets = as_pod(&["get", "secrets", "-n", "default"])?;
    assert!(text(&secrets).contains("Forbidden"), "view lets a pod read secrets: {}", text(&secrets));
    lab.kubectl(&["delete", "rolebinding", "client-view"])?;
    Ok(())
}

/// Services as the tutorials use them: `kubectl expose`, a ClusterIP answering from the
/// node and from pods with every ready backend, names through the cluster DNS, a
/// NodePort on the node's address and on localhost, and the study notes' `expose rc`.
fn services_and_dns(lab: &Lab) -> anyhow::Result<()> {
    lab.kubectl(&["expose", "deployment", "web", "--port=80", "--target-port=8080"])?;
    let cluster_ip = lab.kubectl(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"])?.trim().to_string();
    let vip = format!("{cluster_ip}:80");
    wait_for_web(&vip)?;
    let mut pods = lab.pod_names("app=web")?;
    pods.sort();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..120 {
        let body = http_get(&vip)?;
        *seen.entry(answering_pod(&body).with_context(|| format!("not a web answer: {body}"))?).or_default() += 1;
    }
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), pods, "every ready backend answers through the ClusterIP: {seen:?}");

    lab.apply(SERVICE_WORKLOADS)?;
    lab.wait_for(Duration::from_secs(30), "the client pod Running", &["get", "pod", "client", "-o", "jsonpath={.status.phase}"], |o| o == "Running")?;
    // By short name: the pod's resolv.conf searches default.svc.cluster.local.
    let body = lab.kubectl(&["exec", "client", "--", "wget", "-qO-", "http://web"])?;
    assert!(answering_pod(&body).is_some(), "wget http://web from a pod: {body}");
    let lookup = lab.kubectl_cmd(&["exec", "client", "--", "nslookup", "web.default.svc.cluster.local"]).output()?;
    let lookup = String::from_utf8_lossy(&lookup.stdout).into_owned();
    assert!(lookup.contains(&cluster_ip), "nslookup web.default.svc.cluster.local: {lookup}");
    let many = lab.kubectl(&["exec", "client", "--", "sh", "-c", "for i in $(seq 40); do wget -qO- http://web; done"])?;
    let from_pod: std::collections::BTreeSet<String> = many.lines().filter_map(answering_pod).collect();
    assert_eq!(from_pod.into_iter().collect::<Vec<_>>(), pods, "every backend answers a pod: {many}");
    in_cluster_api(lab, &pods)?;

    lab.kubectl(&["expose", "deployment", "web", "--name=web-np", "--type=NodePort", "--port=80", "--target-port=8080"])?;
    let node_port = lab.kubectl(&["get", "svc", "web-np", "-o", "jsonpath={.spec.ports[0].nodePort}"])?.trim().to_string();
    let node_ip = lab.kubectl(&["get", "nodes", "-o", "jsonpath={.items[0].status.addresses[?(@.type==\"InternalIP\")].address}"])?;
    wait_for_web(&format!("{}:{node_port}", node_ip.trim()))?;
    wait_for_web(&format!("127.0.0.1:{node_port}"))?;

    // type: LoadBalancer gets the node's address as its EXTERNAL-IP (k3s's servicelb),
    // and answers on it at the Service's port.
    let lb_port = free_port()?;
    lab.kubectl(&["expose", "deployment", "web", "--name=web-lb", "--type=LoadBalancer", &format!("--port={lb_port}"), "--target-port=8080"])?;
    let external = lab.wait_for(Duration::from_secs(20), "web-lb's EXTERNAL-IP", &["get", "svc", "web-lb", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"], |o| !o.trim().is_empty())?;
    assert_eq!(external.trim(), node_ip.trim(), "the lab's load balancer address is its node's");
    wait_for_web(&format!("{}:{lb_port}", external.trim()))?;

    lab.wait_for(Duration::from_secs(30), "2 ready nginx replicas", &["get", "rc", "nginx", "-o", "jsonpath={.status.readyReplicas}"], |o| o.trim() == "2")?;
    lab.kubectl(&["expose", "rc", "nginx", "--port=80", "--target-port=8000"])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match lab.kubectl(&["exec", "client", "--", "wget", "-qO-", "http://nginx"]) {
            Ok(body) if body.starts_with("nginx on nginx-") => break,
            other if Instant::now() > deadline => bail!("wget http://nginx from a pod: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
    // A StatefulSet pod's own name under its headless Service.
    lab.wait_for(Duration::from_secs(30), "db-0 Running", &["get", "pod", "db-0", "-o", "jsonpath={.status.phase}"], |o| o == "Running")?;
    let db_ip = lab.kubectl(&["get", "pod", "db-0", "-o", "jsonpath={.status.podIP}"])?.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = lab.kubectl_cmd(&["exec", "client", "--", "nslookup", "db-0.db.default.svc.cluster.local"]).output()?;
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.contains(&db_ip) {
            break;
        }
        if Instant::now() > deadline {
            bail!("nslookup db-0.db.default.svc.cluster.local did not give {db_ip}: {out}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // hostPort: the pod answers on the node's address and on localhost.
    let host_port = free_port()?;
    lab.apply(&host_port_pod(host_port))?;
    lab.wait_for(Duration::from_secs(30), "the hostport pod Running", &["get", "pod", "hostport", "-o", "jsonpath={.status.phase}"], |o| o == "Running")?;
    for addr in [format!("{}:{host_port}", node_ip.trim()), format!("127.0.0.1:{host_port}")] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match http_get(&addr) {
                Ok(body) if body.contains("hello from hostport") => break,
                other if Instant::now() > deadline => bail!("hostPort {addr}: {other:?}"),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    lab.kubectl(&["delete", "svc", "web-np", "web-lb", "nginx", "db"])?;
    lab.kubectl(&["delete", "rc", "nginx"])?;
    lab.kubectl(&["delete", "statefulset", "db"])?;
    lab.kubectl(&["delete", "pod", "client", "hostport", "--grace-period=1"])?;
    Ok(())
}

const RESTARTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  containers:
  - name: sleeper
    image: busybox
    command: ["sleep", "3601"]
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: busybox
    command: ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]
    resources:
      limits: {memory: 24Mi}
"#;

fn restarts_and_oom(lab: &Lab) -> anyhow::Result<()> {
    lab.apply(RESTARTS)?;
    lab.wait_for(Duration::from_secs(20), "sleeper Running", &["get", "pod", "sleeper", "-o", "jsonpath={.status.phase}"], |o| o == "Running")?;
    // Kill the container's process from the node, as a crash would.
    let killed = Command::new("pkill").args(["-9", "-f", "^sleep 3601$"]).status()?;
    assert!(killed.success(), "found the container's process on the node");
    lab.wait_for(
        Duration::from_secs(20),
        "sleeper restarted once and Running",
        &["get", "pod", "sleeper", "-o", "jsonpath={.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].state.running.startedAt}"],
        |o| o.starts_with("1 ") && o.trim().len() > 2,
    )?;
    let last = lab.kubectl(&["get", "pod", "sleeper", "-o", "jsonpath={.status.containerStatuses[0].lastState.terminated.exitCode}"])?;
    assert_eq!(last.trim(), "137", "the killed run is lastState with exit 137");
    let table = lab.kubectl(&["get", "pod", "sleeper"])?;
    assert!(table.lines().nth(1).is_some_and(|l| l.split_whitespace().nth(3) == Some("1")), "RESTARTS shows 1: {table}");

    lab.wait_for(Duration::from_secs(30), "hog OOMKilled", &["get", "pod", "hog"], |o| o.contains("OOMKilled"))?;
    let reason = lab.kubectl(&["get", "pod", "hog", "-o", "jsonpath={.status.containerStatuses[0].state.terminated.reason} {.status.containerStatuses[0].state.terminated.exitCode}"])?;
    assert_eq!(reason.trim(), "OOMKilled 137");
    lab.kubectl(&["delete", "pod", "sleeper", "hog", "--grace-period=1"])?;
    Ok(())
}

const TROUBLE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "echo about to fail; exit 3"]
---
apiVersion: v1
kind: Pod
metadata: {name: nosuchimage}
spec:
  containers:
  - name: c
    image: 127.0.0.1:1/nope/nothing:1.0
---
apiVersion: v1
kind: Pod
metadata: {name: unhealthy}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox
    command: ["sleep", "3600"]
    livenessProbe:
      exec: {command: ["test", "-e", "/tmp/healthy"]}
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 4
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "trap '' TERM; echo ignoring TERM; while true; do sleep 1; done"]
"#;

/// The STATUS column shows what a real cluster shows.
fn statuses_read_like_a_real_cluster(lab: &Lab) -> anyhow::Result<()> {
    lab.apply(TROUBLE)?;
    let column = |pod: &str| -> anyhow::Result<String> {
        let out = lab.kubectl(&["get", "pod", pod, "--no-headers"])?;
        Ok(out.split_whitespace().nth(2).unwrap_or_default().to_string())
    };
    lab.wait_for(Duration::from_secs(30), "crasher in CrashLoopBackOff", &["get", "pod", "crasher", "--no-headers"], |o| o.contains("CrashLoopBackOff"))?;
    let logs = lab.kubectl(&["logs", "crasher", "--previous"])?;
    assert_eq!(logs.trim(), "about to fail");
    lab.wait_for(Duration::from_secs(30), "nosuchimage in ErrImagePull", &["get", "pod", "nosuchimage", "--no-headers"], |o| o.contains("ErrImagePull"))?;
    lab.wait_for(Duration::from_secs(30), "nosuchimage in ImagePullBackOff", &["get", "pod", "nosuchimage", "--no-headers"], |o| o.contains("ImagePullBackOff"))?;
    lab.wait_for(
        Duration::from_secs(30),
        "unhealthy restarted by its failing liveness probe",
        &["get", "pod", "unhealthy", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"],
        |o| o.trim().parse::<u32>().is_ok_and(|n| n >= 1),
    )?;
    let events = lab.kubectl(&["get", "events", "--field-selector", "involvedObject.name=unhealthy"])?;
    assert!(events.contains("Liveness probe failed"), "{events}");
    assert!(events.contains("failed liveness probe, will be restarted"), "{events}");
    lab.wait_for(Duration::from_secs(20), "stubborn Running", &["get", "pod", "stubborn", "-o", "jsonpath={.status.phase}"], |o| o == "Running")?;
    let deleted = Instant::now();
    lab.kubectl(&["delete", "pod", "stubborn", "--wait=false"])?;
    assert_eq!(column("stubborn")?, "Terminating");
    lab.wait_for(Duration::from_secs(20), "stubborn gone after its grace period", &["get", "pods", "-o", "name"], |o| !o.contains("pod/stubborn"))?;
    let took = deleted.elapsed();
    assert!(took >= Duration::from_secs(3), "TERM was ignored, so the kubelet waited out the 4 s grace period before SIGKILL (took {took:?})");
    lab.kubectl(&["delete", "pod", "crasher", "nosuchimage", "unhealthy", "--grace-period=1"])?;
    Ok(())
}

fn job_completes(lab: &Lab) -> anyhow::Result<()> {
    lab.kubectl(&["create", "job", "hello", "--image=busybox", "--", "echo", "hello from a job"])?;
    lab.wait_for(Duration::from_secs(30), "job hello Complete", &["get", "job", "hello", "-o", "jsonpath={.status.succeeded}"], |o| o == "1")?;
    let pods = lab.kubectl(&["get", "pods", "-l", "job-name=hello"])?;
    assert!(pods.contains("Completed"), "{pods}");
    let logs = lab.kubectl(&["logs", "job/hello"])?;
    assert_eq!(logs.trim(), "hello from a job");
    Ok(())
}

/// Kubernetes' "Configure a Security Context" tutorial, and capabilities both ways.
const SECURITY: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: security-context-demo}
spec:
  restartPolicy: Never
  securityContext: {runAsUser: 1000, runAsGroup: 3000, fsGroup: 2000, supplementalGroups: [4000]}
  volumes: [{name: sec-ctx-vol, emptyDir: {}}]
  containers:
  - name: demo
    image: busybox
    command: ["sh", "-c", "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); stat -c 'dir %g %A' /data/demo; echo hi > /data/demo/f && stat -c 'file %u %g' /data/demo/f; touch /rootfs-file 2>/dev/null || echo rootfs read-only; grep NoNewPrivs /proc/self/status"]
    volumeMounts: [{name: sec-ctx-vol, mountPath: /data/demo}]
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true}
  - name: net-admin
    image: busybox
    command: ["sh", "-c", "ip link set lo mtu 1400 && echo mtu set"]
    securityContext: {runAsUser: 0, capabilities: {add: [NET_ADMIN]}}
  - name: no-net-admin
    image: busybox
    command: ["sh", "-c", "ip link set lo mtu 1300 || echo refused"]
    securityContext: {runAsUser: 0}
  - name: no-caps
    image: busybox
    command: ["sh", "-c", "grep CapEff /proc/self/status"]
    securityContext: {runAsUser: 0, capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: Pod
metadata: {name: nonroot}
spec:
  containers:
  - name: app
    image: busybox
    command: ["sleep", "3600"]
    securityContext: {runAsNonRoot: true}
"#;

fn security_contexts(lab: &Lab) -> anyhow::Result<()> {
    lab.apply(SECURITY)?;
    lab.wait_for(Duration::from_secs(30), "the security context demo to finish", &["get", "pod", "security-context-demo", "-o", "jsonpath={.status.phase}"], |o| o == "Succeeded")?;
    let logs = lab.kubectl(&["logs", "security-context-demo", "-c", "demo"])?;
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.first().is_some_and(|l| l.starts_with("uid=1000 gid=3000 groups=") && l.contains(" 2000") && l.contains(" 4000")), "{logs}");
    // fsGroup: the emptyDir belongs to the group, and what is written there too.
    assert_eq!(lines.get(1..).unwrap_or_default(), ["dir 2000 drwxrwsrwx", "file 1000 2000", "rootfs read-only", "NoNewPrivs:\t1"], "{logs}");
    assert_eq!(lab.kubectl(&["logs", "security-context-demo", "-c", "net-admin"])?.trim(), "mtu set");
    assert!(lab.kubectl(&["logs", "security-context-demo", "-c", "no-net-admin"])?.contains("refused"));
    assert_eq!(lab.kubectl(&["logs", "security-context-demo", "-c", "no-caps"])?.trim(), "CapEff:\t0000000000000000");
    // runAsNonRoot with an image that runs as root: refused before it starts.
    let waiting = lab.wait_for(Duration::from_secs(30), "nonroot's CreateContainerConfigError", &["get", "pod", "nonroot", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}"], |o| o.starts_with("CreateContainerConfigError"))?;
    assert!(waiting.contains("container has runAsNonRoot and image will run as root (pod: \"nonroot_default("), "{waiting}");
    lab.kubectl(&["delete", "pod", "security-context-demo", "nonroot", "--grace-period=1"])?;
    Ok(())
}

/// Name-based virtual hosting and path routing, as the Kubernetes Ingress docs show
/// them, through the lab's ingress controller (the default class).
const INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec:
  rules:
  - host: web.lab.local
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
  - host: "*.apps.lab.local"
    http:
      paths:
      - {path: /gone, pathType: Prefix, backend: {service: {name: not-there, port: {number: 80}}}}
      - {path: /, pathType: Exact, backend: {service: {name: web, port: {number: 80}}}}
"#;

/// A backend that switches protocols when asked and then echoes what it is sent, behind
/// an Ingress: what a WebSocket server does, with busybox.
const ECHO_UPGRADE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: echo, labels: {app: echo}}
spec:
  containers:
  - name: echo
    image: busybox
    command: ["nc", "-ll", "-p", "9000", "-e", "sh", "-c", "printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n'; exec cat"]
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 9000}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: echo}
spec:
  rules:
  - host: echo.lab.local
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}
"#;

/// An upgrade through the ingress: the 101 comes back, then the connection carries
/// whatever the two ends say.
fn ingress_passes_upgrades(lab: &Lab, at: &str) -> anyhow::Result<()> {
    lab.apply(ECHO_UPGRADE)?;
    lab.wait_for(Duration::from_secs(30), "the echo pod Ready", &["get", "pod", "echo", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"], |o| o == "True")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut stream = std::net::TcpStream::connect(at)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /chat HTTP/1.1\r\nHost: echo.lab.local\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&seen).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            // The endpoint may not be in the controller's cache yet (503).
            ensure_before(deadline, &format!("a 101 through the ingress: {head}"))?;
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        assert!(head.to_ascii_lowercase().contains("upgrade: echo"), "{head}");
        stream.write_all(b"ping through the ingress\n")?;
        let mut echoed = String::new();
        while !echoed.contains("ping through the ingress") {
            let n = stream.read(&mut buf)?;
            assert!(n > 0, "the upgraded connection closed before the echo: {echoed}");
            echoed.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        break;
    }
    lab.kubectl(&["delete", "ingress,svc,pod", "echo", "--grace-period=1"])?;
    Ok(())
}

fn ensure_before(deadline: Instant, what: &str) -> anyhow::Result<()> {
    if Instant::now() > deadline {
        bail!("timed out waiting for {what}");
    }
    Ok(())
}

fn ingress_routes_to_services(lab: &Lab) -> anyhow::Result<()> {
    lab.apply(INGRESS)?;
    let node_ip = lab.kubectl(&["get", "nodes", "-o", "jsonpath={.items[0].status.addresses[?(@.type==\"InternalIP\")].address}"])?;
    let address = lab.wait_for(Duration::from_secs(20), "the ingress's ADDRESS", &["get", "ingress", "web", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"], |o| !o.trim().is_empty())?;
    assert_eq!(address.trim(), node_ip.trim(), "the ingress is reached at the node's address");
    let table = lab.kubectl(&["get", "ingress", "web"])?;
    let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row.get(..5).unwrap_or_default(), ["web", "rkube", "web.lab.local,*.apps.lab.local", node_ip.trim(), "80"], "kubectl get ingress: {table}");
    let at = format!("{}:{}", node_ip.trim(), lab.ingress_port);
    let mut pods = lab.pod_names("app=web")?;
    pods.sort();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let answer = http_get_host(&at, "web.lab.local", "/index.html")?;
        seen.insert(answering_pod(&answer).with_context(|| format!("not a web answer through the ingress: {answer}"))?);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), pods, "the ingress spreads requests over every ready pod");
    let status = |answer: &str| answer.lines().next().unwrap_or_default().to_string();
    let wildcard = http_get_host(&at, "shop.apps.lab.local:80", "/")?;
    assert!(answering_pod(&wildcard).is_some(), "a wildcard host: {wildcard}");
    let exact = http_get_host(&at, "shop.apps.lab.local", "/other")?;
    assert!(status(&exact).contains(" 404 "), "Exact / does not match /other: {exact}");
    let gone = http_get_host(&at, "shop.apps.lab.local", "/gone/x")?;
    assert!(status(&gone).contains(" 503 ") && gone.contains(r#"service "default/not-there" not found"#), "a missing backend: {gone}");
    let unknown = http_get_host(&at, "nobody.example", "/")?;
    assert!(status(&unknown).contains(" 404 "), "no rule for the host: {unknown}");
    lab.kubectl(&["delete", "ingress", "web"])?;
    ingress_passes_upgrades(lab, &at)?;
    ingress_terminates_tls(lab, node_ip.trim())
}

/// A GET over TLS with `sni` as the server name, trusting only `ca_der`: the whole
/// answer, or the handshake's error.
fn https_get(addr: &str, sni: &str, ca_der: &[u8]) -> anyhow::Result<String> {
    let config = component_base::tls::client_config(&[ca_der.to_vec()], None, &["http/1.1"])?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string())?;
    let connection = rustls::ClientConnection::new(config, name)?;
    let tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    stream.write_all(format!("GET / HTTP/1.0\r\nHost: {sni}\r\n\r\n").as_bytes())?;
    let mut out = Vec::new();
    match stream.read_to_end(&mut out) {
        Ok(_) => {}
        // A server that closes without TLS's close_notify, after answering in full.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

const SECURE_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: secure}
spec:
  tls:
  - hosts: [secure.lab.local]
    secretName: secure-tls
  rules:
  - host: secure.lab.local
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
"#;

/// TLS termination with a certificate from a `kubernetes.io/tls` Secret, picked by the
/// name the client asks for.
fn ingress_terminates_tls(lab: &Lab, node_ip: &str) -> anyhow::Result<()> {
    use component_base::pki::{pem_certificates, CertificateAuthority, Usage};
    let ca = CertificateAuthority::generate("lab test CA")?;
    let pair = ca.issue("secure.lab.local", None, &["secure.lab.local".to_string()], &[], Usage::Server)?;
    let (cert, key) = (lab.dir.path().join("secure.crt"), lab.dir.path().join("secure.key"));
    std::fs::write(&cert, &pair.cert_pem)?;
    std::fs::write(&key, &pair.key_pem)?;
    lab.kubectl(&["create", "secret", "tls", "secure-tls", &format!("--cert={}", cert.display()), &format!("--key={}", key.display())])?;
    lab.apply(SECURE_INGRESS)?;
    let secret = lab.kubectl(&["get", "ingress", "secure", "-o", "jsonpath={.spec.tls[0].secretName}"])?;
    assert_eq!(secret.trim(), "secure-tls");
    let table = lab.kubectl(&["get", "ingress", "secure"])?;
    assert!(table.lines().nth(1).is_some_and(|l| l.split_whitespace().nth(4) == Some("80,")), "PORTS 80, 443: {table}");
    let ca_der = pem_certificates(ca.cert_pem()).into_iter().next().context("the CA's DER")?;
    let at = format!("{node_ip}:{}", lab.ingress_https_port);
    let answer = https_get(&at, "secure.lab.local", &ca_der)?;
    assert!(answering_pod(&answer).is_some(), "a web pod over HTTPS: {answer}");
    // Another name gets the controller's own certificate, which the client does not trust.
    let other = https_get(&at, "other.lab.local", &ca_der);
    assert!(other.as_ref().is_err_and(|e| e.to_string().contains("certificate")), "another name: {other:?}");
    lab.kubectl(&["delete", "ingress", "secure"])?;
    lab.kubectl(&["delete", "secret", "secure-tls"])?;
    Ok(())
}

/// Kubernetes' seccomp tutorial, on rkube: profiles under the kubelet's
/// `<root-dir>/seccomp` (`<data-dir>/agent/seccomp` in a lab).
const SECCOMP: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: seccomp-default}
spec:
  securityContext: {seccompProfile: {type: RuntimeDefault}}
  containers:
  - {name: app, image: busybox, command: ["sleep", "3600"]}
  - name: audited
    image: busybox
    command: ["sleep", "3600"]
    securityContext: {seccompProfile: {type: Localhost, localhostProfile: profiles/audit.json}}
---
apiVersion: v1
kind: Pod
metadata: {name: violation-pod}
spec:
  restartPolicy: Never
  securityContext: {seccompProfile: {type: Localhost, localhostProfile: profiles/violation.json}}
  containers:
  - {name: app, image: busybox, command: ["echo", "never printed"]}
---
apiVersion: v1
kind: Pod
metadata: {name: missing-profile}
spec:
  securityContext: {seccompProfile: {type: Localhost, localhostProfile: profiles/missing.json}}
  containers:
  - {name: app, image: busybox, command: ["sleep", "3600"]}
"#;

fn seccomp_profiles(lab: &Lab) -> anyhow::Result<()> {
    let profiles = lab.dir.path().join("agent/seccomp/profiles");
    std::fs::create_dir_all(&profiles)?;
    std::fs::write(profiles.join("audit.json"), r#"{"defaultAction": "SCMP_ACT_LOG"}"#)?;
    std::fs::write(profiles.join("violation.json"), r#"{"defaultAction": "SCMP_ACT_ERRNO"}"#)?;
    lab.apply(SECCOMP)?;
    lab.wait_for(Duration::from_secs(30), "seccomp-default Running", &["get", "pod", "seccomp-default", "-o", "jsonpath={.status.phase}"], |o| o == "Running")?;
    // The container and what kubectl exec runs in it are filtered; a new namespace
    // without CAP_SYS_ADMIN is refused. The audit profile filters and refuses nothing.
    let probe = "awk '/^Seccomp:/ {print \"mode\", $2}' /proc/1/status /proc/self/status; unshare -U true && echo unshared || echo refused";
    let out = lab.kubectl(&["exec", "seccomp-default", "-c", "app", "--", "sh", "-c", probe])?;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["mode 2", "mode 2", "refused"], "{out}");
    let out = lab.kubectl(&["exec", "seccomp-default", "-c", "audited", "--", "sh", "-c", probe])?;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["mode 2", "mode 2", "unshared"], "{out}");
    // A profile that refuses every call: the container never runs its command.
    let ended = lab.wait_for(Duration::from_secs(30), "violation-pod to fail", &["get", "pod", "violation-pod", "-o", "jsonpath={.status.phase} {.status.containerStatuses[0].state.terminated.reason}"], |o| o.starts_with("Failed"))?;
    assert_eq!(ended, "Failed StartError", "{ended}");
    let message = lab.kubectl(&["get", "pod", "violation-pod", "-o", "jsonpath={.status.containerStatuses[0].state.terminated.message}"])?;
    assert!(message.contains("profiles/violation.json\" refused calls"), "{message}");
    assert!(!lab.kubectl(&["logs", "violation-pod"]).unwrap_or_default().contains("never printed"));
    // A profile that is not on the node: the container is not created, and says why.
    let waiting = lab.wait_for(Duration::from_secs(30), "missing-profile's CreateContainerError", &["get", "pod", "missing-profile", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}"], |o| o.starts_with("CreateContainerError"))?;
    assert!(waiting.contains("cannot load seccomp profile") && waiting.contains("agent/seccomp/profiles/missing.json"), "{waiting}");
    lab.kubectl(&["delete", "pod", "seccomp-default", "violation-pod", "missing-profile", "--grace-period=1"])?;
    Ok(())
}

/// Waits for `child` to end and collects its output; kills it (by its pid) if it takes
/// longer than `timeout`.
fn finish_within(child: std::process::Child, timeout: Duration, what: &str) -> anyhow::Result<Output> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok(out?),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            let out = rx.recv_timeout(Duration::from_secs(10)).ok().and_then(Result::ok);
            let text = out.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))).unwrap_or_default();
            bail!("{what} did not finish within {timeout:?}: {text}")
        }
    }
}

fn pod_is_gone(lab: &Lab, name: &str) -> anyhow::Result<()> {
    lab.wait_for(Duration::from_secs(30), &format!("pod {name} deleted"), &["get", "pods", "-o", "jsonpath={.items[*].metadata.name}"], |o| {
        !o.split_whitespace().any(|n| n == name)
    })?;
    Ok(())
}

/// `kubectl run -i --rm` (stdin piped, stdinOnce) and `kubectl run -it --rm` (a shell on
/// a terminal) attach to the container's own stdio, then delete the pod.
fn run_and_attach(lab: &Lab) -> anyhow::Result<()> {
    let mut child = lab
        .kubectl_cmd(&["run", "-i", "--rm", "attachme", "--image=busybox", "--restart=Never", "--", "sh", "-c", "read line; echo got:$line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(b"hello\n")?;
    let out = finish_within(child, Duration::from_secs(90), "kubectl run -i --rm")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl run -i failed: {stdout}{stderr}");
    assert!(stdout.contains("got:hello"), "kubectl run -i output: {stdout:?} {stderr:?}");
    pod_is_gone(lab, "attachme")?;

    // The same with rkube's own kubectl, which also passes the container's exit code on.
    let ours = Path::new(env!("CARGO_BIN_EXE_rkube")).with_file_name("kubectl");
    assert!(ours.is_file(), "no rkube kubectl at {} (cargo build --workspace --all-targets)", ours.display());
    let mut child = Command::new(&ours)
        .args(["run", "-i", "--rm", "attachours", "--image=busybox", "--restart=Never", "--", "sh", "-c", "read line; echo got:$line; exit 3"])
        .env("KUBECONFIG", lab.kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(b"hello\n")?;
    let out = finish_within(child, Duration::from_secs(90), "rkube's kubectl run -i --rm")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "rkube's kubectl run -i: {stdout}{stderr}");
    assert!(stdout.contains("got:hello") && stdout.contains("pod \"attachours\" deleted"), "rkube's kubectl run -i output: {stdout:?} {stderr:?}");
    assert!(stderr.contains("pod default/attachours terminated (Error)"), "rkube's kubectl run -i: {stderr:?}");
    pod_is_gone(lab, "attachours")?;

    // run -it, through a pseudo-terminal as a user's terminal would be.
    let mut tty = Command::new("script")
        .args(["-qfec", "kubectl run -it --rm ttyme --image=busybox --restart=Never -- sh", "/dev/null"])
        .env("KUBECONFIG", lab.kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut screen_out = tty.stdout.take().context("stdout")?;
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = std::thread::spawn({
        let screen = screen.clone();
        move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = screen_out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = screen.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        }
    });
    let shown = |text: &str, timeout: Duration| {
        let deadline = Instant::now() + timeout;
        loop {
            let now = screen.lock().map(|s| s.clone()).unwrap_or_default();
            if now.contains(text) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(anyhow::anyhow!("{text:?} not shown within {timeout:?}; screen: {now:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut stdin = tty.stdin.take().context("stdin")?;
    let typed = shown("try pressing enter", Duration::from_secs(60)).and_then(|()| {
        stdin.write_all(b"echo $((6*7))\n")?;
        shown("\n42\r\n", Duration::from_secs(20))?;
        stdin.write_all(b"exit\n")?;
        Ok(())
    });
    let out = finish_within(tty, Duration::from_secs(60), "kubectl run -it --rm");
    drop(stdin);
    let _ = reader.join();
    let screen = screen.lock().map(|s| s.clone()).unwrap_or_default();
    typed?;
    let out = out?;
    assert!(out.status.success(), "kubectl run -it failed: {screen:?} {}", String::from_utf8_lossy(&out.stderr));
    pod_is_gone(lab, "ttyme")?;
    Ok(())
}

const CONFIG: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {color: blue, "app.conf": "port=8080\n"}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cr3t}
---
apiVersion: v1
kind: Pod
metadata: {name: configured}
spec:
  restartPolicy: Never
  containers:
  - name: show
    image: busybox
    command:
    - sh
    - -c
    - |
      echo color=$COLOR pw=$password; cat /etc/settings/app.conf /etc/creds/password; echo; echo pod=$MY_POD
      echo memory-backed: $(awk '$3 == "tmpfs" && ($2 == "/etc/creds" || $2 == "/scratch" || $2 == "/var/run/secrets/kubernetes.io/serviceaccount") {print $2}' /proc/mounts | sort)
      echo scratch mode=$(stat -c %a /scratch)
    env:
    - {name: COLOR, valueFrom: {configMapKeyRef: {name: settings, key: color}}}
    - {name: MY_POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    envFrom:
    - secretRef: {name: creds}
      prefix: ""
    volumeMounts:
    - {name: settings, mountPath: /etc/settings}
    - {name: creds, mountPath: /etc/creds, readOnly: true}
    - {name: scratch, mountPath: /scratch}
  volumes:
  - {name: settings, configMap: {name: settings}}
  - {name: creds, secret: {secretName: creds}}
  - {name: scratch, emptyDir: {medium: Memory, sizeLimit: 16Mi}}
"#;

fn config_and_secrets(lab: &Lab) -> anyhow::Result<()> {
    lab.apply(CONFIG)?;
    lab.wait_for(Duration::from_secs(30), "configured Succeeded", &["get", "pod", "configured", "-o", "jsonpath={.status.phase}"], |o| o == "Succeeded")?;
    let logs = lab.kubectl(&["logs", "configured"])?;
    // Secrets and the ServiceAccount token are on tmpfs, never on the node's disk; a
    // `medium: Memory` emptyDir is a tmpfs with tmpfs's own mode, sticky as /tmp's.
    let expected = "color=blue pw=s3cr3t\nport=8080\ns3cr3t\npod=configured\n\
                    memory-backed: /etc/creds /scratch /var/run/secrets/kubernetes.io/serviceaccount\n\
                    scratch mode=1777";
    assert_eq!(logs.trim(), expected);
    Ok(())
}

const SIDECAR: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: duo}
spec:
  shareProcessNamespace: true
  containers:
  - name: server
    image: busybox
    command: ["sh", "-c", "mkdir /www && echo from-the-server > /www/index.html && exec httpd -f -p 9090 -h /www"]
  - name: client
    image: busybox
    command: ["sh", "-c", "while true; do wget -qO- http://127.0.0.1:9090/ && sleep 600; sleep 0.2; done"]
"#;

fn two_containers_share_localhost_and_processes(lab: &Lab) -> anyhow::Result<()> {
    lab.apply(SIDECAR)?;
    lab.wait_for(Duration::from_secs(30), "the client container read from the server over localhost", &["logs", "duo", "-c", "client"], |o| {
        o.contains("from-the-server")
    })?;
    // shareProcessNamespace, as in Kubernetes' tutorial: the pause process is PID 1, the
    // client sees the server's processes and reaches its files through /proc.
    let ps = lab.kubectl(&["exec", "duo", "-c", "client", "--", "ps", "-o", "pid,args"])?;
    let lines: Vec<&str> = ps.lines().map(str::trim).collect();
    assert!(lines.get(1).is_some_and(|l| l.starts_with("1 ") && l.contains("pause")), "PID 1 is not the pause process: {ps}");
    let httpd = lines.iter().find(|l| l.ends_with("httpd -f -p 9090 -h /www")).and_then(|l| l.split_whitespace().next()).with_context(|| format!("no server process in the client's ps: {ps}"))?;
    let page = lab.kubectl(&["exec", "duo", "-c", "client", "--", "cat", &format!("/proc/{httpd}/root/www/index.html")])?;
    assert_eq!(page.trim(), "from-the-server");
    lab.kubectl(&["delete", "pod", "duo", "--grace-period=1"])?;
    Ok(())
}

const PVC: &str = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
"#;

fn writer(name: &str, command: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: busybox
    command: ["sh", "-c", "{command}"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - {{name: data, persistentVolumeClaim: {{claimName: data}}}}
"#
    )
}

fn pvc_outlives_its_pod(lab: &Lab) -> anyhow::Result<()> {
    lab.apply(PVC)?;
    lab.apply(&writer("writer", "echo kept-across-pods > /data/note"))?;
    lab.wait_for(Duration::from_secs(30), "writer Succeeded", &["get", "pod", "writer", "-o", "jsonpath={.status.phase}"], |o| o == "Succeeded")?;
    let pvc = lab.kubectl(&["get", "pvc", "data", "-o", "jsonpath={.status.phase} {.spec.storageClassName}"])?;
    assert_eq!(pvc.trim(), "Bound local-path");
    // `kubectl describe pvc` says who made the volume, as on k3s.
    lab.wait_for(Duration::from_secs(10), "the provisioner's events on the claim", &["describe", "pvc", "data"], |o| {
        let has = |reason: &str, message: &str| o.lines().any(|l| l.contains(reason) && l.contains("rancher.io/local-path") && l.contains(message));
        has("Provisioning", "External provisioner is provisioning volume for claim \"default/data\"") && has("ProvisioningSucceeded", "Successfully provisioned volume pvc-")
    })?;
    lab.kubectl(&["delete", "pod", "writer"])?;
    lab.apply(&writer("reader", "cat /data/note"))?;
    lab.wait_for(Duration::from_secs(30), "reader Succeeded", &["get", "pod", "reader", "-o", "jsonpath={.status.phase}"], |o| o == "Succeeded")?;
    assert_eq!(lab.kubectl(&["logs", "reader"])?.trim(), "kept-across-pods");
    lab.kubectl(&["delete", "pod", "reader"])?;
    Ok(())
}

/// `kubectl drain` under a PodDisruptionBudget: on a one-node lab the evicted pod's
/// replacement has nowhere to go, so the budget stops the drain after one eviction.
fn drain_respects_a_disruption_budget(lab: &Lab) -> anyhow::Result<()> {
    let node = lab.kubectl(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"])?;
    lab.kubectl(&["create", "pdb", "web", "--selector=app=web", "--min-available=2"])?;
    lab.wait_for(Duration::from_secs(20), "the web budget to allow one disruption", &["get", "pdb", "web", "-o", "jsonpath={.status.disruptionsAllowed}"], |o| o == "1")?;
    let before = lab.pod_names("app=web")?;
    let out = lab.kubectl_cmd(&["drain", &node, "--pod-selector=app=web", "--ignore-daemonsets", "--grace-period=1", "--timeout=12s"]).output()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the drain got past the budget:\n{stdout}{stderr}");
    assert!(stdout.contains(&format!("node/{node} cordoned")), "{stdout}");
    // One eviction admitted (with the drain's grace period), then the budget refuses the
    // others.
    let kept = lab.kubectl(&["get", "pods", "-l", "app=web", "-o", "jsonpath={range .items[?(@.status.phase==\"Running\")]}{.metadata.name} {.metadata.deletionTimestamp}{\"\\n\"}{end}"])?;
    let kept: Vec<&str> = kept.lines().filter(|l| before.iter().any(|p| l.trim() == p.as_str())).collect();
    assert_eq!(kept.len(), 2, "one eviction, then the budget: {kept:?}\n{stdout}{stderr}");
    assert!(stderr.contains("Cannot evict pod as it would violate the pod's disruption budget."), "{stderr}");
    let budget = lab.kubectl(&["get", "pdb", "web", "-o", "jsonpath={.status.currentHealthy} {.status.desiredHealthy} {.status.disruptionsAllowed}"])?;
    assert_eq!(budget, "2 2 0");
    let pending = lab.kubectl(&["get", "pods", "-l", "app=web", "--field-selector=status.phase=Pending", "-o", "name"])?;
    assert_eq!(pending.lines().count(), 1, "the replacement waits for a schedulable node: {pending}");
    lab.kubectl(&["uncordon", &node])?;
    lab.wait_for(Duration::from_secs(20), "3 ready web replicas after uncordon", &["get", "deploy", "web", "-o", "jsonpath={.status.readyReplicas}"], |o| o.trim() == "3")?;
    lab.wait_for(Duration::from_secs(20), "the budget to allow one disruption again", &["get", "pdb", "web", "-o", "jsonpath={.status.disruptionsAllowed}"], |o| o == "1")?;
    lab.wait_for(Duration::from_secs(20), "the evicted pod gone", &["get", "pods", "-l", "app=web", "-o", "name"], |o| o.lines().count() == 3)?;
    lab.kubectl(&["delete", "pdb", "web"])?;
    Ok(())
}

fn containers_survive_a_lab_restart(lab: &Lab) -> anyhow::Result<()> {
    let query = ["get", "pods", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.containerStatuses[0].containerID}/{.status.containerStatuses[0].restartCount} {end}"];
    let before = lab.kubectl(&query)?;
    let pid: i32 = std::fs::read_to_string(lab.dir.path().join("rkube.pid"))?.trim().parse()?;
    // The whole lab (apiserver, controllers, scheduler, kubelet) dies at once.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The containers run on without it.
    let pods = lab.pod_names("app=web").unwrap_or_default();
    assert!(pods.is_empty(), "the apiserver is down, so nothing answers");
    let up = lab.rkube(&["up", "--detach"])?;
    if !up.status.success() {
        bail!("rkube up after a kill failed: {}", String::from_utf8_lossy(&up.stderr));
    }
    lab.wait_for(Duration::from_secs(20), "3 ready web replicas again", &["get", "deploy", "web", "-o", "jsonpath={.status.readyReplicas}"], |o| o.trim() == "3")?;
    // Give the kubelet a few relists to (wrongly) restart anything.
    std::thread::sleep(Duration::from_secs(3));
    let after = lab.kubectl(&query)?;
    assert_eq!(before, after, "the same containers, not restarted");
    Ok(())
}

/// Two labs with different directories and ports run side by side: each has its own
/// node, pod network, bridge and cgroups, and taking one down leaves the other running.
#[test]
fn two_labs_side_by_side_needs_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return skip_or_fail("the lab needs root (namespaces, cgroups, mounts)");
    }
    if Command::new("kubectl").arg("version").arg("--client").output().is_err() {
        return skip_or_fail("kubectl is not on PATH");
    }
    let a = Lab { dir: tempfile::Builder::new().prefix("rkube-lab-a").tempdir()?, port: free_port()?, ingress_port: free_port()?, ingress_https_port: free_port()? };
    let b = Lab { dir: tempfile::Builder::new().prefix("rkube-lab-b").tempdir()?, port: free_port()?, ingress_port: free_port()?, ingress_https_port: free_port()? };
    let result = (|| -> anyhow::Result<()> {
        for lab in [&a, &b] {
            let up = lab.rkube(&["up", "--detach", "--port", &lab.port.to_string(), "--ingress-port", &lab.ingress_port.to_string(), "--ingress-https-port", &lab.ingress_https_port.to_string()])?;
            if !up.status.success() {
                bail!("rkube up failed: {}", String::from_utf8_lossy(&up.stderr));
            }
            lab.kubectl(&["run", "solo", "--image=busybox", "--", "sleep", "3600"])?;
        }
        let mut ips = Vec::new();
        for lab in [&a, &b] {
            lab.wait_for(Duration::from_secs(20), "solo Running", &["get", "pod", "solo", "-o", "jsonpath={.status.phase}"], |o| o == "Running")?;
            ips.push(lab.kubectl(&["get", "pod", "solo", "-o", "jsonpath={.status.podIP}"])?);
        }
        let net = |ip: &str| ip.split('.').take(2).collect::<Vec<_>>().join(".");
        assert_ne!(net(&ips[0]), net(&ips[1]), "the two labs' pods are in different networks: {ips:?}");
        let down = a.rkube(&["down"])?;
        assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
        let still = b.kubectl(&["get", "pod", "solo", "-o", "jsonpath={.status.phase}"])?;
        assert_eq!(still, "Running", "lab b is untouched by lab a's down");
        let exec = b.kubectl(&["exec", "solo", "--", "echo", "still here"])?;
        assert_eq!(exec.trim(), "still here");
        // Lab a's Service rules went with it; lab b's still answer (its DNS, through its
        // own kube-dns ClusterIP).
        let bridge = |lab: &Lab| -> anyhow::Result<String> {
            let settings: serde_json::Value = serde_json::from_slice(&std::fs::read(lab.dir.path().join("lab.json"))?)?;
            Ok(settings["bridgeName"].as_str().unwrap_or_default().to_string())
        };
        let tables = String::from_utf8_lossy(&Command::new("nft").args(["list", "tables"]).output()?.stdout).into_owned();
        assert!(!tables.contains(&bridge(&a)?), "lab a's nftables tables remain after its down: {tables}");
        assert!(tables.contains(&bridge(&b)?), "lab b's nftables tables are there: {tables}");
        let dns_ip = b.kubectl(&["get", "svc", "-n", "kube-system", "kube-dns", "-o", "jsonpath={.spec.clusterIP}"])?;
        let lookup = b.kubectl_cmd(&["exec", "solo", "--", "nslookup", "kube-dns.kube-system.svc.cluster.local"]).output()?;
        let lookup = String::from_utf8_lossy(&lookup.stdout).into_owned();
        assert!(lookup.contains(dns_ip.trim()), "lab b resolves through its own DNS: {lookup}");
        Ok(())
    })();
    let _ = a.rkube(&["down"]);
    let _ = b.rkube(&["down"]);
    result
}
