//! `rkube`: the front door. `rkube up` brings up a single-node lab, `rkube down` stops
//! it and cleans the host, `rkube reset` also deletes its state; the node-side commands
//! (`images`, `ps`, `logs`, `exec`…) look inside the lab's node like the docker CLI.

mod agent;
mod bootstrap;
mod down;
mod join;
mod lab;
mod loadbalancer;
mod node;
mod server;
mod term;
mod up;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "rkube", version, about = "A small, real Kubernetes: single-node labs and node-side tools.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
struct LabArgs {
    /// The lab's directory (state, kubeconfig, logs).
    #[arg(long, default_value = lab::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a single-node lab: apiserver, scheduler, controller-manager and kubelet.
    Up {
        #[command(flatten)]
        lab: LabArgs,
        /// The apiserver's port (default 6443, or the lab's previous port).
        #[arg(long)]
        port: Option<u16>,
        /// Run in the background and return once the node is Ready.
        #[arg(long)]
        detach: bool,
        /// The port the ingress controller serves HTTP on (default 80, or the lab's
        /// previous one).
        #[arg(long)]
        ingress_port: Option<u16>,
        /// The port it serves HTTPS on (default 443, or the lab's previous one).
        #[arg(long)]
        ingress_https_port: Option<u16>,
    },
    /// Run a control plane and its node that other nodes can join (in the foreground,
    /// as systemd runs it).
    Server {
        #[command(flatten)]
        lab: LabArgs,
        /// The apiserver's port.
        #[arg(long, default_value_t = 6443)]
        port: u16,
        /// The node's address, which other nodes reach (default: the default route's).
        #[arg(long)]
        node_ip: Option<Ipv4Addr>,
        /// The node's name (default: the host name).
        #[arg(long)]
        node_name: Option<String>,
        /// The pods' network; each node gets a /24 of it.
        #[arg(long, default_value = "10.42.0.0/16")]
        cluster_cidr: String,
        /// The Services' network.
        #[arg(long, default_value = "10.43.0.0/16")]
        service_cidr: String,
        /// More names or addresses for the apiserver's certificate.
        #[arg(long = "tls-san")]
        tls_sans: Vec<String>,
        /// An external etcd instead of the embedded store (comma-separated URLs):
        /// servers sharing one etcd make an HA control plane.
        #[arg(long, value_delimiter = ',')]
        etcd_servers: Vec<String>,
        /// With --etcd-servers, join the control plane of the server whose
        /// DATA_DIR/server/token this is (its CA and keys are restored from etcd).
        #[arg(long, env = "RKUBE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Join a cluster as a worker node (in the foreground, as systemd runs it).
    Agent {
        #[command(flatten)]
        lab: LabArgs,
        /// The server's apiserver, https://host:6443.
        #[arg(long)]
        server: String,
        /// The join token the server printed (DATA_DIR/server/token on the server).
        #[arg(long, env = "RKUBE_TOKEN", hide_env_values = true)]
        token: String,
        /// The node's address (default: the default route's).
        #[arg(long)]
        node_ip: Option<Ipv4Addr>,
        /// The node's name (default: the host name).
        #[arg(long)]
        node_name: Option<String>,
        /// The port on 127.0.0.1 where the agent's load balancer for the apiservers
        /// listens.
        #[arg(long, default_value_t = loadbalancer::DEFAULT_PORT)]
        lb_server_port: u16,
    },
    /// Stop the lab and remove its containers, mounts, network and cgroups.
    Down {
        #[command(flatten)]
        lab: LabArgs,
    },
    /// `down`, then delete the lab's state.
    Reset {
        #[command(flatten)]
        lab: LabArgs,
    },
    /// List the node's images (docker images).
    Images {
        #[command(flatten)]
        lab: LabArgs,
        /// Only show image IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Pull an image from a registry into the node's store.
    Pull {
        #[command(flatten)]
        lab: LabArgs,
        image: String,
    },
    /// Remove images (untag; delete when no tag is left).
    Rmi {
        #[command(flatten)]
        lab: LabArgs,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Load images from a `docker save` tarball or an OCI archive.
    Load {
        #[command(flatten)]
        lab: LabArgs,
        /// The archive to read.
        #[arg(short, long)]
        input: PathBuf,
    },
    /// Save images to a tar archive (docker save format).
    Save {
        #[command(flatten)]
        lab: LabArgs,
        /// Write to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        images: Vec<String>,
    },
    /// Image housekeeping (`rkube image prune` removes images no container uses).
    Image {
        #[command(flatten)]
        lab: LabArgs,
        #[arg(value_parser = ["prune"])]
        action: String,
    },
    /// List containers (docker ps).
    Ps {
        #[command(flatten)]
        lab: LabArgs,
        /// Show all containers, not only running ones.
        #[arg(short, long)]
        all: bool,
        /// Only show container IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print a container's logs.
    Logs {
        #[command(flatten)]
        lab: LabArgs,
        #[arg(short = 't', long)]
        timestamps: bool,
        /// Only the last N lines.
        #[arg(short = 'n', long)]
        tail: Option<usize>,
        container: String,
    },
    /// Run a command in a running container.
    Exec {
        #[command(flatten)]
        lab: LabArgs,
        /// Keep stdin open.
        #[arg(short, long)]
        interactive: bool,
        /// Allocate a pseudo-TTY.
        #[arg(short, long)]
        tty: bool,
        container: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Low-level information on a container or an image, as JSON.
    Inspect {
        #[command(flatten)]
        lab: LabArgs,
        name: String,
    },
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("rkube {what} needs root: the node creates namespaces, cgroups, mounts and a bridge (run it with sudo)");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    kubelet::runtime::linux::shim_main_if_requested();
    let cli = Cli::parse();
    // The lab logs what it does; the one-shot commands only what went wrong.
    let default_level = if matches!(cli.command, Command::Up { .. } | Command::Server { .. } | Command::Agent { .. }) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match cli.command {
            Command::Up { lab, port, detach, ingress_port, ingress_https_port } => {
                require_root("up")?;
                let lab = lab::Lab::new(&lab.data_dir);
                let settings = lab.settings(lab::LabPorts { api: port, ingress_http: ingress_port, ingress_https: ingress_https_port })?;
                if detach {
                    up::run_detached(&lab, &settings).await
                } else {
                    if let Some(pid) = lab.running_pid() {
                        bail!("a lab is already running in {} (pid {pid}); stop it with rkube down --data-dir {}", lab.dir.display(), lab.dir.display());
                    }
                    let shutdown = component_base::signals::shutdown_on_signals();
                    up::run_foreground(&lab, &settings, &Default::default(), shutdown).await
                }
            }
            Command::Server { lab, port, node_ip, node_name, cluster_cidr, service_cidr, tls_sans, etcd_servers, token } => {
                require_root("server")?;
                let lab = lab::Lab::new(&lab.data_dir);
                if let Some(pid) = lab.running_pid() {
                    bail!("rkube is already running in {} (pid {pid})", lab.dir.display());
                }
                for (flag, cidr) in [("--cluster-cidr", &cluster_cidr), ("--service-cidr", &service_cidr)] {
                    cidr.parse::<ipnet::Ipv4Net>().map_err(|e| anyhow::anyhow!("{flag} {cidr}: {e}"))?;
                }
                let token: Option<join::JoinToken> = token.map(|t| t.parse().map_err(|e: anyhow::Error| e.context("--token"))).transpose()?;
                if token.is_some() && etcd_servers.is_empty() {
                    bail!("--token joins this server to the control plane of another on a shared etcd: give --etcd-servers too");
                }
                if !etcd_servers.is_empty() {
                    let pki = apiserver::server::pki_dir(&lab.dir);
                    if bootstrap::restore(&etcd_servers, token.as_ref(), &pki).await? {
                        if let Some(token) = &token {
                            let path = server::token_file(&lab);
                            component_base::pki::write_file(&path, format!("{token}\n").as_bytes(), 0o600)?;
                        }
                        println!("joined the control plane in etcd at {}", etcd_servers.join(","));
                    }
                }
                let settings = lab.cluster_settings(port, &cluster_cidr, &service_cidr)?;
                let options = up::ServerOptions { multi_node: true, node_ip, node_name, tls_sans, etcd_servers };
                up::run_foreground(&lab, &settings, &options, component_base::signals::shutdown_on_signals()).await
            }
            Command::Agent { lab, server, token, node_ip, node_name, lb_server_port } => {
                require_root("agent")?;
                let lab = lab::Lab::new(&lab.data_dir);
                if let Some(pid) = lab.running_pid() {
                    bail!("rkube is already running in {} (pid {pid})", lab.dir.display());
                }
                let token = token.parse().map_err(|e: anyhow::Error| e.context("--token"))?;
                let options = agent::AgentOptions { server: server.trim_end_matches('/').to_string(), token, node_ip, node_name, lb_port: lb_server_port };
                agent::run(&lab, &options, component_base::signals::shutdown_on_signals()).await
            }
            Command::Down { lab } => {
                require_root("down")?;
                down::down(&lab::Lab::new(&lab.data_dir), false).await
            }
            Command::Reset { lab } => {
                require_root("reset")?;
                down::down(&lab::Lab::new(&lab.data_dir), true).await
            }
            Command::Images { lab, quiet } => node::images(&lab::Lab::new(&lab.data_dir), quiet),
            Command::Pull { lab, image } => node::pull(&lab::Lab::new(&lab.data_dir), &image).await,
            Command::Rmi { lab, images } => node::rmi(&lab::Lab::new(&lab.data_dir), &images).await,
            Command::Load { lab, input } => node::load(&lab::Lab::new(&lab.data_dir), &input),
            Command::Save { lab, output, images } => node::save(&lab::Lab::new(&lab.data_dir), output.as_deref(), &images),
            Command::Image { lab, .. } => node::prune(&lab::Lab::new(&lab.data_dir)).await,
            Command::Ps { lab, all, quiet } => node::ps(&lab::Lab::new(&lab.data_dir), all, quiet).await,
            Command::Logs { lab, timestamps, tail, container } => node::logs(&lab::Lab::new(&lab.data_dir), &container, timestamps, tail).await,
            Command::Exec { lab, interactive, tty, container, command } => {
                require_root("exec")?;
                let code = node::exec(&lab::Lab::new(&lab.data_dir), &container, command, interactive, tty).await?;
                std::process::exit(code);
            }
            Command::Inspect { lab, name } => node::inspect(&lab::Lab::new(&lab.data_dir), &name).await,
        }
    })
}
