//! `kubectl certificate approve|deny CSR…`: adds the Approved (or Denied) condition
//! through the `approval` subresource of certificates.k8s.io/v1 CSRs.

use serde_json::json;

use crate::context::Ctx;
use crate::errors;
use crate::write;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// Approve a certificate signing request
    Approve(Target),
    /// Deny a certificate signing request
    Deny(Target),
}

#[derive(clap::Args, Debug)]
pub struct Target {
    /// CSR names
    pub names: Vec<String>,
    /// Update the CSR even if it is already approved.
    #[arg(long)]
    pub force: bool,
    /// Output format: yaml, json or name.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let (t, approve) = match args.command {
        Sub::Approve(t) => (t, true),
        Sub::Deny(t) => (t, false),
    };
    if t.names.is_empty() {
        anyhow::bail!("one or more CSRs must be specified as <name> or -f <filename>");
    }
    let output = write::parse_output(t.output.as_deref())?;
    let discovery = ctx.discovery().await?;
    let res = discovery.resolve("certificatesigningrequests.certificates.k8s.io")?;
    let client = ctx.client().await?;
    let (ctype, reason, message, verb) = if approve {
        (
            "Approved",
            "KubectlApprove",
            "This CSR was approved by kubectl certificate approve.",
            "approved",
        )
    } else {
        (
            "Denied",
            "KubectlDeny",
            "This CSR was denied by kubectl certificate deny.",
            "denied",
        )
    };
    let mut failures = errors::Failures::default();
    for name in &t.names {
        let url = res.object_url(None, name);
        let result = async {
            let mut csr = write::get(&client, &url).await?;
            let conditions = csr["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let already = conditions.iter().any(|c| c["type"] == ctype);
            let other = if approve { "Denied" } else { "Approved" };
            if conditions.iter().any(|c| c["type"] == other) {
                anyhow::bail!("certificate signing request {name:?} is already {other}");
            }
            if already && !t.force {
                return Ok(csr);
            }
            let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
            let mut conds = conditions;
            conds.push(json!({"type": ctype, "status": "True", "reason": reason, "message": message, "lastUpdateTime": now, "lastTransitionTime": now}));
            csr["status"]["conditions"] = json!(conds);
            write::send(
                &client,
                http::Method::PUT,
                &format!("{url}/approval"),
                Some(("application/json", serde_json::to_vec(&csr)?)),
            )
            .await
        }
        .await;
        match result {
            Ok(o) => write::print_result(output.as_ref(), &o, &res, verb, write::DryRun::None)?,
            Err(e) => {
                failures.report(&e);
            }
        }
    }
    failures.finish()
}
