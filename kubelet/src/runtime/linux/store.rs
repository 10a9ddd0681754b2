//! The on-disk records of a container under `ROOT/containers/<id>/`: `meta.json`
//! (written at create), `state.json` (written by the shim once the process runs) and
//! `exit.json` (written by the shim when it ends). Every record is written atomically
//! (temporary file, rename), so a reader never sees half a record, and the files
//! outlive both the kubelet and the shim: they are how a restarted kubelet finds its
//! containers. Only what describes a container beyond its processes (`meta.json`) is
//! fsync'd; see [`Durability`].

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::cgroups::{Cgroups, Hierarchy};
use crate::runtime::{ContainerConfig, Result, RuntimeError};

pub const META_FILE: &str = "meta.json";
pub const STATE_FILE: &str = "state.json";
pub const EXIT_FILE: &str = "exit.json";
pub const SPEC_FILE: &str = "config.json";
pub const ROOTFS_DIR: &str = "rootfs";
pub const UPPER_DIR: &str = "upper";
pub const WORK_DIR: &str = "work";
pub const EMPTY_LOWER_DIR: &str = "empty";
pub const SHIM_LOG: &str = "shim.log";

/// What the runtime knows about a container from its creation on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: ContainerConfig,
    /// `repo@sha256:…` (or the image id) the image reference resolved to.
    pub image_ref: String,
    pub image_id: String,
    pub created_at: DateTime<Utc>,
    /// The image's STOPSIGNAL, if it has one.
    pub stop_signal: Option<String>,
    /// `/<cgroup_root>/<pod cgroup>/<id>`, as in the spec.
    pub cgroups_path: String,
    /// libcontainer's state directory (`ROOT/libcontainer-state`).
    pub state_root: PathBuf,
    /// The host's cgroup hierarchies as the kubelet found them, so that the shim finds
    /// the container's cgroup without reading the whole mount table again (at a hundred
    /// pods that table is about 100 KB). Records written before this field have none,
    /// and their shims read the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_hierarchies: Option<Vec<Hierarchy>>,
}

impl ContainerRecord {
    /// The host's cgroup layout: the one recorded at create, else read now (`None` if
    /// the mount table cannot be read).
    pub fn cgroups(&self) -> Option<Cgroups> {
        match &self.cgroup_hierarchies {
            Some(hierarchies) => Some(Cgroups::from_hierarchies(hierarchies.clone())),
            None => Cgroups::detect().ok(),
        }
    }
}

/// Written by the shim once the container's process runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedRecord {
    /// Host pid of the container's init process.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22), so that a
    /// recycled pid is not mistaken for the container.
    pub pid_start_ticks: u64,
    pub shim_pid: u32,
    pub shim_start_ticks: u64,
    pub started_at: DateTime<Utc>,
}

/// Written by the shim when the container's process has ended (or failed to start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit status, 128 + signal number when killed by a signal.
    pub exit_code: i32,
    pub finished_at: DateTime<Utc>,
    pub oom_killed: bool,
    /// `StartError` when the process never ran.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// What a record has to survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A host crash too: fsync'd before the rename (a container's `meta.json`, which
    /// keeps its name, attempt and logs known after a reboot, as containerd's metadata
    /// database does).
    Durable,
    /// The kubelet and the shim, not a host crash: the state of processes, which a
    /// host crash ends anyway (`state.json`, `exit.json`, an exec's process). runc
    /// keeps the same state under `/run`, a tmpfs. Written to the page cache only, so
    /// a container start or exit does not wait for the disk; after a crash such a
    /// record may be missing or empty, and readers take that as a container whose
    /// status is unknown.
    Volatile,
}

/// Writes `value` as JSON to `path` so that readers see the old file or the whole new one.
pub fn write_json_atomic<T: Serialize>(
    path: &Path,
    value: &T,
    durability: Durability,
) -> std::io::Result<()> {
    let data = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("record");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&data)?;
        if durability == Durability::Durable {
            file.sync_all()?;
        }
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Reads a JSON record; `Ok(None)` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
            RuntimeError::io(
                format!("reading {}", path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::io(format!("reading {}", path.display()), e)),
    }
}

/// The start time (clock ticks since boot) of a live process, `None` if it is gone or a
/// zombie.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after[0] is field 3 (state); field 22 (starttime) is after[19].
    if fields.first().is_some_and(|s| *s == "Z" || *s == "X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is still the process that was recorded with `start_ticks`.
pub fn process_alive(pid: u32, start_ticks: u64) -> bool {
    pid != 0 && process_start_ticks(pid) == Some(start_ticks)
}

/// Random 64-hex id, like containerd's.
pub fn new_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(EXIT_FILE);
        assert!(read_json::<ExitRecord>(&path).expect("read").is_none());
        let record = ExitRecord {
            exit_code: 137,
            finished_at: Utc::now(),
            oom_killed: true,
            reason: None,
            message: None,
        };
        write_json_atomic(&path, &record, Durability::Volatile).expect("write");
        assert_eq!(read_json::<ExitRecord>(&path).expect("read"), Some(record));
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    fn sample_record(hierarchies: Option<Vec<Hierarchy>>) -> ContainerRecord {
        ContainerRecord {
            id: new_id(),
            sandbox_id: new_id(),
            config: crate::runtime::linux::spec::tests::sample_config(),
            image_ref: "busybox".into(),
            image_id: "sha256:1".into(),
            created_at: Utc::now(),
            stop_signal: None,
            cgroups_path: "/rkube/pod1/c1".into(),
            state_root: PathBuf::from("/var/lib/rkube/libcontainer-state"),
            cgroup_hierarchies: hierarchies,
        }
    }

    #[test]
    fn the_shim_takes_the_recorded_hierarchies_and_old_records_detect() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(META_FILE);
        // Not this host's layout: a shim reading the record must see these.
        let recorded = vec![Hierarchy {
            mount_point: PathBuf::from("/sys/fs/cgroup/memory"),
            controllers: vec!["memory".into()],
            unified: false,
        }];
        write_json_atomic(&path, &sample_record(Some(recorded.clone())), Durability::Volatile).expect("write");
        let record = read_json::<ContainerRecord>(&path).expect("read").expect("record");
        let cgroups = record.cgroups().expect("recorded layout");
        assert_eq!(cgroups.hierarchies(), recorded.as_slice());
        assert_eq!(
            cgroups.controller_dir("memory", &record.cgroups_path),
            Some(PathBuf::from("/sys/fs/cgroup/memory/rkube/pod1/c1"))
        );

        // A record written before the field existed: no key at all, and the shim reads
        // the host's own table.
        let mut old = serde_json::to_value(sample_record(None)).expect("json");
        assert!(old.get("cgroup_hierarchies").is_none());
        old.as_object_mut().expect("object").remove("cgroup_hierarchies");
        let record: ContainerRecord = serde_json::from_value(old).expect("old record");
        assert!(record.cgroup_hierarchies.is_none());
        let detected = Cgroups::detect().expect("mountinfo");
        assert_eq!(record.cgroups().expect("detected").hierarchies(), detected.hierarchies());
    }

    #[test]
    fn own_process_is_alive_and_ids_are_64_hex() {
        let me = std::process::id();
        let ticks = process_start_ticks(me).expect("own start time");
        assert!(process_alive(me, ticks));
        assert!(!process_alive(me, ticks + 1));
        let id = new_id();
        assert_eq!(id.len(), 64);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
