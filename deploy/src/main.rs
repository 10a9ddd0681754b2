//! `rkube`: the front door. `rkube up` brings up a single-node lab, `rkube down` stops
//! it and cleans the host, `rkube reset` also deletes its state; the node-side commands
//! (`images`, `ps`, `logs`, `exec`…) look inside the lab's node like the docker CLI.

mod down;
mod lab;
mod node;
mod term;
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
    let default_level = if matches!(cli.command, Command::Up { .. }) { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
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
