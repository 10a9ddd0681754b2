//! `kubectl api-resources`: the server's resource types (preferred versions), sorted by
//! group and name: NAME SHORTNAMES APIVERSION NAMESPACED KIND (+ VERBS CATEGORIES with
//! `-o wide`), or only names with `-o name`.

use crate::context::Ctx;
use crate::printers::tabwriter::TabWriter;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output format. One of: (wide, name).
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// If false, non-namespaced resources will be returned, otherwise returning namespaced resources by default.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub namespaced: Option<bool>,
    /// Limit to resources in the specified API group.
    #[arg(long = "api-group")]
    pub api_group: Option<String>,
    /// Limit to resources that support the specified verbs.
    #[arg(long, value_delimiter = ',')]
    pub verbs: Vec<String>,
    /// When using the default or custom-column output format, don't print headers.
    #[arg(long = "no-headers")]
    pub no_headers: bool,
    /// If non-empty, sort list of resources using specified field. One of (name, kind).
    #[arg(long = "sort-by")]
    pub sort_by: Option<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let wide = match args.output.as_deref() {
        None | Some("") => false,
        Some("wide") => true,
        Some("name") => false,
        Some(o) => anyhow::bail!("--output {o} is not available"),
    };
    let discovery = ctx.discovery().await?;
    let mut resources: Vec<_> = discovery
        .resources
        .iter()
        .filter(|r| r.preferred)
        .filter(|r| args.namespaced.is_none_or(|n| r.namespaced == n))
        .filter(|r| args.api_group.as_ref().is_none_or(|g| &r.group == g))
        .filter(|r| args.verbs.iter().all(|v| r.supports(v)))
        .collect();
    match args.sort_by.as_deref() {
        Some("name") => resources.sort_by(|a, b| a.plural.cmp(&b.plural)),
        Some("kind") => resources.sort_by(|a, b| a.kind.cmp(&b.kind)),
        _ => resources.sort_by(|a, b| a.group.cmp(&b.group).then(a.plural.cmp(&b.plural))),
    }
    if args.output.as_deref() == Some("name") {
        for r in resources {
            println!("{}", r.group_resource());
        }
        return Ok(());
    }
    let mut tw = TabWriter::table();
    if !args.no_headers {
        let mut h = vec!["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"];
        if wide {
            h.extend(["VERBS", "CATEGORIES"]);
        }
        tw.row(&h);
    }
    for r in resources {
        let mut row = vec![
            r.plural.clone(),
            r.short_names.join(","),
            r.api_version(),
            r.namespaced.to_string(),
            r.kind.clone(),
        ];
        if wide {
            row.push(r.verbs.join(","));
            row.push(r.categories.join(","));
        }
        tw.row(&row);
    }
    print!("{}", tw.flush());
    Ok(())
}
