//! `kubectl auth can-i` (a SelfSubjectAccessReview, or with `--list` a
//! SelfSubjectRulesReview) and `kubectl auth whoami` (a SelfSubjectReview).

use serde_json::{json, Value};

use crate::context::Ctx;
use crate::errors::{self, Exit};
use crate::printers::tabwriter::TabWriter;
use crate::printers::{self, Output};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// Check whether an action is allowed
    CanI {
        /// VERB [TYPE | TYPE/NAME | NONRESOURCEURL]
        args: Vec<String>,
        /// If true, check the specified action in all namespaces.
        #[arg(short = 'A', long = "all-namespaces")]
        all_namespaces: bool,
        /// If true, prints all allowed actions.
        #[arg(long)]
        list: bool,
        /// If true, suppress output and just return the exit code.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// SubResource such as pod/log or deployment/scale
        #[arg(long)]
        subresource: Option<String>,
        /// If true, prints allowed actions without headers
        #[arg(long = "no-headers")]
        no_headers: bool,
    },
    /// Experimental: Check self subject attributes
    Whoami {
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
}

async fn post(client: &kube::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(serde_json::to_vec(body)?)?;
    Ok(client.request::<Value>(req).await?)
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    match args.command {
        Sub::Whoami { output } => {
            let review =
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
            let mut res = post(
                &client,
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                &review,
            )
            .await?;
            match Output::parse(output.as_deref())? {
                Output::Table { .. } => {
                    let info = &res["status"]["userInfo"];
                    let mut tw = TabWriter::table();
                    tw.row(&["ATTRIBUTE", "VALUE"]);
                    if let Some(u) = info["username"].as_str() {
                        tw.row(&["Username", u]);
                    }
                    if let Some(u) = info["uid"].as_str() {
                        tw.row(&["UID", u]);
                    }
                    if let Some(groups) = info["groups"].as_array() {
                        let g: Vec<String> = groups.iter().map(printers::go_value_text).collect();
                        tw.row(&["Groups".to_string(), format!("[{}]", g.join(" "))]);
                    }
                    if let Some(Value::Object(extra)) = info.get("extra") {
                        let mut keys: Vec<_> = extra.keys().collect();
                        keys.sort();
                        for k in keys {
                            tw.row(&[format!("Extra: {k}"), printers::go_value_text(&extra[k])]);
                        }
                    }
                    print!("{}", tw.flush());
                }
                other => {
                    if let Value::Object(m) = &mut res {
                        m.entry("metadata")
                            .or_insert(json!({"creationTimestamp": null}));
                    }
                    let res_info = crate::resources::ResourceInfo {
                        group: "authentication.k8s.io".into(),
                        version: "v1".into(),
                        plural: "selfsubjectreviews".into(),
                        singular: "selfsubjectreview".into(),
                        kind: "SelfSubjectReview".into(),
                        namespaced: false,
                        short_names: vec![],
                        verbs: vec![],
                        categories: vec![],
                        preferred: true,
                    };
                    print!(
                        "{}",
                        printers::print_objects(&other, &[(res, res_info)], true, false)?
                    );
                }
            }
            Ok(())
        }
        Sub::CanI {
            args,
            all_namespaces,
            list,
            quiet,
            subresource,
            no_headers,
        } => {
            let namespace = if all_namespaces {
                String::new()
            } else {
                ctx.namespace().await?
            };
            if list {
                return list_rules(&client, &namespace, no_headers).await;
            }
            if args.len() < 2 {
                return errors::usage(
                    "auth can-i",
                    "you must specify two arguments: verb resource or verb resource/resourceName.",
                )
                .map_err(|e| {
                    // The stock hint ends with a period here.
                    eprintln!("error: you must specify two arguments: verb resource or verb resource/resourceName.");
                    eprintln!("See 'kubectl auth can-i -h' for help and examples.");
                    let _ = e;
                    Exit(1).into()
                });
            }
            let verb = &args[0];
            let target = &args[1];
            let attrs = if target.starts_with('/') {
                json!({"nonResourceAttributes": {"verb": verb, "path": target}})
            } else {
                let (type_arg, name) = match target.split_once('/') {
                    Some((t, n)) => (t.to_string(), n.to_string()),
                    None => (target.clone(), args.get(2).cloned().unwrap_or_default()),
                };
                let discovery = ctx.discovery().await?;
                let (group, resource) = if type_arg == "*" {
                    ("*".to_string(), "*".to_string())
                } else {
                    match discovery.find(&type_arg) {
                        Some(r) => (r.group.clone(), r.plural.clone()),
                        None => {
                            eprintln!(
                                "Warning: the server doesn't have a resource type '{type_arg}'\n"
                            );
                            let (res, group) =
                                type_arg.split_once('.').unwrap_or((type_arg.as_str(), ""));
                            (group.to_string(), res.to_string())
                        }
                    }
                };
                json!({"resourceAttributes": {
                    "namespace": namespace, "verb": verb, "group": group, "resource": resource,
                    "subresource": subresource.unwrap_or_default(), "name": name,
                }})
            };
            let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": attrs});
            let res = post(
                &client,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                &review,
            )
            .await?;
            let allowed = res["status"]["allowed"].as_bool().unwrap_or(false);
            if !quiet {
                if allowed {
                    println!("yes");
                } else {
                    match res["status"]["reason"].as_str().filter(|r| !r.is_empty()) {
                        Some(reason) => println!("no - {reason}"),
                        None => println!("no"),
                    }
                }
            }
            if allowed {
                Ok(())
            } else {
                Err(Exit(1).into())
            }
        }
    }
}

async fn list_rules(
    client: &kube::Client,
    namespace: &str,
    no_headers: bool,
) -> anyhow::Result<()> {
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": namespace}});
    let res = post(
        client,
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        &review,
    )
    .await?;
    let list = |v: &Value| -> String {
        let items: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(printers::go_value_text)
            .collect();
        format!("[{}]", items.join(" "))
    };
    // (verbs, resource rule first, group, the printed cells)
    let mut rows: Vec<(String, u8, String, [String; 4])> = Vec::new();
    for rule in res["status"]["resourceRules"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let groups: Vec<&str> = rule["apiGroups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for resource in rule["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            for group in if groups.is_empty() {
                vec![""]
            } else {
                groups.clone()
            } {
                let name = if group.is_empty() {
                    resource.to_string()
                } else {
                    format!("{resource}.{group}")
                };
                let verbs = list(&rule["verbs"]);
                rows.push((
                    verbs.clone(),
                    0,
                    group.to_string(),
                    [name, "[]".into(), list(&rule["resourceNames"]), verbs],
                ));
            }
        }
    }
    for rule in res["status"]["nonResourceRules"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for url in rule["nonResourceURLs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let verbs = list(&rule["verbs"]);
            rows.push((
                verbs.clone(),
                1,
                String::new(),
                [String::new(), format!("[{url}]"), "[]".into(), verbs],
            ));
        }
    }
    // Grouped by verbs, as the stock kubectl lists them.
    rows.sort_by(|a, b| {
        (&a.0, a.1, &a.2, &a.3[0], &a.3[1]).cmp(&(&b.0, b.1, &b.2, &b.3[0], &b.3[1]))
    });
    let mut tw = TabWriter::table();
    if !no_headers {
        tw.row(&["Resources", "Non-Resource URLs", "Resource Names", "Verbs"]);
    }
    for r in &rows {
        tw.row(&r.3);
    }
    print!("{}", tw.flush());
    if res["status"]["incomplete"].as_bool() == Some(true) {
        eprintln!(
            "Warning: the list may be incomplete: {}",
            res["status"]["evaluationError"]
                .as_str()
                .unwrap_or_default()
        );
    }
    Ok(())
}
