//! rkube's `kubectl`: the stock kubectl's commands, flags, columns and messages, so a
//! learner can use it in place of the stock one. Each subcommand is a module under
//! `cmd/` with its own clap `Args` and `run`; errors are printed in one place
//! ([`errors::print`]) the way the stock kubectl prints them.

mod cmd;
mod context;
mod errors;
mod printers;
mod resources;
mod threeway;
mod write;

use clap::{Parser, Subcommand};

use crate::context::{Ctx, GlobalArgs};

#[derive(Parser, Debug)]
#[command(name = "kubectl", about = "kubectl controls the Kubernetes cluster manager.", version = None)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    // Read commands (one module each under cmd/)
    /// Display one or many resources
    Get(cmd::get::Args),
    /// Show details of a specific resource or group of resources
    Describe(cmd::describe::Args),
    /// Print the supported API resources on the server
    ApiResources(cmd::api_resources::Args),
    /// Print the supported API versions on the server, in the form of "group/version"
    ApiVersions(cmd::api_versions::Args),
    /// Get documentation for a resource
    Explain(cmd::explain::Args),
    /// Print the client and server version information
    Version(cmd::version::Args),
    /// Display cluster information
    ClusterInfo(cmd::cluster_info::Args),
    /// Modify kubeconfig files
    Config(cmd::config::Args),
    /// Inspect authorization
    Auth(cmd::auth::Args),
    /// Experimental: Wait for a specific condition on one or many resources
    Wait(cmd::wait::Args),
    /// Print the logs for a container in a pod
    Logs(cmd::logs::Args),
    /// Display resource (CPU/memory) usage
    Top(cmd::top::Args),
    // Write commands (one module each under cmd/)
    /// Apply a configuration to a resource by file name or stdin
    Apply(cmd::apply::Args),
    /// Create a resource from a file or from stdin
    Create(cmd::create::Args),
    /// Run a particular image on the cluster
    Run(cmd::run::Args),
    /// Take a replication controller, service, deployment or pod and expose it as a new Kubernetes service
    Expose(cmd::expose::Args),
    /// Delete resources by file names, stdin, resources and names, or by resources and label selector
    Delete(cmd::delete::Args),
    /// Edit a resource on the server
    Edit(cmd::edit::Args),
    /// Update fields of a resource
    Patch(cmd::patch::Args),
    /// Update the labels on a resource
    Label(cmd::label::Args),
    /// Update the annotations on a resource
    Annotate(cmd::annotate::Args),
    /// Set a new size for a deployment, replica set, or replication controller
    Scale(cmd::scale::Args),
    /// Manage the rollout of a resource
    Rollout(cmd::rollout::Args),
    /// Mark node as unschedulable
    Cordon(cmd::cordon::Args),
    /// Mark node as schedulable
    Uncordon(cmd::cordon::Args),
    /// Drain node in preparation for maintenance
    Drain(cmd::drain::Args),
    /// Update the taints on one or more nodes
    Taint(cmd::taint::Args),
    /// Set specific features on objects
    Set(cmd::set::Args),
    /// Modify certificate resources
    Certificate(cmd::certificate::Args),
    /// Execute a command in a container
    Exec(cmd::exec::Args),
    /// Forward one or more local ports to a pod
    PortForward(cmd::port_forward::Args),
    /// Copy files and directories to and from containers
    Cp(cmd::cp::Args),
}

async fn dispatch(ctx: &Ctx, command: Command) -> anyhow::Result<()> {
    match command {
        // Read commands
        Command::Get(args) => cmd::get::run(ctx, args).await,
        Command::Describe(args) => cmd::describe::run(ctx, args).await,
        Command::ApiResources(args) => cmd::api_resources::run(ctx, args).await,
        Command::ApiVersions(args) => cmd::api_versions::run(ctx, args).await,
        Command::Explain(args) => cmd::explain::run(ctx, args).await,
        Command::Version(args) => cmd::version::run(ctx, args).await,
        Command::ClusterInfo(args) => cmd::cluster_info::run(ctx, args).await,
        Command::Config(args) => cmd::config::run(ctx, args).await,
        Command::Auth(args) => cmd::auth::run(ctx, args).await,
        Command::Wait(args) => cmd::wait::run(ctx, args).await,
        Command::Logs(args) => cmd::logs::run(ctx, args).await,
        Command::Top(args) => cmd::top::run(ctx, args).await,
        // Write commands (one module each under cmd/)
        Command::Apply(args) => cmd::apply::run(ctx, args).await,
        Command::Create(args) => cmd::create::run(ctx, args).await,
        Command::Run(args) => cmd::run::run(ctx, args).await,
        Command::Expose(args) => cmd::expose::run(ctx, args).await,
        Command::Delete(args) => cmd::delete::run(ctx, args).await,
        Command::Edit(args) => cmd::edit::run(ctx, args).await,
        Command::Patch(args) => cmd::patch::run(ctx, args).await,
        Command::Label(args) => cmd::label::run(ctx, args).await,
        Command::Annotate(args) => cmd::annotate::run(ctx, args).await,
        Command::Scale(args) => cmd::scale::run(ctx, args).await,
        Command::Rollout(args) => cmd::rollout::run(ctx, args).await,
        Command::Cordon(args) => cmd::cordon::run(ctx, args).await,
        Command::Uncordon(args) => cmd::cordon::run_uncordon(ctx, args).await,
        Command::Drain(args) => cmd::drain::run(ctx, args).await,
        Command::Taint(args) => cmd::taint::run(ctx, args).await,
        Command::Set(args) => cmd::set::run(ctx, args).await,
        Command::Certificate(args) => cmd::certificate::run(ctx, args).await,
        Command::Exec(args) => cmd::exec::run(ctx, args).await,
        Command::PortForward(args) => cmd::port_forward::run(ctx, args).await,
        Command::Cp(args) => cmd::cp::run(ctx, args).await,
    }
}

/// The command line, or the stock kubectl's message for what clap refuses: an unknown
/// flag or command reads as cobra prints it, not as clap does.
fn parse() -> Cli {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let err = match Cli::try_parse() {
        Ok(cli) => return cli,
        Err(e) => e,
    };
    let context = |kind: ContextKind| match err.get(kind) {
        Some(ContextValue::String(s)) => s.clone(),
        Some(ContextValue::Strings(v)) => v.first().cloned().unwrap_or_default(),
        _ => String::new(),
    };
    let message = match err.kind() {
        ErrorKind::UnknownArgument => {
            let flag = context(ContextKind::InvalidArg);
            let flag = flag.split('=').next().unwrap_or_default().to_string();
            let names: Vec<String> = <Cli as clap::CommandFactory>::command().get_subcommands().map(|c| c.get_name().to_string()).collect();
            let command = std::env::args().skip(1).find(|a| names.contains(a)).map(|c| format!("{c} ")).unwrap_or_default();
            let what = match flag.strip_prefix('-').filter(|f| !f.starts_with('-')) {
                Some(short) => format!("unknown shorthand flag: '{}' in {flag}", short.chars().next().unwrap_or('?')),
                None => format!("unknown flag: {flag}"),
            };
            format!("error: {what}\nSee 'kubectl {command}--help' for usage.")
        }
        ErrorKind::InvalidSubcommand => format!("error: unknown command \"{}\" for \"kubectl\"", context(ContextKind::InvalidSubcommand)),
        _ => err.exit(),
    };
    eprintln!("{message}");
    std::process::exit(1);
}

#[tokio::main]
async fn main() {
    let cli = parse();
    let ctx = Ctx::new(cli.global);
    let code = match dispatch(&ctx, cli.command).await {
        Ok(()) => 0,
        Err(e) => errors::print(&e),
    };
    std::process::exit(code);
}
