//! Image garbage collection, as the kubelet's image manager does it: when the disk that
//! holds the images is fuller than `--image-gc-high-threshold` percent, images no
//! container uses are removed, least recently created first, until usage is below
//! `--image-gc-low-threshold`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::KubeletConfig;
use crate::runtime::{ImageService, Runtime};

const PERIOD: Duration = Duration::from_secs(300);

/// Percent of the filesystem holding `path` that is in use.
fn disk_used_percent(path: &Path) -> Option<f64> {
    let probe = path.ancestors().find(|p| p.exists())?;
    let st = nix::sys::statvfs::statvfs(probe).ok()?;
    let total = st.blocks() as f64;
    if total <= 0.0 {
        return None;
    }
    Some(100.0 * (1.0 - st.blocks_available() as f64 / total))
}

/// One pass: removes unused images while the disk is above the high threshold (down to
/// the low one). Returns how many images were removed.
pub async fn collect(config: &KubeletConfig, runtime: &Arc<dyn Runtime>, images: &Arc<dyn ImageService>) -> usize {
    let Some(used) = disk_used_percent(&config.root_dir) else { return 0 };
    if used < f64::from(config.image_gc_high_threshold) {
        return 0;
    }
    let in_use: std::collections::HashSet<String> = match runtime.list_containers().await {
        Ok(list) => list.into_iter().map(|c| c.image_ref).collect(),
        // Without knowing what is in use, removing anything would be a guess.
        Err(_) => return 0,
    };
    let mut candidates: Vec<_> = images.list_images().await.unwrap_or_default().into_iter().filter(|i| !in_use.contains(&i.id)).collect();
    candidates.sort_by_key(|i| i.created);
    let mut removed = 0;
    for image in candidates {
        if disk_used_percent(&config.root_dir).unwrap_or(0.0) < f64::from(config.image_gc_low_threshold) {
            break;
        }
        match images.remove_image(&image.id).await {
            Ok(()) => {
                removed += 1;
                tracing::info!(image = %image.repo_tags.join(","), id = %image.id, disk_used_percent = used, "image garbage-collected");
            }
            Err(e) => tracing::warn!(image = %image.id, error = %e, "image garbage collection failed"),
        }
    }
    removed
}

pub async fn run(config: KubeletConfig, runtime: Arc<dyn Runtime>, images: Arc<dyn ImageService>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
        collect(&config, &runtime, &images).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;

    #[tokio::test]
    async fn removes_only_unused_images_above_the_threshold() {
        let fake = Arc::new(FakeRuntime::new());
        let runtime: Arc<dyn Runtime> = fake.clone();
        let images: Arc<dyn ImageService> = fake.clone();
        images.pull_image("docker.io/library/a:1", None).await.expect("pull a");
        images.pull_image("docker.io/library/b:1", None).await.expect("pull b");
        runtime.update_pod_cidr("10.1.0.0/24").await.expect("cidr");
        let sandbox = runtime
            .run_pod_sandbox(&crate::runtime::SandboxConfig {
                pod: crate::runtime::PodMeta { name: "p".into(), namespace: "d".into(), uid: "u".into() },
                hostname: "p".into(),
                host_aliases: vec![],
                dns: Default::default(),
                host_network: false,
                port_mappings: vec![],
                labels: Default::default(),
                annotations: Default::default(),
                cgroup_parent: String::new(),
                share_process_namespace: false,
            })
            .await
            .expect("sandbox");
        let config_for = |image: &str| crate::runtime::ContainerConfig {
            name: "c".into(),
            attempt: 0,
            image: image.into(),
            command: vec![],
            args: vec![],
            working_dir: None,
            envs: vec![],
            mounts: vec![],
            log_path: "/dev/null".into(),
            resources: Default::default(),
            run_as_user: None,
            run_as_group: None,
            privileged: false,
            tty: false,
            stdin: false,
            stdin_once: false,
            pid_namespace: Default::default(),
            security: Default::default(),
            labels: Default::default(),
            annotations: Default::default(),
        };
        runtime.create_container(&sandbox.id, &config_for("docker.io/library/a:1")).await.expect("container");
        // Thresholds of 0 make any disk "full": everything unused goes, the used image stays.
        let mut config = KubeletConfig::new("n", std::env::temp_dir());
        config.image_gc_high_threshold = 0;
        config.image_gc_low_threshold = 0;
        assert_eq!(collect(&config, &runtime, &images).await, 1);
        let left: Vec<String> = images.list_images().await.expect("list").into_iter().flat_map(|i| i.repo_tags).collect();
        assert_eq!(left, vec!["docker.io/library/a:1".to_string()]);
        // Below the threshold nothing is touched.
        config.image_gc_high_threshold = 100;
        images.pull_image("docker.io/library/b:1", None).await.expect("pull b");
        assert_eq!(collect(&config, &runtime, &images).await, 0);
    }
}
