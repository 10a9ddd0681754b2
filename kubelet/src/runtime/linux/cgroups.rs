//! Reading and removing the runtime's cgroups on whatever layout the host has: cgroup
//! v1 (one hierarchy per controller, possibly with an empty v2 beside it: "hybrid") or
//! the unified v2 hierarchy. libcontainer creates each container's own cgroup; this
//! module reads its CPU, memory and OOM counters and removes it once the container has
//! ended, and removes the pod and `<cgroup_root>` levels above it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Controllers of cgroup v1 that can be mounted as hierarchies.
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "misc",
];

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hierarchy {
    pub mount_point: PathBuf,
    /// v1 controllers (or `name=…` for a named hierarchy); empty for v2.
    pub controllers: Vec<String>,
    pub unified: bool,
}

fn unescape_mount_path(field: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let parsed = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok());
            if let Some(v) = parsed {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every mount point in a `/proc/self/mountinfo` text.
pub fn parse_mountinfo_mount_points(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .collect()
}

/// The cgroup hierarchies in a `/proc/self/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    let mut hierarchies: Vec<Hierarchy> = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(mount_point), Some(fstype)) = (left.get(4), right.first()) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mount_path(mount_point));
        match *fstype {
            "cgroup2" => hierarchies.push(Hierarchy {
                mount_point,
                controllers: vec![],
                unified: true,
            }),
            "cgroup" => {
                let options = right.get(2).copied().unwrap_or("");
                let controllers: Vec<String> = options
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                    .map(str::to_string)
                    .collect();
                if !controllers.is_empty() {
                    hierarchies.push(Hierarchy {
                        mount_point,
                        controllers,
                        unified: false,
                    });
                }
            }
            _ => {}
        }
    }
    // The same hierarchy may be mounted twice (bind mounts); keep the first.
    let mut seen: Vec<Vec<String>> = Vec::new();
    hierarchies.retain(|h| {
        if h.unified {
            return true;
        }
        if seen.contains(&h.controllers) {
            false
        } else {
            seen.push(h.controllers.clone());
            true
        }
    });
    hierarchies
}

/// The host's cgroup layout.
#[derive(Debug, Clone)]
pub struct Cgroups {
    hierarchies: Vec<Hierarchy>,
}

impl Cgroups {
    pub fn detect() -> std::io::Result<Self> {
        let text = fs::read_to_string("/proc/self/mountinfo")?;
        Ok(Cgroups {
            hierarchies: parse_mountinfo(&text),
        })
    }

    pub fn from_hierarchies(hierarchies: Vec<Hierarchy>) -> Self {
        Cgroups { hierarchies }
    }

    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    /// Pure cgroup v2: no v1 controller is mounted (hybrid hosts count as v1).
    pub fn is_unified(&self) -> bool {
        self.hierarchies.iter().any(|h| h.unified)
            && !self
                .hierarchies
                .iter()
                .any(|h| !h.unified && h.controllers.iter().any(|c| !c.starts_with("name=")))
    }

    /// The directory of `cgroups_path` (absolute, e.g. `/rkube/pod1/abc`) for a controller.
    pub fn controller_dir(&self, controller: &str, cgroups_path: &str) -> Option<PathBuf> {
        let relative = cgroups_path.trim_start_matches('/');
        if self.is_unified() {
            let h = self.hierarchies.iter().find(|h| h.unified)?;
            return Some(h.mount_point.join(relative));
        }
        let h = self
            .hierarchies
            .iter()
            .find(|h| !h.unified && h.controllers.iter().any(|c| c == controller))?;
        Some(h.mount_point.join(relative))
    }

    /// Cumulative CPU time (ns) and memory working set (bytes) of a cgroup; zeros for
    /// what cannot be read (the cgroup is gone once the container has exited).
    pub fn stats(&self, cgroups_path: &str) -> (u64, u64) {
        if self.is_unified() {
            let Some(dir) = self.controller_dir("", cgroups_path) else {
                return (0, 0);
            };
            let cpu = fs::read_to_string(dir.join("cpu.stat"))
                .ok()
                .and_then(|s| keyed_value(&s, "usage_usec"))
                .map_or(0, |usec| usec.saturating_mul(1000));
            let usage = read_u64(&dir.join("memory.current")).unwrap_or(0);
            let inactive = fs::read_to_string(dir.join("memory.stat"))
                .ok()
                .and_then(|s| keyed_value(&s, "inactive_file"))
                .unwrap_or(0);
            (cpu, usage.saturating_sub(inactive))
        } else {
            let cpu = self
                .controller_dir("cpuacct", cgroups_path)
                .and_then(|d| read_u64(&d.join("cpuacct.usage")))
                .unwrap_or(0);
            let memory = self.controller_dir("memory", cgroups_path).map_or(0, |d| {
                let usage = read_u64(&d.join("memory.usage_in_bytes")).unwrap_or(0);
                let inactive = fs::read_to_string(d.join("memory.stat"))
                    .ok()
                    .and_then(|s| keyed_value(&s, "total_inactive_file"))
                    .unwrap_or(0);
                usage.saturating_sub(inactive)
            });
            (cpu, memory)
        }
    }

    /// Whether the kernel OOM-killed a process in the cgroup (read before it is removed).
    pub fn oom_killed(&self, cgroups_path: &str, killed_by_sigkill: bool) -> bool {
        let Some(dir) = self.controller_dir("memory", cgroups_path) else {
            return false;
        };
        if self.is_unified() {
            return fs::read_to_string(dir.join("memory.events"))
                .ok()
                .and_then(|s| keyed_value(&s, "oom_kill"))
                .is_some_and(|n| n > 0);
        }
        match fs::read_to_string(dir.join("memory.oom_control"))
            .ok()
            .and_then(|s| keyed_value(&s, "oom_kill"))
        {
            Some(kills) => kills > 0,
            // Kernels before 4.13 have no counter: a SIGKILL after hitting the limit.
            None => {
                killed_by_sigkill && read_u64(&dir.join("memory.failcnt")).is_some_and(|n| n > 0)
            }
        }
    }

    /// Removes `cgroups_path` (absolute, e.g. `/rkube/pod1/abc`, or a whole `/rkube` for
    /// `rkube down`) and what is below it on every hierarchy, killing what still runs
    /// there (see [`remove_cgroup_dir`]). Returns what could not be removed.
    pub fn remove(&self, cgroups_path: &str) -> Vec<String> {
        let mut errors = Vec::new();
        for h in &self.hierarchies {
            let dir = h.mount_point.join(cgroups_path.trim_start_matches('/'));
            if dir.exists() {
                if let Err(e) = remove_cgroup_dir(&dir) {
                    errors.push(format!("{}: {e}", dir.display()));
                }
            }
        }
        errors
    }

    /// Removes `cgroups_path` and its ancestors up to, not including, the level named by
    /// `stop_at` (absolute, e.g. `/rkube`), where they are empty (a pod's cgroup once its
    /// sandbox is removed). Errors are ignored: a pod cgroup still holding a container of
    /// the pod's newer sandbox stays.
    pub fn remove_empty(&self, cgroups_path: &str, stop_at: &str) {
        let stop_at = Path::new(stop_at.trim_start_matches('/'));
        for h in &self.hierarchies {
            let mut current = Some(Path::new(cgroups_path.trim_start_matches('/')));
            while let Some(rel) = current {
                if rel == stop_at || rel.as_os_str().is_empty() || !rel.starts_with(stop_at) {
                    break;
                }
                let dir = h.mount_point.join(rel);
                if dir.exists() {
                    release_memory(&dir);
                    if fs::remove_dir(&dir).is_err() {
                        break;
                    }
                }
                current = rel.parent();
            }
        }
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `key value` lines (`memory.stat`, `cpu.stat`, `memory.events`, `memory.oom_control`).
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reclaims what is still charged to a cgroup-v1 memory cgroup whose tasks are gone, as
/// the kernel's cgroup-v1 documentation advises before `rmdir`: page cache the container
/// read or wrote stays charged to a removed memory cgroup, which then lingers as a
/// "dying" cgroup until memory pressure. They pile up with pod churn (over a thousand
/// after one test run and a few lab benches here) and every hierarchical walk of the
/// memory controller (stats, reclaim) visits them. Nothing to do on other hierarchies
/// and on v2, which has no such file.
pub fn release_memory(dir: &Path) {
    let control = dir.join("memory.force_empty");
    if control.exists() {
        if let Err(e) = fs::write(&control, "0") {
            tracing::debug!(cgroup = %dir.display(), error = %e, "memory.force_empty");
        }
    }
}

/// Removes a cgroup directory and its descendants, deepest first, killing what runs in
/// them and waiting (bounded) for the kernel to let go of exiting tasks.
pub fn remove_cgroup_dir(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_dir(&entry.path())?;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        release_memory(dir);
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
27 26 0:25 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
28 26 0:26 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
29 26 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
30 26 0:28 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
31 26 0:29 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
32 26 0:27 / /mnt/mem\\040x rw,relatime - cgroup cgroup rw,memory
";

    const UNIFIED: &str = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn hybrid_layout_reads_as_v1() {
        let cg = Cgroups::from_hierarchies(parse_mountinfo(HYBRID));
        assert!(!cg.is_unified());
        assert_eq!(cg.hierarchies().len(), 5, "{:?}", cg.hierarchies());
        assert_eq!(
            cg.controller_dir("memory", "/rkube/pod1/abc"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/rkube/pod1/abc"))
        );
        assert_eq!(
            cg.controller_dir("cpuacct", "/rkube/pod1/abc"),
            Some(PathBuf::from("/sys/fs/cgroup/cpuacct/rkube/pod1/abc"))
        );
        assert!(cg
            .hierarchies()
            .iter()
            .any(|h| h.controllers == vec!["name=systemd".to_string()]));
    }

    #[test]
    fn unified_layout() {
        let cg = Cgroups::from_hierarchies(parse_mountinfo(UNIFIED));
        assert!(cg.is_unified());
        assert_eq!(
            cg.controller_dir("memory", "/rkube/p/c"),
            Some(PathBuf::from("/sys/fs/cgroup/rkube/p/c"))
        );
    }

    #[test]
    fn keyed_values() {
        let stat = "cache 10\ntotal_inactive_file 4096\ninactive_file 12\n";
        assert_eq!(keyed_value(stat, "total_inactive_file"), Some(4096));
        assert_eq!(keyed_value(stat, "inactive_file"), Some(12));
        assert_eq!(
            keyed_value("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"),
            Some(2)
        );
        assert_eq!(keyed_value(stat, "missing"), None);
    }

    #[test]
    fn cgroup_files_give_stats_and_oom() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = dir.path().join("unified");
        let leaf = mount.join("rkube/pod1/c1");
        fs::create_dir_all(&leaf).expect("mkdir");
        fs::write(leaf.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").expect("w");
        fs::write(leaf.join("memory.current"), "10000\n").expect("w");
        fs::write(leaf.join("memory.stat"), "anon 1\ninactive_file 2000\n").expect("w");
        fs::write(leaf.join("memory.events"), "low 0\noom 1\noom_kill 1\n").expect("w");
        let cg = Cgroups::from_hierarchies(vec![Hierarchy {
            mount_point: mount.clone(),
            controllers: vec![],
            unified: true,
        }]);
        assert_eq!(cg.stats("/rkube/pod1/c1"), (1_500_000, 8000));
        assert!(cg.oom_killed("/rkube/pod1/c1", true));
        assert_eq!(cg.stats("/rkube/pod1/gone"), (0, 0));
        // Plain directories stand in for cgroups: the pod level goes, the root stays.
        for f in ["cpu.stat", "memory.current", "memory.stat", "memory.events"] {
            fs::remove_file(leaf.join(f)).expect("rm");
        }
        fs::create_dir(mount.join("rkube/pod1/c2")).expect("mkdir");
        cg.remove_empty("/rkube/pod1", "/rkube");
        assert!(mount.join("rkube/pod1").exists(), "a pod level with a container stays");
        fs::remove_dir(&leaf).expect("rm leaf");
        fs::remove_dir(mount.join("rkube/pod1/c2")).expect("rm leaf");
        cg.remove_empty("/rkube/pod1", "/rkube");
        assert!(!mount.join("rkube/pod1").exists());
        assert!(mount.join("rkube").exists());
        assert!(cg.remove("rkube").is_empty());
        assert!(!mount.join("rkube").exists());
    }
}
