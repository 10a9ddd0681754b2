//! `kubectl cluster-info`: where the control plane answers, and the cluster services
//! (`kubernetes.io/cluster-service=true` in kube-system) proxied through it.

use crate::context::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `dump` is not supported.
    pub subcommand: Option<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    if let Some(sub) = args.subcommand {
        anyhow::bail!("unknown command \"{sub}\" for \"kubectl cluster-info\"");
    }
    let config = ctx.config().await?;
    let server = config.cluster_url.to_string();
    let server = server.trim_end_matches('/');
    let client = ctx.client().await?;
    // The stock kubectl lists the cluster services after checking the server answers.
    let url = super::with_query(
        "/api/v1/namespaces/kube-system/services",
        &[("labelSelector", "kubernetes.io/cluster-service=true")],
    );
    let services = super::get_json(&client, &url).await?;
    // Colours only on a terminal, as the stock kubectl.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (green, yellow, reset) = if tty {
        ("\x1b[0;32m", "\x1b[0;33m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    println!("{green}Kubernetes control plane{reset} is running at {yellow}{server}{reset}");
    for svc in services["items"].as_array().into_iter().flatten() {
        let name = svc["metadata"]["name"].as_str().unwrap_or_default();
        let title = svc["metadata"]["labels"]["kubernetes.io/name"]
            .as_str()
            .unwrap_or(name);
        let port = svc["spec"]["ports"][0]["name"]
            .as_str()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        println!(
            "{green}{title}{reset} is running at {yellow}{server}/api/v1/namespaces/kube-system/services/{name}{port}/proxy{reset}"
        );
    }
    println!("\nTo further debug and diagnose cluster problems, use 'kubectl cluster-info dump'.");
    Ok(())
}
