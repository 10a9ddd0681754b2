//! `kubectl get`: tables from the server (or objects in `-o yaml|json|name|jsonpath|
//! custom-columns`), by type, name, selector, across namespaces, and `--watch`.

use std::io::Write as _;

use futures::{AsyncBufReadExt as _, TryStreamExt as _};
use serde_json::Value;

use crate::context::Ctx;
use crate::errors::{self, Exit};
use crate::printers::table::{Table, TableOptions, TablePrinter, TABLE_ACCEPT};
use crate::printers::{self, Output};
use crate::resources::{parse_type_names, ResourceInfo};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct Args {
    /// TYPE[.VERSION][.GROUP] [NAME...] or TYPE/NAME...
    pub resources: Vec<String>,
    /// Output format: json, yaml, name, wide, jsonpath=..., custom-columns=...
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// Selector (label query) to filter on, supports '=', '==', '!=', 'in', 'notin'.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Selector (field query) to filter on.
    #[arg(long = "field-selector")]
    pub field_selector: Option<String>,
    /// List the requested object(s) across all namespaces.
    #[arg(short = 'A', long = "all-namespaces")]
    pub all_namespaces: bool,
    /// After listing/getting the requested object, watch for changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Watch for changes to the requested object(s), without listing/getting first.
    #[arg(long = "watch-only")]
    pub watch_only: bool,
    /// When printing, show all labels as the last column.
    #[arg(long = "show-labels")]
    pub show_labels: bool,
    /// When using the default or custom-column output format, don't print headers.
    #[arg(long = "no-headers")]
    pub no_headers: bool,
    /// Label keys to present as columns.
    #[arg(short = 'L', long = "label-columns", value_delimiter = ',')]
    pub label_columns: Vec<String>,
    /// If present, list the resource type for the requested object(s).
    #[arg(long = "show-kind")]
    pub show_kind: bool,
    /// If the requested object does not exist the command will return exit code 0.
    #[arg(long = "ignore-not-found")]
    pub ignore_not_found: bool,
    /// If true, keep the managedFields when printing objects in JSON or YAML format.
    #[arg(long = "show-managed-fields")]
    pub show_managed_fields: bool,
    /// Raw URI to request from the server.
    #[arg(long)]
    pub raw: Option<String>,
    /// Return large lists in chunks (accepted and ignored).
    #[arg(long = "chunk-size")]
    pub chunk_size: Option<String>,
}

/// One request `get` makes: a resource type and, optionally, a name.
struct Query {
    res: ResourceInfo,
    name: Option<String>,
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    if let Some(raw) = &args.raw {
        let client = ctx.client().await?;
        let req = http::Request::get(raw.as_str()).body(Vec::new())?;
        let text = client.request_text(req).await?;
        print!("{text}");
        return Ok(());
    }
    if args.resources.is_empty() {
        eprintln!("You must specify the type of resource to get. Use \"kubectl api-resources\" for a complete list of supported resources.\n");
        return errors::usage(
            "get",
            "Required resource not specified.\nUse \"kubectl explain <resource>\" for a detailed description of that resource (e.g. kubectl explain pods).",
        );
    }
    let output = Output::parse(args.output.as_deref())?;
    let discovery = ctx.discovery().await?;
    let namespace = ctx.namespace().await?;
    let selections = parse_type_names(&args.resources)?;
    let mut queries = Vec::new();
    let mut types = 0;
    let mut category = false;
    for sel in &selections {
        let resolved = if discovery.find(&sel.type_arg).is_none()
            && !discovery.category(&sel.type_arg).is_empty()
        {
            category = true;
            discovery.category(&sel.type_arg)
        } else {
            vec![discovery.resolve(&sel.type_arg)?]
        };
        for res in resolved {
            types += 1;
            if sel.names.is_empty() {
                queries.push(Query { res, name: None });
            } else {
                for n in &sel.names {
                    queries.push(Query {
                        res: res.clone(),
                        name: Some(n.clone()),
                    });
                }
            }
        }
    }
    let named = queries.iter().any(|q| q.name.is_some());
    if named && args.all_namespaces {
        anyhow::bail!("a resource cannot be retrieved by name across all namespaces");
    }
    if (args.watch || args.watch_only) && types > 1 {
        anyhow::bail!("you may only specify a single resource type");
    }
    let with_kind = args.show_kind || types > 1 || category;
    let single = queries.len() == 1 && named && selections.len() == 1;
    let ns_for = |res: &ResourceInfo| -> Option<String> {
        (res.namespaced && !args.all_namespaces).then(|| namespace.clone())
    };
    let client = ctx.client().await?;
    let mut failed = false;
    let mut stdout = std::io::stdout();
    let list_params = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = Vec::new();
        if let Some(l) = &args.selector {
            p.push(("labelSelector".into(), l.clone()));
        }
        if let Some(f) = &args.field_selector {
            p.push(("fieldSelector".into(), f.clone()));
        }
        p.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        p
    };
    let url_for = |q: &Query, extra: &[(&str, &str)]| -> String {
        let ns = ns_for(&q.res);
        match &q.name {
            Some(n) => q.res.object_url(ns.as_deref(), n),
            None => {
                let params = list_params(extra);
                let refs: Vec<(&str, &str)> = params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                super::with_query(&q.res.collection_url(ns.as_deref()), &refs)
            }
        }
    };

    let mut last_rv: Option<String> = None;
    if output.is_table() {
        let opts = TableOptions {
            wide: matches!(output, Output::Table { wide: true }),
            show_labels: args.show_labels,
            namespace_column: args.all_namespaces,
            with_kind,
            no_headers: args.no_headers,
            label_columns: args.label_columns.clone(),
        };
        let mut printer = TablePrinter::new(opts.clone());
        // Consecutive queries of one type print as one table.
        let mut i = 0;
        while i < queries.len() && !args.watch_only {
            let mut table: Option<Table> = None;
            let res = queries[i].res.clone();
            while i < queries.len() && queries[i].res == res {
                let q = &queries[i];
                i += 1;
                match super::get_accept(&client, &url_for(q, &[]), TABLE_ACCEPT)
                    .await
                    .and_then(Table::from_response)
                {
                    Ok(t) => {
                        last_rv = t.resource_version();
                        match &mut table {
                            None => table = Some(t),
                            Some(acc) => acc.rows.extend(t.rows),
                        }
                    }
                    Err(e) if args.ignore_not_found && errors::is_not_found(&e) => {}
                    Err(e) => {
                        // What was found so far prints before the error, as in the stock kubectl.
                        if let Some(t) = table.take() {
                            write!(stdout, "{}", printer.print(&t, &res))?;
                            stdout.flush()?;
                        }
                        eprintln!("{}", errors::message(&e));
                        failed = true;
                        if !errors::is_not_found(&e) {
                            return Err(Exit(1).into());
                        }
                    }
                }
            }
            if let Some(t) = table {
                write!(stdout, "{}", printer.print(&t, &res))?;
            }
        }
        stdout.flush()?;
        if !printer.printed_any() && !failed && !args.watch_only && !named {
            let all_cluster = queries.iter().all(|q| !q.res.namespaced);
            let ns = (!args.all_namespaces && !all_cluster).then_some(namespace.as_str());
            eprintln!("{}", printers::no_resources_message(ns));
        }
        if args.watch || args.watch_only {
            let q = &queries[0];
            watch_table(
                &client,
                &url_for(q, &[]),
                q,
                last_rv,
                printer.printed_any(),
                &opts,
            )
            .await?;
        }
    } else {
        let mut objects: Vec<(Value, ResourceInfo)> = Vec::new();
        for q in &queries {
            match super::get_json(&client, &url_for(q, &[])).await {
                Ok(v) => {
                    last_rv = v["metadata"]["resourceVersion"]
                        .as_str()
                        .map(str::to_string);
                    match (&q.name, v.get("items")) {
                        (None, Some(Value::Array(items))) => {
                            objects.extend(items.iter().map(|o| (o.clone(), q.res.clone())))
                        }
                        _ => objects.push((v, q.res.clone())),
                    }
                }
                Err(e) if args.ignore_not_found && errors::is_not_found(&e) => {}
                Err(e) => {
                    eprintln!("{}", errors::message(&e));
                    failed = true;
                    if !errors::is_not_found(&e) {
                        return Err(Exit(1).into());
                    }
                }
            }
        }
        if !args.show_managed_fields && matches!(output, Output::Yaml | Output::Json) {
            for (o, _) in &mut objects {
                printers::strip_managed_fields(o);
            }
        }
        if !(args.watch_only || failed && objects.is_empty()) {
            print!(
                "{}",
                printers::print_objects(&output, &objects, single, args.no_headers)?
            );
        }
        stdout.flush()?;
        if args.watch || args.watch_only {
            let q = &queries[0];
            watch_objects(
                &client,
                &url_for(q, &[]),
                q,
                last_rv,
                &output,
                args.no_headers,
            )
            .await?;
        }
    }
    if failed {
        return Err(Exit(1).into());
    }
    Ok(())
}

/// The watch URL of a list or named-object URL.
fn watch_url(url: &str, q: &Query, rv: Option<String>) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, qs)) => (b.to_string(), format!("{qs}&")),
        None => (url.to_string(), String::new()),
    };
    let (base, name_selector) = match &q.name {
        Some(n) => (
            base.rsplit_once('/')
                .map(|(b, _)| b.to_string())
                .unwrap_or(base.clone()),
            format!("fieldSelector=metadata.name%3D{}&", super::encode(n)),
        ),
        None => (base, String::new()),
    };
    let rv = rv
        .map(|r| format!("&resourceVersion={r}"))
        .unwrap_or_default();
    format!("{base}?{query}{name_selector}watch=true{rv}")
}

async fn watch_stream(
    client: &kube::Client,
    url: &str,
    accept: &str,
) -> anyhow::Result<impl futures::Stream<Item = std::io::Result<String>>> {
    let req = http::Request::get(url)
        .header(http::header::ACCEPT, accept)
        .body(Vec::new())?;
    let body = client.request_stream(req).await?;
    Ok(body.lines())
}

async fn watch_table(
    client: &kube::Client,
    url: &str,
    q: &Query,
    rv: Option<String>,
    headers_printed: bool,
    opts: &TableOptions,
) -> anyhow::Result<()> {
    let mut lines =
        std::pin::pin!(watch_stream(client, &watch_url(url, q, rv), TABLE_ACCEPT).await?);
    let mut headers_printed = headers_printed;
    let mut stdout = std::io::stdout();
    // Columns never shrink while watching (kubectl's RememberWidths).
    let mut tw = crate::printers::tabwriter::TabWriter::table().remember_widths();
    while let Some(line) = lines.try_next().await? {
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if event["type"] == "ERROR" {
            anyhow::bail!(
                "{}",
                event["object"]["message"].as_str().unwrap_or("watch error")
            );
        }
        if event["type"] == "BOOKMARK" {
            continue;
        }
        let table = Table::from_response(event["object"].clone())?;
        if !headers_printed && !opts.no_headers {
            tw.row(&crate::printers::table::headers(&table, opts));
            headers_printed = true;
        }
        for r in crate::printers::table::rows(&table, &q.res, opts) {
            tw.row(&r);
        }
        write!(stdout, "{}", tw.flush())?;
        stdout.flush()?;
    }
    Ok(())
}

async fn watch_objects(
    client: &kube::Client,
    url: &str,
    q: &Query,
    rv: Option<String>,
    output: &Output,
    no_headers: bool,
) -> anyhow::Result<()> {
    let mut lines =
        std::pin::pin!(watch_stream(client, &watch_url(url, q, rv), "application/json").await?);
    let mut stdout = std::io::stdout();
    while let Some(line) = lines.try_next().await? {
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if event["type"] == "BOOKMARK" {
            continue;
        }
        let mut obj = event["object"].clone();
        if matches!(output, Output::Yaml | Output::Json) {
            printers::strip_managed_fields(&mut obj);
        }
        let text = match output {
            Output::Yaml => format!(
                "---\n{}",
                printers::yaml::to_yaml(&printers::with_type(obj, &q.res))
            ),
            _ => printers::print_objects(output, &[(obj, q.res.clone())], true, no_headers)?,
        };
        write!(stdout, "{text}")?;
        stdout.flush()?;
    }
    Ok(())
}
