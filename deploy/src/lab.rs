//! A lab's identity and files: everything lives under its data dir (`DIR/db` for the
//! apiserver's embedded store, `DIR/admin.kubeconfig`, `DIR/agent` for the kubelet's root,
//! `DIR/storage` for local-path volumes, `DIR/lab.json` for the names
//! chosen at first start, `DIR/rkube.pid`, `DIR/rkube.log`). The bridge, cgroup root and
//! pod network are chosen per lab, so two labs can run on one machine.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default lab's directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rkube";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a lab settings file: {source}")]
    Settings {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no free 10.x.0.0/16 network for the lab's pods (10.42 to 10.99 are all in use)")]
    NoFreeNetwork,
}

/// Names and networks chosen once per lab and kept in `DIR/lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LabSettings {
    pub port: u16,
    /// Where the ingress controller serves HTTP on the node (80, as k3s's Traefik).
    #[serde(default = "default_ingress_port")]
    pub ingress_port: u16,
    /// Where it serves HTTPS (443).
    #[serde(default = "default_ingress_https_port")]
    pub ingress_https_port: u16,
    pub cluster_cidr: String,
    pub service_cidr: String,
    pub bridge_name: String,
    pub cgroup_root: String,
}

fn default_ingress_port() -> u16 {
    80
}

fn default_ingress_https_port() -> u16 {
    443
}

/// Ports asked for on the command line (`None`: keep the lab's).
#[derive(Debug, Clone, Copy, Default)]
pub struct LabPorts {
    pub api: Option<u16>,
    pub ingress_http: Option<u16>,
    pub ingress_https: Option<u16>,
}

pub struct Lab {
    pub dir: PathBuf,
}

impl Lab {
    pub fn new(dir: &Path) -> Lab {
        // An absolute path, so a detached child and `rkube down` from elsewhere agree.
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        Lab { dir }
    }

    pub fn agent_dir(&self) -> PathBuf {
        self.dir.join("agent")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("rkube.pid")
    }
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("rkube.log")
    }
    fn settings_file(&self) -> PathBuf {
        self.dir.join("lab.json")
    }

    /// A short tag that names this lab's host objects (bridge, cgroups).
    fn tag(&self) -> String {
        // FNV-1a of the path: stable, and short enough for a 15-byte interface name.
        let mut h: u32 = 0x811c_9dc5;
        for b in self.dir.to_string_lossy().bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        format!("{:06x}", h & 0xff_ffff)
    }

    pub fn load_settings(&self) -> Result<Option<LabSettings>, LabError> {
        let path = self.settings_file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| LabError::Settings { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LabError::Io { path, source }),
        }
    }

    /// The lab's settings: as saved, or chosen now (a free pod network) and saved.
    /// `ports` are the apiserver's and the ingress controller's HTTP and HTTPS ports,
    /// each kept from before (or defaulted) when not given.
    pub fn settings(&self, ports: LabPorts) -> Result<LabSettings, LabError> {
        if let Some(mut s) = self.load_settings()? {
            let before = s.clone();
            s.port = ports.api.unwrap_or(s.port);
            s.ingress_port = ports.ingress_http.unwrap_or(s.ingress_port);
            s.ingress_https_port = ports.ingress_https.unwrap_or(s.ingress_https_port);
            if s != before {
                self.save(&s)?;
            }
            return Ok(s);
        }
        let octet = claim_pod_network(&self.dir).ok_or(LabError::NoFreeNetwork)?;
        let tag = self.tag();
        let settings = LabSettings {
            port: ports.api.unwrap_or(6443),
            ingress_port: ports.ingress_http.unwrap_or_else(default_ingress_port),
            ingress_https_port: ports.ingress_https.unwrap_or_else(default_ingress_https_port),
            cluster_cidr: format!("10.{octet}.0.0/16"),
            // Services take the next /16 (10.43 beside k3s's 10.42, and so on).
            service_cidr: format!("10.{}.0.0/16", octet + 1),
            bridge_name: format!("rkube-{tag}"),
            cgroup_root: format!("rkube-{tag}"),
        };
        self.save(&settings)?;
        Ok(settings)
    }

    /// The settings of a node that joins or starts a cluster with the given networks:
    /// its own bridge and cgroup names, no network claim (the cluster chose them).
    pub fn cluster_settings(&self, port: u16, cluster_cidr: &str, service_cidr: &str) -> Result<LabSettings, LabError> {
        let tag = self.tag();
        let settings = LabSettings {
            port,
            ingress_port: default_ingress_port(),
            ingress_https_port: default_ingress_https_port(),
            cluster_cidr: cluster_cidr.to_string(),
            service_cidr: service_cidr.to_string(),
            bridge_name: format!("rkube-{tag}"),
            cgroup_root: format!("rkube-{tag}"),
        };
        self.save(&settings)?;
        Ok(settings)
    }

    fn save(&self, s: &LabSettings) -> Result<(), LabError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| LabError::Io { path: self.dir.clone(), source })?;
        let path = self.settings_file();
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(s).map_err(|source| LabError::Settings { path: path.clone(), source })?;
        std::fs::write(&tmp, bytes).map_err(|source| LabError::Io { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, &path).map_err(|source| LabError::Io { path, source })
    }

    /// Records this process as the lab's (`rkube down` stops it).
    pub fn write_pid(&self) -> Result<(), LabError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| LabError::Io { path: self.dir.clone(), source })?;
        let path = self.pid_file();
        std::fs::write(&path, std::process::id().to_string()).map_err(|source| LabError::Io { path, source })
    }

    /// The pid of the lab's running `rkube up`, `server` or `agent`, if any.
    pub fn running_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()?;
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        // A pid reused by an unrelated process is not our lab.
        let ours = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                let args: Vec<&str> = c.split('\0').collect();
                args.first().is_some_and(|a| a.contains("rkube")) && args.iter().any(|a| matches!(*a, "up" | "server" | "agent"))
            })
            .unwrap_or(false);
        (alive && ours).then_some(pid)
    }
}

/// Where labs record which 10.x networks they hold, so two labs started at the same
/// moment, or one that is down right now, are never handed the same network.
const CLAIMS_DIR: &str = "/var/lib/rkube-networks";

/// Claims the second octet of a 10.x.0.0/16 (pods) and 10.x+1 (Services) that no
/// interface on this host uses and no other lab holds. A claim file is created with
/// O_EXCL; a claim whose lab directory is gone is stale and taken over.
fn claim_pod_network(lab_dir: &Path) -> Option<u8> {
    let used = host_ipv4_networks();
    let claims = Path::new(CLAIMS_DIR);
    std::fs::create_dir_all(claims).ok()?;
    for octet in (42u8..=98).step_by(2) {
        if used.iter().any(|(a, b)| *a == 10 && (*b == octet || *b == octet + 1)) {
            continue;
        }
        let claim = claims.join(format!("10.{octet}"));
        let me = lab_dir.to_string_lossy().into_owned();
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&claim) {
            Ok(mut f) => {
                use std::io::Write;
                if f.write_all(me.as_bytes()).is_ok() {
                    return Some(octet);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&claim).unwrap_or_default();
                if holder == me {
                    return Some(octet);
                }
                // Another lab's: taken, unless that lab no longer exists.
                if !holder.is_empty() && !Path::new(&holder).join("lab.json").exists() && std::fs::remove_file(&claim).is_ok() {
                    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).create_new(true).open(&claim) {
                        use std::io::Write;
                        if f.write_all(me.as_bytes()).is_ok() {
                            return Some(octet);
                        }
                    }
                }
            }
            Err(_) => return None,
        }
    }
    None
}

/// Gives up the lab's network claim (`rkube reset`).
pub fn release_pod_network(lab_dir: &Path, settings: &LabSettings) {
    let Some(octet) = settings.cluster_cidr.split('.').nth(1) else { return };
    let claim = Path::new(CLAIMS_DIR).join(format!("10.{octet}"));
    if std::fs::read_to_string(&claim).map(|h| Path::new(&h) == lab_dir).unwrap_or(false) {
        let _ = std::fs::remove_file(claim);
    }
}

/// (first, second) octets of every IPv4 address on this host (/proc/net/fib_trie's
/// local entries).
fn host_ipv4_networks() -> Vec<(u8, u8)> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/fib_trie") {
        let lines: Vec<&str> = text.lines().collect();
        for w in lines.windows(2) {
            if w[1].contains("/32 host LOCAL") {
                if let Some(ip) = w[0].split_whitespace().last().and_then(|s| s.parse::<Ipv4Addr>().ok()) {
                    let o = ip.octets();
                    out.push((o[0], o[1]));
                }
            }
        }
    }
    out
}
