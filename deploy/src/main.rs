//! `rkube`: the front door. `rkube up` brings up a single-node lab, `rkube down` stops
//! it and cleans the host, `rkube reset` also deletes its state; the node-side commands
//! (`images`, `ps`, `logs`, `exec`…) look inside the lab's node like the docker CLI.

mod down;
mod lab;
mod up;

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
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("rkube {what} needs root: the node creates namespaces, cgroups, mounts and a bridge (run it with sudo)");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    kubelet::runtime::linux::shim_main_if_requested();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match cli.command {
            Command::Up { lab, port, detach } => {
                require_root("up")?;
                let lab = lab::Lab::new(&lab.data_dir);
                let settings = lab.settings(port)?;
                if detach {
                    up::run_detached(&lab, &settings).await
                } else {
                    if let Some(pid) = lab.running_pid() {
                        bail!("a lab is already running in {} (pid {pid}); stop it with rkube down --data-dir {}", lab.dir.display(), lab.dir.display());
                    }
                    let shutdown = component_base::signals::shutdown_on_signals();
                    up::run_foreground(&lab, &settings, shutdown).await
                }
            }
            Command::Down { lab } => {
                require_root("down")?;
                down::down(&lab::Lab::new(&lab.data_dir), false).await
            }
            Command::Reset { lab } => {
                require_root("reset")?;
                down::down(&lab::Lab::new(&lab.data_dir), true).await
            }
        }
    })
}
