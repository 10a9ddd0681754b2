//! Privileged tests of `attach` on the real container runtime (`LinuxRuntime`): a shell
//! on a terminal driven through sequential attach sessions (stdin, output, resize, exit
//! code), `cat` without a terminal fed by a `stdinOnce` session with stdout and stderr
//! kept apart, output-only attaches, and a lab teardown that leaves no process, mount or
//! cgroup behind. Needs root.

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
    ContainerConfig, ContainerState, ContainerStatus, DnsConfig, ExecSession, PodMeta, Resources,
    Runtime, SandboxConfig, SandboxStatus,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

const BUSYBOX_REF: &str = "docker.io/library/busybox:latest";
const WAIT: Duration = Duration::from_secs(20);

/// True when the test may run; false (after saying so) when it must be skipped.
fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "runtime_attach needs root, and CI must run it"
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
    bridge: String,
    runtime: LinuxRuntime,
}

impl Lab {
    async fn sandbox(&self, name: &str) -> anyhow::Result<SandboxStatus> {
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
            let shim_log =
                std::fs::read_to_string(self.root.join("containers").join(&id).join("shim.log"))
                    .unwrap_or_default();
            bail!("starting {}: {e}\nshim.log:\n{shim_log}", config.name);
        }
        Ok(id)
    }

    async fn wait_exited(&self, id: &str) -> anyhow::Result<ContainerStatus> {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.runtime.container_status(id).await?;
            if status.state == ContainerState::Exited {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("container {id} still {:?} after {WAIT:?}", status.state);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs `scenario` in a fresh lab, then tears it down and checks that nothing is left.
async fn with_lab<F, Fut>(index: u8, scenario: F) -> anyhow::Result<()>
where
    F: FnOnce(Arc<Lab>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let temp = tempfile::tempdir()?;
    let root = temp.path().to_path_buf();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let cgroup_root = format!("rkube-test-{}", &tag[..10]);
    let bridge = format!("rka{}", &tag[..8]);
    let images = Arc::new(ImageStore::open(&root.join("image-store"))?);
    build_busybox_image(&images, BUSYBOX_REF).context("building busybox")?;
    let sandboxes = Arc::new(SandboxManager::new(SandboxOptions::new(
        &root,
        &bridge,
        Ipv4Addr::new(192, 0, 2, 3),
    ))?);
    let runtime = LinuxRuntime::new(root.clone(), images, sandboxes, cgroup_root.clone())?
        .with_shim_binary(PathBuf::from(env!("CARGO_BIN_EXE_kubelet")));
    let octet = u8::from_str_radix(&tag[10..12], 16)? / 4 * 4 + index % 4;
    runtime
        .update_pod_cidr(&format!("10.246.{octet}.0/24"))
        .await?;
    let lab = Arc::new(Lab {
        root: root.clone(),
        bridge,
        runtime,
    });

    let outcome = std::panic::AssertUnwindSafe(scenario(lab.clone()))
        .catch_unwind()
        .await;
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

/// Reads `reader` into `seen` until it contains `wanted`.
async fn read_until(
    reader: &mut (dyn AsyncRead + Send + Unpin),
    seen: &mut String,
    wanted: &str,
) -> anyhow::Result<()> {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
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
        tokio::time::timeout(WAIT, r.read_to_end(&mut out)).await??;
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
    with_lab(0, |lab| async move {
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
        let code = tokio::time::timeout(WAIT, session.exit).await??;
        ensure!(code == 0, "exit code {code}; saw {seen:?}");
        let status = lab.wait_exited(&id).await?;
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
    with_lab(1, |lab| async move {
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
        ensure!(tokio::time::timeout(WAIT, writer.exit).await?? == 3);

        let out = read_all(watcher.stdout.take()).await?;
        let err = read_all(watcher.stderr.take()).await?;
        ensure!(
            out == "hello\nworld\n" && err == "done\n",
            "watcher saw {out:?} {err:?}"
        );
        ensure!(tokio::time::timeout(WAIT, watcher.exit).await?? == 3);
        let status = lab.wait_exited(&id).await?;
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
    with_lab(2, |lab| async move {
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
                    tokio::time::timeout(WAIT, session.exit).await?.is_err(),
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
        ensure!(tokio::time::timeout(WAIT, session.exit).await?? == 4);

        lab.runtime.stop_container(&id, Duration::ZERO).await?;
        Ok(())
    })
    .await
}
