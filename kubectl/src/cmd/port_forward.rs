//! `kubectl port-forward TYPE/NAME [LOCAL:]REMOTE…`: listens on the local ports
//! (`--address`, default localhost) and forwards each connection to the pod through the
//! apiserver (kube-rs portforward); for a Service the port is mapped to its targetPort.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::context::Ctx;
use crate::errors;
use crate::write;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TYPE/NAME or POD, then [LOCAL_PORT:]REMOTE_PORT…
    pub args: Vec<String>,
    /// Addresses to listen on (comma separated). Only accepts IP addresses or localhost as a value.
    #[arg(long, value_delimiter = ',', default_value = "localhost")]
    pub address: Vec<String>,
    /// The length of time (like 5s, 2m, or 3h, higher than zero) to wait until at least one pod is running
    #[arg(long = "pod-running-timeout", default_value = "1m0s")]
    pub pod_running_timeout: String,
}

/// `LOCAL:REMOTE`, `PORT` (both the same) or `:REMOTE` (a random local port: 0).
pub fn parse_port(spec: &str) -> anyhow::Result<(u16, String)> {
    let (local, remote) = match spec.split_once(':') {
        Some((l, r)) => (l, r),
        None => (spec, spec),
    };
    let local: u16 = if local.is_empty() {
        0
    } else {
        local
            .parse()
            .map_err(|_| anyhow::anyhow!("Error parsing local port '{local}': strconv.ParseUint: parsing {local:?}: invalid syntax"))?
    };
    if remote.is_empty() {
        anyhow::bail!("Remote port must be > 0");
    }
    Ok((local, remote.to_string()))
}

/// The container port a service port (number or name) leads to in `pod`.
fn target_port(svc: Option<&Value>, pod: &Value, remote: &str) -> anyhow::Result<u16> {
    let by_name = |name: &str| -> Option<u16> {
        pod["spec"]["containers"].as_array()?.iter().find_map(|c| {
            c["ports"].as_array()?.iter().find_map(|p| {
                (p["name"] == name)
                    .then(|| p["containerPort"].as_u64().map(|n| n as u16))
                    .flatten()
            })
        })
    };
    if let Some(svc) = svc {
        let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let found = ports.iter().find(|p| {
            p["port"].as_u64().map(|n| n.to_string()).as_deref() == Some(remote)
                || p["name"] == remote
        });
        let Some(p) = found else {
            anyhow::bail!(
                "Service {} does not have a service port {remote}",
                write::name_of(svc)
            );
        };
        return match &p["targetPort"] {
            Value::Number(n) => Ok(n.as_u64().unwrap_or_default() as u16),
            Value::String(s) => by_name(s).ok_or_else(|| {
                anyhow::anyhow!(
                    "Pod '{}' does not have a named port '{s}'",
                    write::name_of(pod)
                )
            }),
            _ => Ok(p["port"].as_u64().unwrap_or_default() as u16),
        };
    }
    match remote.parse::<u16>() {
        Ok(n) => Ok(n),
        Err(_) => by_name(remote).ok_or_else(|| {
            anyhow::anyhow!(
                "Pod '{}' does not have a named port '{remote}'",
                write::name_of(pod)
            )
        }),
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    if args.args.len() < 2 {
        return errors::usage(
            "port-forward",
            "TYPE/NAME and list of ports are required for port-forward",
        );
    }
    let target = &args.args[0];
    let pod = super::exec::resolve_pod(ctx, target).await?;
    let svc = match target.split_once('/') {
        Some((t, n)) if ctx.discovery().await?.resolve(t)?.kind == "Service" => {
            let ns = ctx.namespace().await?;
            Some(
                write::get(
                    &ctx.client().await?,
                    &format!("/api/v1/namespaces/{ns}/services/{n}"),
                )
                .await?,
            )
        }
        _ => None,
    };
    if pod["status"]["phase"] != "Running" {
        anyhow::bail!(
            "unable to forward port because pod is not running. Current status={}",
            pod["status"]["phase"].as_str().unwrap_or_default()
        );
    }
    let ns = write::ns_of(&pod).unwrap_or_default().to_string();
    let name = write::name_of(&pod).to_string();
    let client = ctx.client().await?;
    let api: kube::Api<Pod> = kube::Api::namespaced(client, &ns);
    let mut listeners = Vec::new();
    for spec in &args.args[1..] {
        let (local, remote) = parse_port(spec)?;
        let remote = target_port(svc.as_ref(), &pod, &remote)?;
        for addr in &args.address {
            let addrs: Vec<String> = if addr == "localhost" {
                vec!["127.0.0.1".into(), "[::1]".into()]
            } else {
                vec![addr.clone()]
            };
            let mut local_port = local;
            for a in addrs {
                match tokio::net::TcpListener::bind(format!("{a}:{local_port}")).await {
                    Ok(l) => {
                        let bound = l.local_addr()?.port();
                        local_port = bound;
                        println!("Forwarding from {a}:{bound} -> {remote}");
                        listeners.push((l, bound, remote));
                    }
                    Err(e) => {
                        if a.starts_with('[') {
                            continue; // no IPv6
                        }
                        anyhow::bail!("unable to listen on port {local_port}: {e}");
                    }
                }
            }
        }
    }
    let mut tasks = Vec::new();
    for (listener, local, remote) in listeners {
        let api = api.clone();
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { break };
                println!("Handling connection for {local}");
                let api = api.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let result: anyhow::Result<()> = async {
                        let mut pf = api.portforward(&name, &[remote]).await?;
                        let mut upstream = pf.take_stream(remote).ok_or_else(|| anyhow::anyhow!("no stream"))?;
                        let errors = pf.take_error(remote);
                        tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
                        drop(upstream);
                        if let Some(e) = errors {
                            if let Some(msg) = e.await {
                                anyhow::bail!("{msg}");
                            }
                        }
                        pf.join().await?;
                        Ok(())
                    }
                    .await;
                    if let Err(e) = result {
                        eprintln!("E{} portforward.go] \"Unhandled Error\" err=\"an error occurred forwarding {local} -> {remote}: {e:#}\"", chrono::Local::now().format("%m%d %H:%M:%S%.6f"));
                    }
                });
            }
        }));
    }
    futures::future::join_all(tasks).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_port_specs() {
        assert_eq!(parse_port("8080:80").ok(), Some((8080, "80".to_string())));
        assert_eq!(parse_port("80").ok(), Some((80, "80".to_string())));
        assert_eq!(parse_port(":http").ok(), Some((0, "http".to_string())));
        assert!(parse_port("x:80").is_err());
    }

    #[test]
    fn maps_service_ports_to_container_ports() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"ports": [{"name": "web", "containerPort": 8080}]}]}});
        let svc = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80, "targetPort": "web"}, {"port": 81, "targetPort": 9000}]}});
        assert_eq!(target_port(Some(&svc), &pod, "80").ok(), Some(8080));
        assert_eq!(target_port(Some(&svc), &pod, "81").ok(), Some(9000));
        assert!(target_port(Some(&svc), &pod, "82").is_err());
        assert_eq!(target_port(None, &pod, "web").ok(), Some(8080));
    }
}
