//! Liveness, readiness and startup probes (exec, httpGet, tcpSocket), with Kubernetes'
//! timing: `initialDelaySeconds` from the container's start, `periodSeconds`,
//! `timeoutSeconds`, and success/failure thresholds. Startup gates the other two.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::runtime::{ExecRequest, Runtime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// Probe state of one running container (reset when the container id changes).
#[derive(Debug)]
pub struct Tracker {
    pub container_id: String,
    started: Instant,
    pub startup_done: bool,
    pub ready: bool,
    failures: [u32; 3],
    successes: [u32; 3],
    next_due: [Option<Instant>; 3],
}

/// What a round of probing asks the pod worker to do.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Restart the container: the message for the Killing event.
    pub kill: Option<String>,
    /// Warning events (`Unhealthy`) to record.
    pub unhealthy: Vec<String>,
    /// Readiness or startup changed (the status needs writing).
    pub changed: bool,
    /// When the next probe is due.
    pub next: Option<Instant>,
}

fn idx(kind: Kind) -> usize {
    kind as usize
}

impl Tracker {
    pub fn new(container_id: &str, container: &Container, started: Instant) -> Tracker {
        Tracker {
            container_id: container_id.into(),
            started,
            startup_done: container.startup_probe.is_none(),
            // Without a readiness probe a started container is ready.
            ready: container.readiness_probe.is_none() && container.startup_probe.is_none(),
            failures: [0; 3],
            successes: [0; 3],
            next_due: [None; 3],
        }
    }

    /// Runs the probes that are due.
    pub async fn run_due(&mut self, runtime: &Arc<dyn Runtime>, container: &Container, pod_ip: Option<&str>) -> Outcome {
        let mut out = Outcome::default();
        let now = Instant::now();
        let kinds: &[Kind] = if self.startup_done { &[Kind::Liveness, Kind::Readiness] } else { &[Kind::Startup] };
        for &kind in kinds {
            let probe = match kind {
                Kind::Startup => container.startup_probe.as_ref(),
                Kind::Liveness => container.liveness_probe.as_ref(),
                Kind::Readiness => container.readiness_probe.as_ref(),
            };
            let Some(probe) = probe else {
                if kind == Kind::Readiness && !self.ready {
                    self.ready = true;
                    out.changed = true;
                }
                continue;
            };
            let i = idx(kind);
            let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
            let due = self.next_due[i].unwrap_or(self.started + Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64));
            if now < due {
                out.next = Some(out.next.map_or(due, |n| n.min(due)));
                continue;
            }
            let result = run(runtime, &self.container_id, container, probe, pod_ip).await;
            self.next_due[i] = Some(Instant::now() + period);
            out.next = Some(out.next.map_or(now + period, |n| n.min(now + period)));
            match result {
                Ok(()) => {
                    self.failures[i] = 0;
                    self.successes[i] += 1;
                    let needed = match kind {
                        Kind::Readiness => probe.success_threshold.unwrap_or(1).max(1) as u32,
                        _ => 1,
                    };
                    if self.successes[i] >= needed {
                        match kind {
                            Kind::Startup => {
                                self.startup_done = true;
                                out.changed = true;
                                // The other probes start now.
                                self.next_due = [None; 3];
                                self.started = Instant::now();
                                if container.readiness_probe.is_none() {
                                    self.ready = true;
                                }
                            }
                            Kind::Readiness if !self.ready => {
                                self.ready = true;
                                out.changed = true;
                            }
                            _ => {}
                        }
                    }
                }
                Err(message) => {
                    self.successes[i] = 0;
                    self.failures[i] += 1;
                    out.unhealthy.push(format!("{} probe failed: {message}", kind.name()));
                    let threshold = probe.failure_threshold.unwrap_or(3).max(1) as u32;
                    if self.failures[i] >= threshold {
                        match kind {
                            Kind::Readiness => {
                                if self.ready {
                                    self.ready = false;
                                    out.changed = true;
                                }
                            }
                            Kind::Liveness | Kind::Startup => {
                                out.kill = Some(format!(
                                    "Container {} failed {} probe, will be restarted",
                                    container.name,
                                    kind.name().to_ascii_lowercase()
                                ));
                                self.failures[i] = 0;
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// A dial error as Go's net package words it, which is what users see in events.
fn dial_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        std::io::ErrorKind::TimedOut => "i/o timeout".into(),
        std::io::ErrorKind::HostUnreachable => "connect: no route to host".into(),
        std::io::ErrorKind::NetworkUnreachable => "connect: network is unreachable".into(),
        _ => e.to_string(),
    }
}

fn port_of(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("couldn't find port {name:?} in the container")),
    }
}

/// Runs one probe; Err carries the message for the Unhealthy event.
pub async fn run(runtime: &Arc<dyn Runtime>, container_id: &str, container: &Container, probe: &Probe, pod_ip: Option<&str>) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(exec) = &probe.exec {
        let command = exec.command.clone().unwrap_or_default();
        let request = ExecRequest { container_id: container_id.into(), command: command.clone(), tty: false, stdin: false };
        let fut = async {
            let mut session = runtime.exec(request).await.map_err(|e| e.to_string())?;
            let mut output = Vec::new();
            if let Some(mut out) = session.stdout.take() {
                let _ = out.read_to_end(&mut output).await;
            }
            let code = session.exit.await.map_err(|_| "the exec session ended without an exit code".to_string())?;
            if code == 0 {
                Ok(())
            } else {
                let text = String::from_utf8_lossy(&output).trim().to_string();
                Err(if text.is_empty() { format!("command {command:?} exited with {code}") } else { text })
            }
        };
        return match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
        };
    }
    let host_of = |h: &Option<String>| h.clone().filter(|h| !h.is_empty()).or_else(|| pod_ip.map(str::to_string)).unwrap_or_else(|| "127.0.0.1".into());
    if let Some(tcp) = &probe.tcp_socket {
        let port = port_of(container, &tcp.port)?;
        let host = host_of(&tcp.host);
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {}", dial_error(&e))),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(http) = &probe.http_get {
        let port = port_of(container, &http.port)?;
        let host = host_of(&http.host);
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let scheme = http.scheme.clone().unwrap_or_else(|| "HTTP".into());
        if scheme.eq_ignore_ascii_case("https") {
            return Err("HTTPS probes are not supported yet".into());
        }
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n");
        for h in http.http_headers.iter().flatten() {
            request.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        request.push_str("\r\n");
        let url = format!("http://{host}:{port}{path}");
        let fut = async {
            let mut stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("Get \"{url}\": dial tcp {host}:{port}: {}", dial_error(&e)))?;
            stream.write_all(request.as_bytes()).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
            let mut buf = vec![0u8; 1024];
            let n = stream.read(&mut buf).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
            let head = String::from_utf8_lossy(&buf[..n]);
            let code: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        };
        return match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)")),
        };
    }
    Err("the probe has no handler (exec, httpGet or tcpSocket)".into())
}
