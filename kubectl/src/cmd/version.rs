//! `kubectl version`: this client's version (rkube's, in the Kubernetes version it
//! implements) and the server's `/version`. There is no kustomize in this kubectl, so no
//! `Kustomize Version` line.

use serde_json::{json, Value};

use crate::context::Ctx;
use crate::printers::yaml;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// If true, shows client version only (no server required).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub client: Option<bool>,
    /// One of 'yaml' or 'json'.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
}

/// The Kubernetes API version this kubectl follows.
const GIT_VERSION: &str = concat!("v1.33.0-rkube+", env!("CARGO_PKG_VERSION"));

fn client_version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": GIT_VERSION,
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let client_only = args.client.unwrap_or(false);
    let mut out = serde_json::Map::new();
    out.insert("clientVersion".into(), client_version());
    let mut server_err = None;
    if !client_only {
        match async {
            ctx.client()
                .await?
                .apiserver_version()
                .await
                .map_err(anyhow::Error::from)
        }
        .await
        {
            Ok(info) => {
                out.insert("serverVersion".into(), serde_json::to_value(info)?);
            }
            Err(e) => server_err = Some(e),
        }
    }
    let data = Value::Object(out);
    match args.output.as_deref() {
        None | Some("") => {
            println!("Client Version: {GIT_VERSION}");
            if let Some(v) = data["serverVersion"]["gitVersion"].as_str() {
                println!("Server Version: {v}");
            }
        }
        Some("json") => println!("{}", serde_json::to_string_pretty(&data)?),
        Some("yaml") => print!("{}", yaml::to_yaml(&data)),
        Some(_) => anyhow::bail!("--output must be 'yaml' or 'json'"),
    }
    match server_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
