//! `kubectl api-versions`: every `group/version` the server serves, sorted.

use crate::context::Ctx;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(ctx: &Ctx, _args: Args) -> anyhow::Result<()> {
    let discovery = ctx.discovery().await?;
    let mut versions: Vec<String> = discovery
        .resources
        .iter()
        .map(|r| r.api_version())
        .collect();
    versions.sort();
    versions.dedup();
    for v in versions {
        println!("{v}");
    }
    Ok(())
}
