//! Privileged tests of the real container runtime (`LinuxRuntime`): busybox containers on
//! overlayfs under libcontainer and the shim, their logs, exit codes, stop signals, OOM
//! kills, pod-local networking, kubelet restarts, exec (with and without a TTY), and a
//! teardown that leaves no process, mount or cgroup behind; and attach (`kubectl attach`,
//! `kubectl run -it`): a shell on a terminal through sequential sessions, `cat` fed by a
//! `stdinOnce` session with stdout and stderr kept apart, output-only attaches; seccomp
//! profiles. Needs root.
//!
//! Each test has its own root directory, cgroup root, bridge and podCIDR, and tears all of
//! it down even when it fails.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures::FutureExt;
use kubelet::runtime::image::{build_busybox_image, ImageStore};
use kubelet::runtime::linux::LinuxRuntime;
use kubelet::runtime::sandbox::{SandboxManager, SandboxOptions};
use kubelet::runtime::{
    ContainerConfig, ContainerState, ContainerStatus, ExecSession, DnsConfig, ExecRequest, Mount, PidNamespace,
    PodMeta, Resources, Runtime, SandboxConfig, SandboxState, SandboxStatus, SeccompProfile,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

const BUSYBOX_REF: &str = "docker.io/library/busybox:latest";

/// True when the test may run; false (after saying so) when it must be skipped.
fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "runtime_linux needs root, and CI must run it"
    );
    println!("skipped: needs root");
    false
}

fn mounts_under(root: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(root))
        .collect()
}

/// Cgroup directories named `name` directly under any mounted hierarchy.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join(name))
                .chain(std::iter::once(Path::new("/sys/fs/cgroup").join(name)))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

/// Host processes whose command line is exactly `args`.
fn processes_running(args: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = args
        .iter()
        .flat_map(|a| a.bytes().chain(std::iter::once(0)))
        .collect();
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

struct Lab {
    root: PathBuf,
    cgroup_root: String,
    bridge: String,
    images: Arc<ImageStore>,
    sandboxes: Arc<SandboxManager>,
    runtime: LinuxRuntime,
}

impl Lab {
    fn runtime_over_same_root(&self) -> anyhow::Result<LinuxRuntime> {
        Ok(LinuxRuntime::new(
            self.root.clone(),
            self.images.clone(),
            self.sandboxes.clone(),
            self.cgroup_root.clone(),
        )?
        .with_shim_binary(PathBuf::from(env!("CARGO_BIN_EXE_kubelet"))))
    }

    async fn sandbox(&self, name: &str) -> anyhow::Result<SandboxStatus> {
        self.sandbox_sharing_pids(name, false).await
    }

    async fn sandbox_sharing_pids(&self, name: &str, share: bool) -> anyhow::Result<SandboxStatus> {
        let config = SandboxConfig {
            pod: PodMeta {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-{name}"),
            },
            hostname: name.into(),
            host_aliases: vec![],
            dns: DnsConfig::default(),
            host_network: false,
            port_mappings: vec![],
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            cgroup_parent: String::new(),
            share_process_namespace: share,
        };
        Ok(self.runtime.run_pod_sandbox(&config).await?)
    }

    fn container(&self, name: &str, command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            name: name.into(),
            attempt: 0,
            image: "busybox".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: vec![],
            working_dir: None,
            envs: vec![],
            mounts: vec![],
            log_path: self
                .root
                .join(format!("logs/pods/default_{name}_uid/{name}/0.log")),
            resources: Resources::default(),
            run_as_user: None,
            run_as_group: None,
            privileged: false,
            tty: false,
            stdin: false,
            stdin_once: false,
            pid_namespace: Default::default(),
            security: Default::default(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    async fn run(
        &self,
        sandbox: &SandboxStatus,
        config: &ContainerConfig,
    ) -> anyhow::Result<String> {
        let id = self.runtime.create_container(&sandbox.id, config).await?;
        if let Err(e) = self.runtime.start_container(&id).await {
            let shim_log = read_log(&self.root.join("containers").join(&id).join("shim.log"));
            bail!("starting {}: {e}\nshim.log:\n{shim_log}", config.name);
        }
        Ok(id)
    }

    async fn wait_exited(&self, id: &str, timeout: Duration) -> anyhow::Result<ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.runtime.container_status(id).await?;
            if status.state == ContainerState::Exited {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("container {id} still {:?} after {timeout:?}", status.state);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs `scenario` in a fresh lab, then tears the lab down and checks that nothing is
/// left: no mount under the root, no cgroup, no shim or container process.
async fn with_lab<F, Fut>(index: u8, scenario: F) -> anyhow::Result<()>
where
    F: FnOnce(Arc<Lab>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let temp = tempfile::tempdir()?;
    let root = temp.path().to_path_buf();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let cgroup_root = format!("rkube-test-{}", &tag[..10]);
    let bridge = format!("rkr{}", &tag[..8]);
    let images = Arc::new(ImageStore::open(&root.join("image-store"))?);
    build_busybox_image(&images, BUSYBOX_REF).context("building busybox")?;
    let sandboxes = Arc::new(SandboxManager::new(
        SandboxOptions::new(&root, &bridge, Ipv4Addr::new(192, 0, 2, 2))
            .with_helper_binary(env!("CARGO_BIN_EXE_kubelet")),
    )?);
    let runtime = LinuxRuntime::new(
        root.clone(),
        images.clone(),
        sandboxes.clone(),
        cgroup_root.clone(),
    )?
    .with_shim_binary(PathBuf::from(env!("CARGO_BIN_EXE_kubelet")));
    let octet = u8::from_str_radix(&tag[10..12], 16)? / 4 * 4 + index % 4;
    runtime
        .update_pod_cidr(&format!("10.247.{octet}.0/24"))
        .await?;
    let lab = Arc::new(Lab {
        root: root.clone(),
        cgroup_root: cgroup_root.clone(),
        bridge,
        images,
        sandboxes,
        runtime,
    });

    let outcome = std::panic::AssertUnwindSafe(scenario(lab.clone()))
        .catch_unwind()
        .await;
    // Processes the lab started, to check they are gone after teardown.
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(root.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(entry.path().join("state.json")) {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            for key in ["pid", "shim_pid"] {
                if let Some(pid) = value.get(key).and_then(|v| v.as_u64()) {
                    pids.push(pid as u32);
                }
            }
        }
    }
    let teardown = lab.runtime.teardown().await;
    let mounts = mounts_under(&root);
    let cgroups = cgroup_dirs(&cgroup_root);
    let alive: Vec<u32> = pids.into_iter().filter(|p| pid_alive(*p)).collect();
    let bridge_left = std::process::Command::new("ip")
        .args(["link", "show", "dev", &lab.bridge])
        .output()
        .is_ok_and(|o| o.status.success());
    // Last resort, so a failed test does not leave the machine dirty.
    for point in mounts.iter().rev() {
        let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
    }
    for dir in &cgroups {
        let _ = std::fs::remove_dir(dir);
    }
    match outcome {
        Ok(result) => result?,
        Err(panic) => std::panic::resume_unwind(panic),
    }
    teardown.context("teardown")?;
    ensure!(mounts.is_empty(), "mounts left after teardown: {mounts:?}");
    ensure!(
        cgroups.is_empty(),
        "cgroups left after teardown: {cgroups:?}"
    );
    ensure!(alive.is_empty(), "processes left after teardown: {alive:?}");
    ensure!(!bridge_left, "bridge {} left after teardown", lab.bridge);
    Ok(())
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The contents of a CRI log's records for one stream, checking each record's shape.
fn log_lines(text: &str, stream: &str) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for record in text.lines() {
        let mut parts = record.splitn(4, ' ');
        let (Some(ts), Some(s), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("malformed record {record:?}");
        };
        chrono::DateTime::parse_from_rfc3339(ts)
            .with_context(|| format!("timestamp of {record:?}"))?;
        ensure!(ts.ends_with('Z'), "timestamp not UTC: {record:?}");
        ensure!(tag == "F" || tag == "P", "tag of {record:?}");
        if s == stream {
            lines.push(parts.next().unwrap_or("").to_string());
        }
    }
    Ok(lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_log_and_exit() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    with_lab(0, |lab| async move {
        let sandbox = lab.sandbox("basics").await?;

        // echo hello: exit 0, `Completed`, a CRI record in the log.
        let hello = lab.container("hello", &["echo", "hello"]);
        let id = lab.run(&sandbox, &hello).await?;
        ensure!(id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()), "id {id}");
        let status = lab.wait_exited(&id, Duration::from_secs(20)).await?;
        ensure!(status.exit_code == Some(0), "{status:?}");
        ensure!(status.reason.as_deref() == Some("Completed"), "{status:?}");
        ensure!(status.started_at.is_some() && status.finished_at.is_some());
        let log = read_log(&hello.log_path);
        ensure!(log_lines(&log, "stdout")? == vec!["hello".to_string()], "log: {log:?}");
        ensure!(log.lines().any(|l| l.ends_with(" stdout F hello")), "log: {log:?}");
        // The shim removed the container's cgroup when it ended; the pod's stays.
        let pod_cgroups: Vec<PathBuf> = cgroup_dirs(&lab.cgroup_root)
            .into_iter()
            .map(|d| d.join("poduid-basics"))
            .filter(|d| d.is_dir())
            .collect();
        ensure!(!pod_cgroups.is_empty(), "no pod cgroup");
        // (The shim removes it just after recording the exit.)
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pod_cgroups.iter().any(|d| d.join(&id).exists()) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ensure!(pod_cgroups.iter().all(|d| !d.join(&id).exists()), "the cgroup of an ended container stays");
        ensure!(!lab.root.join("libcontainer-state").join(&id).exists(), "libcontainer state left");
        // exit.json is not fsync'd: one cut short by a host crash reads as an unknown end.
        let exit_file = lab.root.join("containers").join(&id).join("exit.json");
        std::fs::write(&exit_file, "")?;
        let status = lab.runtime.container_status(&id).await?;
        ensure!(status.state == ContainerState::Exited, "{status:?}");
        ensure!(status.reason.as_deref() == Some("Unknown"), "{status:?}");
        ensure!(status.message.as_deref().is_some_and(|m| m.contains("exit.json")), "{status:?}");

        // Environment (image ENV overridden by the pod), working directory (created when
        // missing), stderr, a volume, and a non-zero exit.
        let volume = lab.root.join("volume");
        std::fs::create_dir_all(&volume)?;
        std::fs::write(volume.join("data.txt"), "from-the-host\n")?;
        let mut env = lab.container(
            "env",
            &["sh", "-c", "echo \"$GREETING $WHO\"; pwd; cat /data/data.txt; echo oops >&2; touch /data/x 2>/dev/null || echo read-only; exit 3"],
        );
        env.envs = vec![("GREETING".into(), "hi".into()), ("WHO".into(), "there".into())];
        env.working_dir = Some("/work/dir".into());
        env.mounts = vec![Mount { host_path: volume.clone(), container_path: "/data".into(), readonly: true }];
        let id = lab.run(&sandbox, &env).await?;
        let status = lab.wait_exited(&id, Duration::from_secs(20)).await?;
        ensure!(status.exit_code == Some(3), "{status:?}");
        ensure!(status.reason.as_deref() == Some("Error"), "{status:?}");
        let log = read_log(&env.log_path);
        ensure!(
            log_lines(&log, "stdout")? == vec!["hi there", "/work/dir", "from-the-host", "read-only"],
            "log: {log:?}"
        );
        ensure!(log_lines(&log, "stderr")? == vec!["oops"], "log: {log:?}");
        ensure!(!volume.join("x").exists());

        // runAsUser (primary group from the image's /etc/passwd), a TTY, privileged.
        let mut user = lab.container("user", &["id"]);
        user.run_as_user = Some(33);
        let mut tty = lab.container("tty", &["sh", "-c", "test -t 1 && echo tty-yes"]);
        tty.tty = true;
        let mut privileged = lab.container("privileged", &["sh", "-c", "grep CapEff /proc/self/status"]);
        privileged.privileged = true;
        let mut ids = Vec::new();
        for config in [&user, &tty, &privileged] {
            ids.push(lab.run(&sandbox, config).await?);
        }
        for (id, config) in ids.iter().zip([&user, &tty, &privileged]) {
            let status = lab.wait_exited(id, Duration::from_secs(20)).await?;
            ensure!(status.exit_code == Some(0), "{}: {status:?} {}", config.name, read_log(&config.log_path));
        }
        let log = read_log(&user.log_path);
        ensure!(log.contains("uid=33(www-data) gid=33(www-data)"), "log: {log:?}");
        let log = read_log(&tty.log_path);
        ensure!(log.contains("stdout F tty-yes"), "log: {log:?}");
        let host_caps = std::fs::read_to_string("/proc/self/status")?
            .lines()
            .find(|l| l.starts_with("CapEff:"))
            .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
            .context("own CapEff")?;
        let log = read_log(&privileged.log_path);
        ensure!(log.contains(&format!("stdout F CapEff:\t{host_caps}")), "log: {log:?} host {host_caps}");

        // A command that does not exist: start fails with runc's message, the container is
        // exited with 128 / StartError, and no shim or cgroup stays.
        let bad = lab.container("bad", &["no-such-command"]);
        let id = lab.runtime.create_container(&sandbox.id, &bad).await?;
        let err = lab.runtime.start_container(&id).await.err().context("start should fail")?;
        ensure!(
            err.to_string().contains("exec: \"no-such-command\": executable file not found in $PATH"),
            "error: {err}"
        );
        let status = lab.runtime.container_status(&id).await?;
        ensure!(status.state == ContainerState::Exited, "{status:?}");
        ensure!(status.exit_code == Some(128), "{status:?}");
        ensure!(status.reason.as_deref() == Some("StartError"), "{status:?}");
        ensure!(status.message.as_deref().is_some_and(|m| m.contains("executable file not found")));
        let leaf = |ctrl: &str| Path::new("/sys/fs/cgroup").join(ctrl).join(&lab.cgroup_root).join("poduid-basics").join(&id);
        ensure!(!leaf("memory").exists() && !leaf("pids").exists(), "cgroup left for failed start");
        ensure!(!lab.root.join("libcontainer-state").join(&id).exists(), "libcontainer state left");
        ensure!(
            !mounts_under(&lab.root.join("containers").join(&id)).iter().any(|m| m.ends_with("rootfs")),
            "rootfs still mounted after a failed start"
        );
        let again = lab.runtime.start_container(&id).await;
        ensure!(again.is_err(), "a failed container must not start again");

        // Stats of a running container, then list, remove and the log that stays.
        let busy = lab.container("busy", &["sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 1000"]);
        let busy_id = lab.run(&sandbox, &busy).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = lab.runtime.container_status(&busy_id).await?.pid.context("pid of a running container")?;
        // Its own pid namespace, the pod's network namespace, its cgroup, Docker's default
        // capabilities.
        let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}"));
        ensure!(ns(&pid.to_string(), "pid")? != ns("self", "pid")?, "no pid namespace of its own");
        let net_ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&sandbox.namespaces["net"])?);
        ensure!(ns(&pid.to_string(), "net")?.as_os_str() == format!("net:[{net_ino}]").as_str(), "not in the pod's netns");
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let suffix = format!("/{}/poduid-basics/{busy_id}", lab.cgroup_root);
        ensure!(cgroup.lines().any(|l| l.ends_with(&suffix)), "cgroups: {cgroup}");
        let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        ensure!(proc_status.contains("CapEff:\t00000000a80425fb"), "caps: {proc_status}");
        // Its writable layer is an overlay mounted `volatile` (Linux 5.10+), so that
        // unmounting it does not flush the host filesystem.
        let rootfs = lab.root.join("containers").join(&busy_id).join("rootfs");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let line = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(rootfs.to_str().unwrap_or_default()))
            .context("the rootfs mount")?;
        let super_options = line.split(" - ").nth(1).unwrap_or_default();
        ensure!(super_options.starts_with("overlay "), "{line}");
        let release = nix::sys::utsname::uname()?.release().to_string_lossy().into_owned();
        let mut version = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
        if (version.next().unwrap_or(0), version.next().unwrap_or(0)) >= (5, 10) {
            // Shown as `volatile`, or `fsync=volatile` since Linux 6.x.
            ensure!(
                super_options.split(',').any(|o| o == "volatile" || o == "fsync=volatile"),
                "kernel {release}: {line}"
            );
        }
        let stats = lab.runtime.container_stats(&busy_id).await?;
        ensure!(stats.cpu_usage_nanos > 0 && stats.memory_working_set_bytes > 0, "{stats:?}");
        let all = lab.runtime.list_containers().await?;
        ensure!(all.len() == 7, "{} containers listed", all.len());
        ensure!(all.iter().any(|c| c.id == busy_id && c.state == ContainerState::Running && c.pid.is_some()));
        let refused = lab.runtime.remove_container(&busy_id).await;
        ensure!(refused.is_err(), "removing a running container must fail");
        lab.runtime.stop_container(&busy_id, Duration::ZERO).await?;
        let status = lab.runtime.container_status(&busy_id).await?;
        ensure!(status.state == ContainerState::Exited && status.exit_code == Some(137), "{status:?}");
        lab.runtime.stop_container(&busy_id, Duration::ZERO).await?; // stopping twice is fine
        lab.runtime.remove_container(&busy_id).await?;
        ensure!(!lab.root.join("containers").join(&busy_id).exists());
        ensure!(busy.log_path.exists(), "the log file stays after remove");
        ensure!(lab.runtime.container_status(&busy_id).await.is_err());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_signals_and_grace() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    with_lab(1, |lab| async move {
        let sandbox = lab.sandbox("stopper").await?;
        // SIGTERM honoured by a trap: exits well before the grace period ends.
        let polite = lab.container(
            "polite",
            &[
                "sh",
                "-c",
                "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
            ],
        );
        let polite_id = lab.run(&sandbox, &polite).await?;
        // SIGTERM ignored: killed after the grace period.
        let stubborn = lab.container(
            "stubborn",
            &[
                "sh",
                "-c",
                "trap '' TERM; echo ready; while true; do sleep 0.1; done",
            ],
        );
        let stubborn_id = lab.run(&sandbox, &stubborn).await?;
        for log in [&polite.log_path, &stubborn.log_path] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !read_log(log).contains("ready") {
                ensure!(Instant::now() < deadline, "container never got ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        let started = Instant::now();
        lab.runtime
            .stop_container(&polite_id, Duration::from_secs(20))
            .await?;
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        let status = lab.runtime.container_status(&polite_id).await?;
        ensure!(status.exit_code == Some(0), "{status:?}");
        ensure!(read_log(&polite.log_path).contains("stdout F bye"));

        let started = Instant::now();
        lab.runtime
            .stop_container(&stubborn_id, Duration::from_secs(1))
            .await?;
        ensure!(
            started.elapsed() >= Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        let status = lab.runtime.container_status(&stubborn_id).await?;
        ensure!(status.exit_code == Some(137), "{status:?}");
        ensure!(status.reason.as_deref() == Some("Error"), "{status:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_oom_kills() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    with_lab(2, |lab| async move {
        let sandbox = lab.sandbox("hungry").await?;
        let mut hungry = lab.container(
            "hungry",
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        );
        hungry.resources.memory_limit = Some(16 << 20);
        let id = lab.run(&sandbox, &hungry).await?;
        let status = lab.wait_exited(&id, Duration::from_secs(30)).await?;
        ensure!(status.exit_code == Some(137), "{status:?}");
        ensure!(status.reason.as_deref() == Some("OOMKilled"), "{status:?}");

        // Within the limits: no OOM; the limits are set on the container's cgroup.
        let mut fine = lab.container(
            "fine",
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/dev/null bs=1M count=4 && echo done && sleep 1000",
            ],
        );
        fine.resources.memory_limit = Some(32 << 20);
        fine.resources.pids_limit = Some(20);
        fine.resources.cpu_shares = Some(256);
        fine.resources.cpu_quota = Some(50_000);
        fine.resources.cpu_period = Some(100_000);
        let id = lab.run(&sandbox, &fine).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !read_log(&fine.log_path).contains("stdout F done") {
            ensure!(
                Instant::now() < deadline,
                "dd within the limit did not finish: {}",
                read_log(&fine.log_path)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let rel = format!("{}/poduid-hungry/{id}", lab.cgroup_root);
        let read = |path: String| {
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .with_context(|| path)
        };
        if Path::new("/sys/fs/cgroup/memory").is_dir() {
            ensure!(
                read(format!("/sys/fs/cgroup/memory/{rel}/memory.limit_in_bytes"))? == "33554432"
            );
            ensure!(read(format!("/sys/fs/cgroup/cpu/{rel}/cpu.shares"))? == "256");
            ensure!(read(format!("/sys/fs/cgroup/cpu/{rel}/cpu.cfs_quota_us"))? == "50000");
            ensure!(read(format!("/sys/fs/cgroup/pids/{rel}/pids.max"))? == "20");
        } else {
            ensure!(read(format!("/sys/fs/cgroup/{rel}/memory.max"))? == "33554432");
            ensure!(read(format!("/sys/fs/cgroup/{rel}/cpu.max"))? == "50000 100000");
            ensure!(read(format!("/sys/fs/cgroup/{rel}/pids.max"))? == "20");
        }
        lab.runtime.stop_container(&id, Duration::ZERO).await?;
        let status = lab.runtime.container_status(&id).await?;
        ensure!(
            status.exit_code == Some(137) && status.reason.as_deref() == Some("Error"),
            "{status:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_pod_share_localhost() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    with_lab(3, |lab| async move {
        let sandbox = lab.sandbox("web").await?;
        let server = lab.container(
            "server",
            &["sh", "-c", "mkdir -p /www && echo pod-local > /www/index.html && exec httpd -f -p 8080 -h /www"],
        );
        lab.run(&sandbox, &server).await?;
        let client = lab.container(
            "client",
            &["sh", "-c", "for i in $(seq 1 100); do wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 0.1; done; exit 1"],
        );
        let client_id = lab.run(&sandbox, &client).await?;
        let status = lab.wait_exited(&client_id, Duration::from_secs(30)).await?;
        let log = read_log(&client.log_path);
        ensure!(status.exit_code == Some(0), "{status:?} log: {log}");
        ensure!(log_lines(&log, "stdout")? == vec!["pod-local"], "log: {log:?}");
        // The hostname is the pod's (the sandbox's UTS namespace).
        let host = lab.container("host", &["hostname"]);
        let host_id = lab.run(&sandbox, &host).await?;
        lab.wait_exited(&host_id, Duration::from_secs(20)).await?;
        ensure!(read_log(&host.log_path).ends_with(" stdout F web\n"), "{}", read_log(&host.log_path));

        // kubectl port-forward: the pod's loopback from the host.
        let mut stream = lab.runtime.port_forward(&sandbox.id, 8080).await?;
        stream.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        ensure!(response.contains("pod-local"), "response: {response}");

        lab.runtime.stop_pod_sandbox(&sandbox.id).await?;
        ensure!(lab
            .runtime
            .list_containers()
            .await?
            .iter()
            .all(|c| c.state == ContainerState::Exited));
        // With every container of the pod removed, its cgroup stays while its sandbox does.
        for c in lab.runtime.list_containers().await? {
            lab.runtime.remove_container(&c.id).await?;
        }
        ensure!(lab.runtime.list_containers().await?.is_empty());
        let pod_cgroups = || cgroup_dirs(&lab.cgroup_root).into_iter().map(|d| d.join("poduid-web")).filter(|d| d.is_dir()).count();
        ensure!(pod_cgroups() > 0, "the pod's cgroup went before its sandbox");
        lab.runtime.remove_pod_sandbox(&sandbox.id).await?;
        ensure!(lab.runtime.list_containers().await?.is_empty());
        ensure!(pod_cgroups() == 0, "the pod's cgroup outlived its sandbox");
        Ok(())
    })
    .await
}

/// `ps` output lines of a container that ran it, without the header.
async fn ps_lines(lab: &Lab, sandbox: &SandboxStatus, name: &str, pid_namespace: PidNamespace) -> anyhow::Result<Vec<String>> {
    let mut ps = lab.container(name, &["ps", "-o", "pid,args"]);
    ps.pid_namespace = pid_namespace;
    let id = lab.run(sandbox, &ps).await?;
    let status = lab.wait_exited(&id, Duration::from_secs(20)).await?;
    let log = read_log(&ps.log_path);
    ensure!(status.exit_code == Some(0), "{status:?} log: {log}");
    Ok(log_lines(&log, "stdout")?.into_iter().skip(1).map(|l| l.trim().to_string()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_share_the_pods_or_a_targets_processes() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    with_lab(10, |lab| async move {
        // shareProcessNamespace: a pause process is PID 1, every container sees the others.
        let shared = lab.sandbox_sharing_pids("shared", true).await?;
        let pause = shared.pid_holder.context("no pause process for a shared PID namespace")?;
        ensure!(pid_alive(pause.pid), "pause {pause:?} not running");
        let mut sleeper = lab.container("sleeper", &["sleep", "1001"]);
        sleeper.pid_namespace = PidNamespace::Pod;
        lab.run(&shared, &sleeper).await?;
        let seen = ps_lines(&lab, &shared, "ps", PidNamespace::Pod).await?;
        ensure!(seen.first().is_some_and(|l| l.starts_with("1 ") && l.contains("pause")), "PID 1 is not the pause process: {seen:?}");
        ensure!(seen.iter().any(|l| l.ends_with("sleep 1001") && !l.starts_with("1 ")), "{seen:?}");

        // A container of its own (the default) sees only itself, even in that pod.
        let alone = ps_lines(&lab, &shared, "ps-alone", PidNamespace::Container).await?;
        ensure!(alone.len() == 1 && alone[0] == "1 ps -o pid,args", "{alone:?}");

        // kubectl debug --target: joins the target container's namespace, in a pod that
        // shares none.
        let private = lab.sandbox("private").await?;
        ensure!(private.pid_holder.is_none() && !private.namespaces.contains_key("pid"));
        let target = lab.run(&private, &lab.container("target", &["sleep", "1002"])).await?;
        let seen = ps_lines(&lab, &private, "debugger", PidNamespace::Target(target.clone())).await?;
        ensure!(seen.first().is_some_and(|l| l == "1 sleep 1002"), "{seen:?}");
        // A target that is not running is refused when the container is created.
        lab.runtime.stop_container(&target, Duration::ZERO).await?;
        let mut late = lab.container("late", &["true"]);
        late.pid_namespace = PidNamespace::Target(target);
        let err = lab.runtime.create_container(&private.id, &late).await.err().context("joined a stopped target")?;
        ensure!(err.to_string().contains("target container \"target\" is not running"), "{err}");

        // Stopping the sandbox ends the pause process, and with it the namespace.
        lab.runtime.stop_pod_sandbox(&shared.id).await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while pid_alive(pause.pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ensure!(!pid_alive(pause.pid), "pause {pause:?} outlived its sandbox's stop");

        // A pause process killed behind the runtime's back makes the sandbox NotReady (the
        // kubelet then makes a new one), as a dead pause container does.
        let other = lab.sandbox_sharing_pids("other", true).await?;
        let other_pause = other.pid_holder.context("no pause process")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(other_pause.pid as i32), nix::sys::signal::Signal::SIGKILL)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let listed = lab.runtime.list_pod_sandboxes().await?;
            let state = listed.iter().find(|s| s.id == other.id).context("sandbox gone")?.state;
            if state == SandboxState::NotReady {
                break;
            }
            ensure!(Instant::now() < deadline, "sandbox still {state:?} with its pause process killed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    })
    .await
}

/// What a container that reports its seccomp mode and tries a new user namespace (which
/// needs no capability, only a filter that allows `unshare`) printed, and how it ended.
async fn seccomp_probe(lab: &Lab, sandbox: &SandboxStatus, name: &str, profile: SeccompProfile, privileged: bool) -> anyhow::Result<(ContainerStatus, Vec<String>)> {
    let mut probe = lab.container(name, &["sh", "-c", "grep '^Seccomp:' /proc/self/status; unshare -U true && echo unshared || echo refused"]);
    probe.security.seccomp = profile;
    probe.privileged = privileged;
    let id = lab.run(sandbox, &probe).await?;
    let status = lab.wait_exited(&id, Duration::from_secs(20)).await?;
    let lines = log_lines(&read_log(&probe.log_path), "stdout")?.into_iter().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    Ok((status, lines))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_profiles_filter_system_calls() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    with_lab(11, |lab| async move {
        let sandbox = lab.sandbox("seccomp").await?;
        let (status, out) = seccomp_probe(&lab, &sandbox, "unconfined", SeccompProfile::Unconfined, false).await?;
        ensure!(status.exit_code == Some(0) && out == ["Seccomp: 0", "unshared"], "{status:?} {out:?}");
        // RuntimeDefault: filtered, and a new namespace without CAP_SYS_ADMIN is refused.
        let (status, out) = seccomp_probe(&lab, &sandbox, "default", SeccompProfile::RuntimeDefault, false).await?;
        ensure!(status.exit_code == Some(0) && out == ["Seccomp: 2", "refused"], "{status:?} {out:?}");
        // Privileged containers are never filtered.
        let (status, out) = seccomp_probe(&lab, &sandbox, "privileged", SeccompProfile::RuntimeDefault, true).await?;
        ensure!(status.exit_code == Some(0) && out == ["Seccomp: 0", "unshared"], "{status:?} {out:?}");
        // A non-root user under RuntimeDefault: the filter is loaded before the
        // capabilities go (no no_new_privs needed).
        let mut user = lab.container("user", &["sh", "-c", "id -u; grep '^Seccomp:' /proc/self/status"]);
        user.security.seccomp = SeccompProfile::RuntimeDefault;
        user.run_as_user = Some(1000);
        let id = lab.run(&sandbox, &user).await?;
        let status = lab.wait_exited(&id, Duration::from_secs(20)).await?;
        let out: Vec<String> = log_lines(&read_log(&user.log_path), "stdout")?.into_iter().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
        ensure!(status.exit_code == Some(0) && out == ["1000", "Seccomp: 2"], "{status:?} {out:?}");

        // kubectl exec into a filtered container is filtered too (libcontainer's tenant
        // processes get it from the executor), for root and for another user.
        for (name, uid) in [("exec-root", None), ("exec-user", Some(1000))] {
            let mut target = lab.container(name, &["sleep", "1000"]);
            target.security.seccomp = SeccompProfile::RuntimeDefault;
            target.run_as_user = uid;
            let id = lab.run(&sandbox, &target).await?;
            let request = ExecRequest {
                container_id: id.clone(),
                command: ["sh", "-c", "grep '^Seccomp:' /proc/self/status; unshare -U true && echo unshared || echo refused"].iter().map(|s| s.to_string()).collect(),
                tty: false,
                stdin: false,
            };
            let mut session = lab.runtime.exec(request).await?;
            let mut out = String::new();
            session.stdout.take().context("stdout")?.read_to_string(&mut out).await?;
            let code = tokio::time::timeout(Duration::from_secs(20), session.exit).await??;
            let out: Vec<String> = out.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
            ensure!(code == 0 && out == ["Seccomp: 2", "refused"], "{name}: exit {code}, {out:?}");
            lab.runtime.stop_container(&id, Duration::ZERO).await?;
        }

        // Localhost profiles from files: one that logs everything and refuses nothing, one
        // that refuses everything (Kubernetes' seccomp tutorial's audit.json and
        // violation.json).
        let profiles = lab.root.join("seccomp/profiles");
        std::fs::create_dir_all(&profiles)?;
        std::fs::write(profiles.join("audit.json"), r#"{"defaultAction": "SCMP_ACT_LOG"}"#)?;
        std::fs::write(profiles.join("violation.json"), r#"{"defaultAction": "SCMP_ACT_ERRNO"}"#)?;
        let (status, out) = seccomp_probe(&lab, &sandbox, "audit", SeccompProfile::Localhost(profiles.join("audit.json")), false).await?;
        ensure!(status.exit_code == Some(0) && out == ["Seccomp: 2", "unshared"], "{status:?} {out:?}");
        let mut violation = lab.container("violation", &["echo", "never"]);
        violation.security.seccomp = SeccompProfile::Localhost(profiles.join("violation.json"));
        let id = lab.runtime.create_container(&sandbox.id, &violation).await?;
        let started = lab.runtime.start_container(&id).await;
        let status = lab.wait_exited(&id, Duration::from_secs(20)).await?;
        ensure!(started.is_err() || status.exit_code != Some(0), "a container ran under a profile refusing every call: {status:?}");
        ensure!(status.reason.as_deref() == Some("StartError"), "{status:?}");
        ensure!(status.message.as_deref().is_some_and(|m| m.contains("violation.json\" refused calls")), "the start error names the profile: {status:?}");
        ensure!(!read_log(&violation.log_path).contains("never"), "the refused echo printed");
        // A profile that is not there: the create fails and names the file.
        let mut missing = lab.container("missing", &["true"]);
        let path = profiles.join("missing.json");
        missing.security.seccomp = SeccompProfile::Localhost(path.clone());
        let err = lab.runtime.create_container(&sandbox.id, &missing).await.err().context("created a container with a missing profile")?;
        ensure!(err.to_string().contains(&format!("cannot load seccomp profile {:?}", path.display().to_string())), "{err}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_finds_running_containers() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    with_lab(4, |lab| async move {
        let sandbox = lab.sandbox("survivor").await?;
        let sleeper = lab.container("sleeper", &["sleep", "1000"]);
        let id = lab.run(&sandbox, &sleeper).await?;
        let before = lab.runtime.container_status(&id).await?;
        ensure!(
            before.state == ContainerState::Running && before.pid.is_some(),
            "{before:?}"
        );

        // A new runtime over the same root, as after a kubelet restart.
        let again = lab.runtime_over_same_root()?;
        let after = again.container_status(&id).await?;
        ensure!(after.state == ContainerState::Running, "{after:?}");
        ensure!(
            after.pid == before.pid && after.started_at == before.started_at,
            "{before:?} vs {after:?}"
        );
        let listed = again.list_containers().await?;
        ensure!(listed.len() == 1 && listed[0].id == id);
        let err = again.start_container(&id).await;
        ensure!(err.is_err(), "a running container must not start twice");
        // sleep as PID 1 has no SIGTERM handler: killed after the grace period.
        again
            .stop_container(&id, Duration::from_millis(300))
            .await?;
        let status = again.container_status(&id).await?;
        ensure!(status.exit_code == Some(137), "{status:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_into_running_containers() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    with_lab(5, |lab| async move {
        let sandbox = lab.sandbox("execs").await?;
        let mut target = lab.container("target", &["sleep", "1000"]);
        target.envs = vec![("FROM_POD".into(), "yes".into())];
        target.working_dir = Some("/tmp".into());
        let id = lab.run(&sandbox, &target).await?;

        // Plain exec: output, environment and working directory of the container.
        let exec = |command: &[&str], tty: bool, stdin: bool| ExecRequest {
            container_id: id.clone(),
            command: command.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
        };
        let mut session = lab
            .runtime
            .exec(exec(
                &["sh", "-c", "echo hi; echo $FROM_POD; pwd; echo err >&2"],
                false,
                false,
            ))
            .await?;
        let mut out = String::new();
        session
            .stdout
            .take()
            .context("stdout")?
            .read_to_string(&mut out)
            .await?;
        let mut err = String::new();
        session
            .stderr
            .take()
            .context("stderr")?
            .read_to_string(&mut err)
            .await?;
        let code = tokio::time::timeout(Duration::from_secs(20), session.exit).await??;
        ensure!(out == "hi\nyes\n/tmp\n", "stdout {out:?}");
        ensure!(err == "err\n", "stderr {err:?}");
        ensure!(code == 0, "exit {code}");

        // stdin is passed through; the exit code comes back.
        let mut session = lab
            .runtime
            .exec(exec(
                &["sh", "-c", "read line; echo got-$line; exit 5"],
                false,
                true,
            ))
            .await?;
        let mut stdin = session.stdin.take().context("stdin")?;
        stdin.write_all(b"input\n").await?;
        drop(stdin);
        let mut out = String::new();
        session
            .stdout
            .take()
            .context("stdout")?
            .read_to_string(&mut out)
            .await?;
        ensure!(out == "got-input\n", "stdout {out:?}");
        ensure!(tokio::time::timeout(Duration::from_secs(20), session.exit).await?? == 5);

        // A missing command: 127 and runc's message.
        let mut session = lab.runtime.exec(exec(&["nope"], false, false)).await?;
        let mut err = String::new();
        session
            .stderr
            .take()
            .context("stderr")?
            .read_to_string(&mut err)
            .await?;
        let code = tokio::time::timeout(Duration::from_secs(20), session.exit).await??;
        ensure!(code == 127, "exit {code}, stderr {err:?}");
        ensure!(
            err.contains("exec: \"nope\": executable file not found in $PATH"),
            "stderr {err:?}"
        );

        // With a TTY: the shell sees a terminal of the size we set, and its own exit code.
        let mut session = lab.runtime.exec(exec(&["sh"], true, true)).await?;
        ensure!(
            session.stderr.is_none(),
            "a TTY session has no separate stderr"
        );
        session
            .resize
            .as_ref()
            .context("resize")?
            .send((100, 40))
            .await?;
        let mut stdin = session.stdin.take().context("stdin")?;
        let mut stdout = session.stdout.take().context("stdout")?;
        stdin
            .write_all(b"test -t 0 && echo is-a-tty; stty size; echo marker-$((1+2)); exit 7\n")
            .await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stdout.read_to_end(&mut out)).await??;
        let out = String::from_utf8_lossy(&out);
        ensure!(
            out.contains("is-a-tty") && out.contains("40 100") && out.contains("marker-3"),
            "tty output {out:?}"
        );
        ensure!(tokio::time::timeout(Duration::from_secs(20), session.exit).await?? == 7);

        // Dropping a session ends its process.
        let session = lab
            .runtime
            .exec(exec(&["sleep", "1234"], false, false))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while processes_running(&["sleep", "1234"]).is_empty() {
            ensure!(Instant::now() < deadline, "exec'd sleep never showed up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(session);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !processes_running(&["sleep", "1234"]).is_empty() {
            ensure!(
                Instant::now() < deadline,
                "exec'd sleep outlived its session"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Exec into a container that is not running is refused.
        lab.runtime.stop_container(&id, Duration::ZERO).await?;
        ensure!(lab
            .runtime
            .exec(exec(&["true"], false, false))
            .await
            .is_err());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_leaves_nothing_behind() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    // with_lab's teardown and checks are the test: running containers in two pods, one
    // created but never started, one exited.
    with_lab(6, |lab| async move {
        let a = lab.sandbox("down-a").await?;
        let b = lab.sandbox("down-b").await?;
        lab.run(&a, &lab.container("a1", &["sleep", "1000"]))
            .await?;
        lab.run(
            &a,
            &lab.container("a2", &["sh", "-c", "trap '' TERM; sleep 1000"]),
        )
        .await?;
        lab.run(&b, &lab.container("b1", &["sleep", "1000"]))
            .await?;
        lab.runtime
            .create_container(&b.id, &lab.container("b2", &["true"]))
            .await?;
        let done = lab.run(&b, &lab.container("b3", &["true"])).await?;
        lab.wait_exited(&done, Duration::from_secs(20)).await?;
        ensure!(
            !cgroup_dirs(&lab.cgroup_root).is_empty(),
            "containers run in the cgroup root"
        );
        Ok(())
    })
    .await
}

// ---- attach (kubectl attach, kubectl run -it) ----

const ATTACH_WAIT: Duration = Duration::from_secs(20);

/// Reads `reader` into `seen` until it contains `wanted`.
async fn read_until(
    reader: &mut (dyn AsyncRead + Send + Unpin),
    seen: &mut String,
    wanted: &str,
) -> anyhow::Result<()> {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + ATTACH_WAIT;
    while !seen.contains(wanted) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, reader.read(&mut buf))
            .await
            .with_context(|| format!("waiting for {wanted:?}; saw {seen:?}"))??;
        ensure!(n > 0, "output ended before {wanted:?}; saw {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    Ok(())
}

async fn read_all(reader: Option<Box<dyn AsyncRead + Send + Unpin>>) -> anyhow::Result<String> {
    let mut out = Vec::new();
    if let Some(mut r) = reader {
        tokio::time::timeout(ATTACH_WAIT, r.read_to_end(&mut out)).await??;
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn attach(lab: &Lab, id: &str, stdin: bool, tty: bool) -> anyhow::Result<ExecSession> {
    Ok(lab.runtime.attach(id, stdin, tty).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_a_shell_on_a_terminal() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    with_lab(7, |lab| async move {
        let sandbox = lab.sandbox("shell").await?;
        let mut shell = lab.container("shell", &["sh"]);
        shell.tty = true;
        shell.stdin = true;
        shell.stdin_once = true;
        let id = lab.run(&sandbox, &shell).await?;

        // An output-only session first: it gets no stdin and does not use up stdinOnce.
        let watcher = attach(&lab, &id, false, true).await?;
        ensure!(watcher.stdin.is_none(), "stdin without asking for it");
        drop(watcher);

        // A session that types, and leaves: a terminal keeps its stdin even with
        // stdinOnce (as containerd does).
        let mut first = attach(&lab, &id, true, true).await?;
        ensure!(first.stderr.is_none(), "a terminal has no separate stderr");
        let mut stdin = first.stdin.take().context("stdin")?;
        let mut stdout = first.stdout.take().context("stdout")?;
        let mut seen = String::new();
        stdin.write_all(b"echo $((6*7))\n").await?;
        read_until(stdout.as_mut(), &mut seen, "\n42\r\n").await?;
        stdin.shutdown().await?;
        drop((stdin, stdout, first));

        // The next session sets the terminal's size, sees the shell's answers and its end.
        let mut session = attach(&lab, &id, true, true).await?;
        session
            .resize
            .as_ref()
            .context("resize")?
            .send((100, 30))
            .await?;
        let mut stdin = session.stdin.take().context("stdin")?;
        let mut stdout = session.stdout.take().context("stdout")?;
        let mut seen = String::new();
        stdin.write_all(b"stty size; echo $TERM\n").await?;
        read_until(stdout.as_mut(), &mut seen, "30 100\r\nxterm\r\n").await?;
        stdin.write_all(b"exit\n").await?;
        let code = tokio::time::timeout(ATTACH_WAIT, session.exit).await??;
        ensure!(code == 0, "exit code {code}; saw {seen:?}");
        let status = lab.wait_exited(&id, ATTACH_WAIT).await?;
        ensure!(status.exit_code == Some(0), "{status:?}");
        // The terminal's output is in the log as well.
        let log = std::fs::read_to_string(&shell.log_path)?;
        ensure!(log.contains(" stdout F 42\r"), "log {log:?}");
        ensure!(
            !lab.runtime
                .root()
                .join("containers")
                .join(&id)
                .join("attach.sock")
                .exists(),
            "the socket outlived the container"
        );

        // Attaching to an exited container is refused.
        ensure!(lab.runtime.attach(&id, true, true).await.is_err());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_feeds_cat_once_without_a_terminal() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    with_lab(8, |lab| async move {
        let sandbox = lab.sandbox("cat").await?;
        let mut cat = lab.container("cat", &["sh", "-c", "cat; echo done >&2; exit 3"]);
        cat.stdin = true;
        cat.stdin_once = true;
        let id = lab.run(&sandbox, &cat).await?;

        // Two sessions at once: one only watches, one writes; both see the output.
        let mut watcher = attach(&lab, &id, false, false).await?;
        let mut writer = attach(&lab, &id, true, false).await?;
        ensure!(writer.resize.is_none(), "no terminal to resize");
        let mut stdin = writer.stdin.take().context("stdin")?;
        let mut stdout = writer.stdout.take().context("stdout")?;
        let mut seen = String::new();
        stdin.write_all(b"hello\n").await?;
        read_until(stdout.as_mut(), &mut seen, "hello\n").await?;
        stdin.write_all(b"world\n").await?;
        read_until(stdout.as_mut(), &mut seen, "world\n").await?;
        // Closing stdin (kubectl's stdin reached its end) lets cat finish: stdinOnce.
        stdin.shutdown().await?;
        drop(stdin);
        let rest = read_all(Some(stdout)).await?;
        ensure!(rest.is_empty(), "more output {rest:?}");
        let err = read_all(writer.stderr.take()).await?;
        ensure!(err == "done\n", "stderr {err:?}");
        ensure!(tokio::time::timeout(ATTACH_WAIT, writer.exit).await?? == 3);

        let out = read_all(watcher.stdout.take()).await?;
        let err = read_all(watcher.stderr.take()).await?;
        ensure!(
            out == "hello\nworld\n" && err == "done\n",
            "watcher saw {out:?} {err:?}"
        );
        ensure!(tokio::time::timeout(ATTACH_WAIT, watcher.exit).await?? == 3);
        let status = lab.wait_exited(&id, ATTACH_WAIT).await?;
        ensure!(status.exit_code == Some(3), "{status:?}");
        let log = std::fs::read_to_string(&cat.log_path)?;
        ensure!(
            log.contains(" stdout F hello\n") && log.contains(" stderr F done\n"),
            "log {log:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_attaches_and_detaches() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    with_lab(9, |lab| async move {
        let sandbox = lab.sandbox("reader").await?;
        // stdin without stdinOnce: each session may write, and leaving keeps stdin open.
        let mut reader = lab.container(
            "reader",
            &[
                "sh",
                "-c",
                "while read line; do echo got-$line; done; echo eof",
            ],
        );
        reader.stdin = true;
        let id = lab.run(&sandbox, &reader).await?;
        for round in 0..3 {
            let mut session = attach(&lab, &id, true, false).await?;
            let mut stdin = session.stdin.take().context("stdin")?;
            let mut stdout = session.stdout.take().context("stdout")?;
            let mut seen = String::new();
            stdin.write_all(format!("r{round}\n").as_bytes()).await?;
            read_until(stdout.as_mut(), &mut seen, &format!("got-r{round}\n")).await?;
            if round == 1 {
                // Closing stdin ends this session only.
                stdin.shutdown().await?;
                let rest = read_all(Some(stdout)).await?;
                ensure!(rest.is_empty(), "output after detaching: {rest:?}");
                ensure!(
                    tokio::time::timeout(ATTACH_WAIT, session.exit).await?.is_err(),
                    "no exit code while the container runs"
                );
            }
            // Other rounds just drop the session.
        }
        let status = lab.runtime.container_status(&id).await?;
        ensure!(status.state == ContainerState::Running, "{status:?}");

        // A container without stdin can be attached for its output only.
        let mut ticker = lab.container(
            "ticker",
            &[
                "sh",
                "-c",
                "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick-$i; sleep 0.3; done; exit 4",
            ],
        );
        ticker.stdin = false;
        let tid = lab.run(&sandbox, &ticker).await?;
        let mut session = attach(&lab, &tid, true, false).await?;
        ensure!(session.stdin.is_none(), "stdin for a container without one");
        let out = read_all(session.stdout.take()).await?;
        ensure!(out.contains("tick-10\n"), "ticker output {out:?}");
        ensure!(tokio::time::timeout(ATTACH_WAIT, session.exit).await?? == 4);

        lab.runtime.stop_container(&id, Duration::ZERO).await?;
        Ok(())
    })
    .await
}

// ---- cgroups ----

/// Page cache a container wrote stays charged to its memory cgroup after it exits; on
/// cgroup v1, unless released before `rmdir`, the removed cgroup lingers as a "dying"
/// one until memory pressure, and they pile up with pod churn. `release_memory` (called
/// before every removal) must leave the cgroup with nothing charged.
#[test]
fn released_memory_cgroup_holds_no_page_cache() -> anyhow::Result<()> {
    if !have_root() {
        return Ok(());
    }
    let cgroups = kubelet::runtime::linux::cgroups::Cgroups::detect()?;
    let name = format!("/rkube-test-release-{}", std::process::id());
    let Some(dir) = cgroups.controller_dir("memory", &name).filter(|_| !cgroups.is_unified()) else {
        println!("skipped: no cgroup v1 memory hierarchy (cgroup v2 has no memory.force_empty)");
        return Ok(());
    };
    let scratch = tempfile::tempdir()?;
    let file = scratch.path().join("written");
    std::fs::create_dir(&dir)?;
    let outcome = (|| -> anyhow::Result<()> {
        // The shell moves itself into the cgroup, then writes 8 MiB: page cache charged there.
        let script = format!(
            "echo $$ > {}/cgroup.procs && head -c 8388608 /dev/zero > {}",
            dir.display(),
            file.display()
        );
        let status = std::process::Command::new("sh").arg("-c").arg(&script).status()?;
        ensure!(status.success(), "writing in the cgroup: {status}");
        let usage = |d: &Path| -> anyhow::Result<u64> {
            Ok(std::fs::read_to_string(d.join("memory.usage_in_bytes"))?.trim().parse()?)
        };
        let before = usage(&dir)?;
        ensure!(before >= 8 << 20, "the write was not charged to the cgroup: {before} bytes");
        kubelet::runtime::linux::cgroups::release_memory(&dir);
        let after = usage(&dir)?;
        ensure!(after < 1 << 20, "still charged after release: {after} bytes (was {before})");
        Ok(())
    })();
    std::fs::remove_dir(&dir)?;
    outcome
}
