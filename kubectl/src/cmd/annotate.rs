//! `kubectl annotate`: `kubectl label`'s machinery on `metadata.annotations`.

use crate::context::Ctx;

pub use super::label::Args;

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    super::label::run_meta(ctx, args, "annotations").await
}
