//! Privileged test of pod sandboxes on the real kernel: namespaces kept by bind mounts, a
//! bridge and veths, pod-to-pod traffic, `connect` into a pod's loopback, restart
//! recovery, and a teardown that leaves no mount, veth or bridge behind. Needs root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use futures::FutureExt;
use kubelet::runtime::sandbox::{host_veth_name, Ipv4Cidr, SandboxManager, SandboxOptions};
use kubelet::runtime::{DnsConfig, PodMeta, SandboxConfig, SandboxState, SandboxStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUSYBOX: &str = "/bin/busybox";

/// True when the test may run; false (after saying so) when it must be skipped.
fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "sandbox_linux needs root, and CI must run it"
    );
    println!("skipped: needs root");
    false
}

fn config(name: &str, host_network: bool) -> SandboxConfig {
    SandboxConfig {
        pod: PodMeta {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
        },
        hostname: name.into(),
        host_aliases: vec![("10.1.2.3".into(), vec!["db.example".into()])],
        dns: DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        },
        host_network,
        port_mappings: vec![],
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        cgroup_parent: String::new(),
        share_process_namespace: false,
    }
}

fn run(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    Ok(output)
}

/// Runs a command and requires success; returns its stdout.
fn run_ok(command: &mut Command) -> anyhow::Result<String> {
    let output = run(command)?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn link_exists(name: &str) -> anyhow::Result<bool> {
    Ok(run(Command::new("ip").args(["link", "show", "dev", name]))?
        .status
        .success())
}

/// Mount points at or under `root`, from /proc/self/mountinfo.
fn mounts_under(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(root))
        .collect())
}

fn nsenter(status: &SandboxStatus, kinds: &[&str]) -> anyhow::Result<Command> {
    let mut command = Command::new("nsenter");
    for kind in kinds {
        let path = status
            .namespaces
            .get(*kind)
            .with_context(|| format!("sandbox {} has no {kind} ns", status.id))?;
        command.arg(format!("--{kind}={}", path.display()));
    }
    command.arg("--");
    Ok(command)
}

/// `nsenter` into the sandbox's namespaces running a busybox applet.
fn busybox_in(status: &SandboxStatus, kinds: &[&str]) -> anyhow::Result<Command> {
    let mut command = nsenter(status, kinds)?;
    command.arg(BUSYBOX);
    Ok(command)
}

/// Kills a helper process when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Last-resort cleanup if the manager's teardown did not run or failed: unmount whatever
/// is left under the root and delete the bridge (veths die with their namespaces).
struct Guard {
    root: PathBuf,
    bridge: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(points) = mounts_under(&self.root) {
            for point in points.iter().rev() {
                let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        if link_exists(&self.bridge).unwrap_or(false) {
            let _ = Command::new("ip")
                .args(["link", "del", "dev", &self.bridge])
                .status();
        }
    }
}

struct Lab {
    root: PathBuf,
    bridge: String,
    cidr: Ipv4Cidr,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_on_a_real_bridge() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    let temp = tempfile::tempdir()?;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let octet = u8::from_str_radix(&tag[..2], 16)?;
    let lab = Lab {
        root: temp.path().to_path_buf(),
        bridge: format!("rkt{}", &tag[..8]),
        cidr: format!("10.244.{octet}.0/24").parse()?,
    };
    let _guard = Guard {
        root: lab.root.clone(),
        bridge: lab.bridge.clone(),
    };
    let options = SandboxOptions::new(&lab.root, &lab.bridge, Ipv4Addr::new(192, 0, 2, 2));
    let manager = SandboxManager::new(options.clone())?;

    let outcome = std::panic::AssertUnwindSafe(scenario(&lab, &manager, &options))
        .catch_unwind()
        .await;
    let teardown = manager.teardown().await;
    let veth_b = host_veth_name(&lab.bridge, "sb-b");
    let leftovers = (
        mounts_under(&lab.root)?,
        link_exists(&lab.bridge)?,
        link_exists(&veth_b)?,
    );
    match outcome {
        Ok(result) => result?,
        Err(panic) => std::panic::resume_unwind(panic),
    }
    teardown.context("teardown")?;
    ensure!(
        leftovers.0.is_empty(),
        "mounts left after teardown: {:?}",
        leftovers.0
    );
    ensure!(!leftovers.1, "bridge {} left after teardown", lab.bridge);
    ensure!(!leftovers.2, "veth {veth_b} left after teardown");
    ensure!(
        std::fs::read_dir(lab.root.join("sandboxes"))?
            .next()
            .is_none(),
        "sandbox directories left"
    );
    Ok(())
}

async fn scenario(
    lab: &Lab,
    manager: &SandboxManager,
    options: &SandboxOptions,
) -> anyhow::Result<()> {
    // No podCIDR yet: a clear refusal, nothing left behind.
    let refused = manager.create("sb-early", &config("early", false)).await;
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    ensure!(
        message.contains("network not ready: no podCIDR yet"),
        "got {message:?}"
    );
    ensure!(!lab.root.join("sandboxes/sb-early").exists());

    manager.set_pod_cidr(&lab.cidr.to_string()).await?;
    ensure!(
        link_exists(&lab.bridge)?,
        "bridge {} not created",
        lab.bridge
    );
    let bridge_addr =
        run_ok(Command::new("ip").args(["-4", "-o", "addr", "show", "dev", &lab.bridge]))?;
    ensure!(
        bridge_addr.contains(&format!("{}/24", lab.cidr.gateway())),
        "bridge address: {bridge_addr}"
    );
    ensure!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?.trim() == "1");

    let a = manager.create("sb-a", &config("pod-a", false)).await?;
    let b = manager.create("sb-b", &config("pod-b", false)).await?;
    let ip = |s: &SandboxStatus| -> anyhow::Result<Ipv4Addr> {
        Ok(s.ip.as_deref().context("no ip")?.parse()?)
    };
    let (ip_a, ip_b) = (ip(&a)?, ip(&b)?);
    ensure!(
        lab.cidr.contains(ip_a) && lab.cidr.contains(ip_b) && ip_a != ip_b,
        "ips {ip_a} {ip_b}"
    );
    for status in [&a, &b] {
        ensure!(status.state == SandboxState::Ready);
        ensure!(
            status
                .namespaces
                .keys()
                .map(String::as_str)
                .eq(["ipc", "net", "uts"]),
            "{:?}",
            status.namespaces
        );
        ensure!(
            mounts_under(&lab.root)?.contains(&status.namespaces["net"]),
            "net ns of {} not mounted",
            status.id
        );
        ensure!(
            link_exists(&host_veth_name(&lab.bridge, &status.id))?,
            "no veth for {}",
            status.id
        );
    }

    // Hostname in the UTS namespace, interface and route in the network namespace.
    let hostname = run_ok(busybox_in(&a, &["uts"])?.arg("hostname"))?;
    ensure!(
        hostname.trim() == "pod-a",
        "hostname in a's UTS ns: {hostname:?}"
    );
    let addresses =
        run_ok(nsenter(&a, &["net"])?.args(["ip", "-4", "addr", "show", "dev", "eth0"]))?;
    ensure!(
        addresses.contains(&format!("{ip_a}/24")),
        "eth0 of a: {addresses}"
    );
    let routes = run_ok(nsenter(&a, &["net"])?.args(["ip", "route"]))?;
    ensure!(
        routes.contains(&format!("default via {}", lab.cidr.gateway())),
        "routes of a: {routes}"
    );
    let hosts = std::fs::read_to_string(&a.etc_files["/etc/hosts"])?;
    ensure!(
        hosts.contains(&format!("\n{ip_a}\tpod-a\n")),
        "hosts of a: {hosts}"
    );

    // Pod to pod across the bridge: ping, then HTTP to a server in b's namespaces.
    run_ok(busybox_in(&a, &["net"])?.args(["ping", "-c", "1", "-W", "5", &ip_b.to_string()]))
        .context("ping from a to b")?;
    run_ok(busybox_in(&a, &["net"])?.args([
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        &lab.cidr.gateway().to_string(),
    ]))
    .context("ping from a to the bridge")?;
    let www = tempfile::tempdir()?;
    std::fs::write(www.path().join("index.html"), "hello from pod-b\n")?;
    let server = busybox_in(&b, &["net", "uts"])?
        .args(["httpd", "-f", "-p", "8080", "-h"])
        .arg(www.path())
        .stdin(Stdio::null())
        .spawn()
        .context("starting httpd in b")?;
    let _server = KillOnDrop(server);

    // connect(): b's own loopback; retried until httpd listens (it starts in a moment).
    let mut stream = None;
    for _ in 0..100 {
        match manager.connect("sb-b", 8080).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut stream = stream.context("connect() to b:8080 never succeeded")?;
    stream
        .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    ensure!(
        response.contains("hello from pod-b"),
        "response over connect(): {response:?}"
    );
    // The listener is in b's namespace only: a's loopback has nothing on 8080.
    ensure!(
        manager.connect("sb-a", 8080).await.is_err(),
        "connect() to a:8080 should be refused"
    );

    let fetched = run_ok(
        busybox_in(&a, &["net"])?
            .args(["wget", "-q", "-O", "-"])
            .arg(format!("http://{ip_b}:8080/index.html")),
    )
    .context("wget from a to b")?;
    ensure!(fetched == "hello from pod-b\n", "fetched {fetched:?}");

    // A host-network pod: the node's IP and network, its own IPC namespace only.
    let h = manager.create("sb-h", &config("agent", true)).await?;
    ensure!(
        h.ip.as_deref() == Some("192.0.2.2"),
        "host-network ip {:?}",
        h.ip
    );
    ensure!(
        h.namespaces.keys().map(String::as_str).eq(["ipc"]),
        "{:?}",
        h.namespaces
    );

    // A restarted kubelet sees the same sandboxes and IPs.
    let restarted = SandboxManager::new(options.clone())?;
    let listed: BTreeMap<String, Option<String>> = restarted
        .list()
        .await?
        .into_iter()
        .map(|s| (s.id, s.ip))
        .collect();
    let want: BTreeMap<String, Option<String>> = [&a, &b, &h]
        .into_iter()
        .map(|s| (s.id.clone(), s.ip.clone()))
        .collect();
    ensure!(listed == want, "after restart: {listed:?}, want {want:?}");
    ensure!(restarted.get("sb-a").await?.state == SandboxState::Ready);

    // stop: the veth and IP go, the record stays (NotReady); twice is fine.
    let veth_a = host_veth_name(&lab.bridge, "sb-a");
    manager.stop("sb-a").await?;
    manager.stop("sb-a").await?;
    ensure!(!link_exists(&veth_a)?, "veth {veth_a} left after stop");
    ensure!(manager.get("sb-a").await?.state == SandboxState::NotReady);
    ensure!(
        !lab.root.join(format!("network/ipam/{ip_a}")).exists(),
        "ip {ip_a} still allocated"
    );

    // remove: no mount, no veth, no directory; twice is fine.
    for id in ["sb-a", "sb-h"] {
        manager.remove(id).await?;
        manager.remove(id).await?;
        ensure!(
            !lab.root.join("sandboxes").join(id).exists(),
            "{id} directory left"
        );
    }
    let left: Vec<PathBuf> = mounts_under(&lab.root)?;
    ensure!(
        left.iter()
            .all(|p| p.starts_with(lab.root.join("sandboxes/sb-b"))),
        "mounts left after removing a and h: {left:?}"
    );

    // teardown (run by the caller) must take b, its veth and the bridge with it.
    ensure!(link_exists(&host_veth_name(&lab.bridge, "sb-b"))?);
    if manager.list().await?.len() != 1 {
        bail!("expected only sb-b before teardown");
    }
    Ok(())
}
