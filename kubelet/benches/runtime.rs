//! Container create + start + exit through the real runtime (`LinuxRuntime`: overlay
//! rootfs, OCI spec, a detached shim running libcontainer, records on disk) against
//! `runc run` of the same OCI bundle, measured interleaved in the same run. The shims run
//! from the built `kubelet` binary.
//!
//! One host-network pod sandbox is created up front, so pod networking (veth, bridge,
//! IPAM) is not in the measured loop; its IPC and UTS namespaces are, as the containers
//! join them. Then, after warm-ups, each round runs:
//! - **rkube**: `create_container` (busybox image, command `true`) + `start_container` +
//!   polling `container_status` every 1 ms until `Exited` + `remove_container`;
//! - **runc**: `runc run --bundle B <id>` of the `config.json` our runtime generated for a
//!   container (cgroup path renamed; rootfs an overlay of the same busybox layer, mounted
//!   once beforehand). `runc run` creates, starts, waits and deletes, like the loop above;
//! - **runc + overlay** (context only): the same, plus mounting a fresh overlay rootfs
//!   before and unmounting and deleting it after, as our create and remove do.
//!
//! The order rotates per round. Prints median and p90 of each, the ratio rkube ÷ runc
//! (goal ≤ 1.0) and rkube's time split by phase.
//!
//! Needs root and Debian's `runc`; otherwise prints `skipped: …` (exit 1 under CI).
//! `RKUBE_BENCH_ITERS` (30) and `RKUBE_BENCH_WARMUP` (3) scale it.
//! Run with `cargo bench -p kubelet --bench runtime`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::FutureExt;
use kubelet::runtime::image::{build_busybox_image, ImageStore};
use kubelet::runtime::linux::{rootfs, LinuxRuntime};
use kubelet::runtime::sandbox::{SandboxManager, SandboxOptions};
use kubelet::runtime::{
    ContainerConfig, ContainerState, DnsConfig, PodMeta, Resources, Runtime, SandboxConfig,
    SandboxStatus,
};

const BUSYBOX_REF: &str = "docker.io/library/busybox:latest";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn find_runc() -> Option<PathBuf> {
    ["/usr/sbin/runc", "/usr/bin/runc"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Everything the bench sets up, so that cleanup can find it whatever failed.
struct Bench {
    temp: tempfile::TempDir,
    root: PathBuf,
    cgroup_root: String,
    bridge: String,
    runc: PathBuf,
    runc_root: PathBuf,
    runtime: LinuxRuntime,
    layers: Vec<PathBuf>,
}

/// rkube's phases of one container.
#[derive(Default, Clone, Copy)]
struct Split {
    create: Duration,
    start: Duration,
    exited_seen: Duration,
    remove: Duration,
}

impl Split {
    fn total(&self) -> Duration {
        self.create + self.start + self.exited_seen + self.remove
    }
}

impl Bench {
    fn container_config(&self, n: usize) -> ContainerConfig {
        ContainerConfig {
            name: "c".into(),
            attempt: n as u32,
            image: "busybox".into(),
            command: vec!["true".into()],
            args: vec![],
            working_dir: None,
            envs: vec![],
            mounts: vec![],
            log_path: self
                .root
                .join(format!("logs/pods/default_bench_uid/c/{n}.log")),
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

    async fn rkube_once(&self, sandbox: &SandboxStatus, n: usize) -> anyhow::Result<Split> {
        let config = self.container_config(n);
        let t0 = Instant::now();
        let id = self
            .runtime
            .create_container(&sandbox.id, &config)
            .await
            .context("create_container")?;
        let t1 = Instant::now();
        if let Err(e) = self.runtime.start_container(&id).await {
            let log = std::fs::read_to_string(self.runtime.container_dir(&id).join("shim.log"))
                .unwrap_or_default();
            bail!("start_container: {e}\nshim.log:\n{log}");
        }
        let t2 = Instant::now();
        let status = loop {
            let status = self.runtime.container_status(&id).await?;
            if status.state == ContainerState::Exited {
                break status;
            }
            if t2.elapsed() > Duration::from_secs(30) {
                bail!("container {id} still {:?} after 30 s", status.state);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let t3 = Instant::now();
        if status.exit_code != Some(0) {
            bail!(
                "container exited with {:?} ({:?}: {:?})",
                status.exit_code,
                status.reason,
                status.message
            );
        }
        self.runtime
            .remove_container(&id)
            .await
            .context("remove_container")?;
        let t4 = Instant::now();
        Ok(Split {
            create: t1 - t0,
            start: t2 - t1,
            exited_seen: t3 - t2,
            remove: t4 - t3,
        })
    }

    async fn runc_run(&self, bundle: &Path, id: &str) -> anyhow::Result<()> {
        let out = tokio::process::Command::new(&self.runc)
            .arg("--root")
            .arg(&self.runc_root)
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .context("running runc")?;
        if !out.status.success() {
            bail!(
                "runc run {id}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `runc run` of the bundle whose rootfs is already mounted.
    async fn runc_once(&self, bundle: &Path, n: usize) -> anyhow::Result<Duration> {
        let id = format!("rkube-bench-{n}");
        let t0 = Instant::now();
        self.runc_run(bundle, &id).await?;
        Ok(t0.elapsed())
    }

    /// A fresh overlay rootfs, `runc run`, then unmount and delete the writable layer.
    async fn runc_overlay_once(&self, bundle: &Path, n: usize) -> anyhow::Result<Duration> {
        let id = format!("rkube-bench-ov-{n}");
        let t0 = Instant::now();
        let (layers, dir) = (self.layers.clone(), bundle.to_path_buf());
        tokio::task::spawn_blocking(move || rootfs::mount_overlay(&layers, &dir))
            .await?
            .map_err(anyhow::Error::msg)?;
        let run = self.runc_run(bundle, &id).await;
        let dir = bundle.to_path_buf();
        let cleanup = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            rootfs::unmount(&dir.join("rootfs")).map_err(anyhow::Error::msg)?;
            for d in ["upper", "work"] {
                std::fs::remove_dir_all(dir.join(d))?;
            }
            Ok(())
        })
        .await?;
        run?;
        cleanup?;
        Ok(t0.elapsed())
    }

    /// Copies our runtime's `config.json` of container `id` into `bundle`, with its own
    /// cgroup path (the namespace paths of the sandbox and its etc files stay valid).
    fn make_bundle(&self, id: &str, bundle: &Path, name: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(bundle)?;
        let spec_path = self.runtime.container_dir(id).join("config.json");
        let mut spec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&spec_path)
                .with_context(|| format!("reading {}", spec_path.display()))?,
        )?;
        spec["root"]["path"] = "rootfs".into();
        spec["linux"]["cgroupsPath"] = format!("/{}/runc/{name}", self.cgroup_root).into();
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&spec)?,
        )?;
        Ok(())
    }
}

async fn measure(bench: &Bench) -> anyhow::Result<()> {
    let iters = env_usize("RKUBE_BENCH_ITERS", 30).max(1);
    let warmup = env_usize("RKUBE_BENCH_WARMUP", 3);
    let sandbox = bench
        .runtime
        .run_pod_sandbox(&SandboxConfig {
            pod: PodMeta {
                name: "bench".into(),
                namespace: "default".into(),
                uid: "bench-uid".into(),
            },
            hostname: "bench".into(),
            host_aliases: vec![],
            dns: DnsConfig::default(),
            host_network: true,
            port_mappings: vec![],
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            cgroup_parent: String::new(),
            share_process_namespace: false,
        })
        .await
        .context("creating the host-network sandbox")?;

    // One container, created only, to take its generated spec for runc's bundles.
    let template = bench
        .runtime
        .create_container(&sandbox.id, &bench.container_config(1_000_000))
        .await
        .context("creating the template container")?;
    let bundle = bench.temp.path().join("bundle");
    let bundle_ov = bench.temp.path().join("bundle-overlay");
    bench.make_bundle(&template, &bundle, "static")?;
    bench.make_bundle(&template, &bundle_ov, "overlay")?;
    bench.runtime.remove_container(&template).await?;
    rootfs::mount_overlay(&bench.layers, &bundle).map_err(anyhow::Error::msg)?;

    eprintln!("warming up ({warmup} of each)…");
    for n in 0..warmup {
        bench.rkube_once(&sandbox, n).await?;
        bench.runc_once(&bundle, n).await?;
        bench.runc_overlay_once(&bundle_ov, n).await?;
    }
    let mut rkube = Vec::new();
    let mut runc = Vec::new();
    let mut runc_ov = Vec::new();
    for i in 0..iters {
        let n = warmup + i;
        // Rotate the order, so no variant always follows the same one.
        for k in 0..3 {
            match (i + k) % 3 {
                0 => rkube.push(bench.rkube_once(&sandbox, n).await?),
                1 => runc.push(bench.runc_once(&bundle, n).await?),
                _ => runc_ov.push(bench.runc_overlay_once(&bundle_ov, n).await?),
            }
        }
    }

    let totals: Vec<Duration> = rkube.iter().map(Split::total).collect();
    let (rk50, rk90) = (percentile(&totals, 0.5), percentile(&totals, 0.9));
    let (rc50, rc90) = (percentile(&runc, 0.5), percentile(&runc, 0.9));
    let (ov50, ov90) = (percentile(&runc_ov, 0.5), percentile(&runc_ov, 0.9));
    let phase = |f: fn(&Split) -> Duration| {
        let v: Vec<Duration> = rkube.iter().map(f).collect();
        ms(percentile(&v, 0.5))
    };
    println!();
    println!("container create+start+exit+remove, busybox `true`, {iters} rounds after {warmup} warm-ups");
    println!(
        "(a host-network sandbox: no pod networking in the loop; runc {})",
        bench.runc.display()
    );
    println!();
    println!("| variant | median | p90 | ratio rkube ÷ variant (median) | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| rkube (LinuxRuntime) | {:.1} ms | {:.1} ms | | |",
        ms(rk50),
        ms(rk90)
    );
    println!(
        "| runc run, rootfs mounted once | {:.1} ms | {:.1} ms | **{:.2}** | ≤ 1.0 |",
        ms(rc50),
        ms(rc90),
        ms(rk50) / ms(rc50)
    );
    println!(
        "| runc run + overlay mount/umount per run (context) | {:.1} ms | {:.1} ms | {:.2} | |",
        ms(ov50),
        ms(ov90),
        ms(rk50) / ms(ov50)
    );
    println!();
    println!(
        "rkube split (medians): create {:.1} ms, start (until the shim reports) {:.1} ms, \
         exit seen {:.1} ms, remove {:.1} ms",
        phase(|s| s.create),
        phase(|s| s.start),
        phase(|s| s.exited_seen),
        phase(|s| s.remove)
    );
    Ok(())
}

/// Removes whatever the bench left, then checks that nothing is left.
async fn cleanup(bench: &Bench) -> Vec<String> {
    let mut problems = Vec::new();
    // runc containers left by a failed run.
    if let Ok(entries) = std::fs::read_dir(&bench.runc_root) {
        for entry in entries.flatten() {
            let _ = std::process::Command::new(&bench.runc)
                .arg("--root")
                .arg(&bench.runc_root)
                .args(["delete", "--force"])
                .arg(entry.file_name())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    for dir in ["bundle", "bundle-overlay"] {
        if let Err(e) = rootfs::unmount(&bench.temp.path().join(dir).join("rootfs")) {
            problems.push(e);
        }
    }
    if let Err(e) = bench.runtime.teardown().await {
        problems.push(format!("teardown: {e}"));
    }
    let mounts = rootfs::mounts_under(bench.temp.path());
    for point in &mounts {
        let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
    }
    if !mounts.is_empty() {
        problems.push(format!("mounts left: {mounts:?}"));
    }
    let cgroups: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join(&bench.cgroup_root))
                .chain(std::iter::once(
                    Path::new("/sys/fs/cgroup").join(&bench.cgroup_root),
                ))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    if !cgroups.is_empty() {
        problems.push(format!("cgroups left: {cgroups:?}"));
    }
    let bridge_left = std::process::Command::new("ip")
        .args(["link", "show", "dev", &bench.bridge])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if bridge_left {
        problems.push(format!("bridge {} left", bench.bridge));
    }
    problems
}

async fn run(runc: PathBuf) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("rkube-bench-runtime")
        .tempdir()?;
    let root = temp.path().join("node");
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let cgroup_root = format!("rkube-bench-{}", &tag[..10]);
    let bridge = format!("rkb{}", &tag[..8]);
    let runc_root = temp.path().join("runc-state");
    std::fs::create_dir_all(&runc_root)?;
    let images = Arc::new(ImageStore::open(&root.join("image-store"))?);
    build_busybox_image(&images, BUSYBOX_REF).context("building the busybox image")?;
    let layers = images
        .resolve(BUSYBOX_REF)?
        .context("busybox image missing after building it")?
        .layers;
    let sandboxes = Arc::new(SandboxManager::new(SandboxOptions::new(
        &root,
        &bridge,
        Ipv4Addr::new(192, 0, 2, 2),
    ))?);
    // Shims run from the kubelet binary, as they do on a node (it is linked as users get
    // it, see kubelet/build.rs; this bench binary is not).
    let runtime = LinuxRuntime::new(root.clone(), images, sandboxes, cgroup_root.clone())?
        .with_shim_binary(PathBuf::from(env!("CARGO_BIN_EXE_kubelet")));
    let bench = Bench {
        temp,
        root,
        cgroup_root,
        bridge,
        runc,
        runc_root,
        runtime,
        layers,
    };
    let outcome = std::panic::AssertUnwindSafe(measure(&bench))
        .catch_unwind()
        .await;
    let problems = cleanup(&bench).await;
    for p in &problems {
        eprintln!("cleanup: {p}");
    }
    match outcome {
        Ok(result) => result?,
        Err(panic) => std::panic::resume_unwind(panic),
    }
    if !problems.is_empty() {
        bail!("the bench did not clean up after itself");
    }
    Ok(())
}

fn skipped(reason: &str) -> ExitCode {
    println!("skipped: {reason}");
    if std::env::var_os("CI").is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        return skipped("needs root (namespaces, cgroups, mounts)");
    }
    let Some(runc) = find_runc() else {
        return skipped("runc not found at /usr/sbin/runc or /usr/bin/runc (apt-get install runc)");
    };
    if !Path::new(kubelet::runtime::image::busybox::BUSYBOX_PATH).exists() {
        return skipped("no static busybox at /bin/busybox (apt-get install busybox-static)");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(runc)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
