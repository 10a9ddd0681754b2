//! `kubectl config view|get-contexts|current-context|use-context|set-context|
//! get-clusters|get-users`: the kubeconfig files, read and written as YAML. `view`
//! redacts certificate and key data (`DATA+OMITTED`) and tokens (`REDACTED`) unless `--raw`.

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::context::Ctx;
use crate::printers::tabwriter::TabWriter;
use crate::printers::{self, Output};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// Display merged kubeconfig settings or a specified kubeconfig file
    View {
        /// Remove all information not used by current-context from the output
        #[arg(long)]
        minify: bool,
        /// Display raw byte data and sensitive data
        #[arg(long)]
        raw: bool,
        /// Flatten the resulting kubeconfig file into self-contained output (accepted)
        #[arg(long)]
        flatten: bool,
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
    /// Describe one or many contexts
    GetContexts {
        name: Option<String>,
        #[arg(long = "no-headers")]
        no_headers: bool,
        #[arg(short = 'o', long)]
        output: Option<String>,
    },
    /// Display the current-context
    CurrentContext,
    /// Set the current-context in a kubeconfig file
    UseContext { name: String },
    /// Set a context entry in kubeconfig
    SetContext {
        name: Option<String>,
        #[arg(long)]
        current: bool,
        #[arg(long = "namespace")]
        ns: Option<String>,
        #[arg(long = "cluster")]
        cluster_name: Option<String>,
        #[arg(long = "user")]
        user_name: Option<String>,
    },
    /// Display clusters defined in the kubeconfig
    GetClusters,
    /// Display users defined in the kubeconfig
    GetUsers,
}

/// The merged kubeconfig as YAML data, and the file that writes go to.
fn load(ctx: &Ctx) -> anyhow::Result<(Value, PathBuf)> {
    let paths = ctx.kubeconfig_paths();
    let mut merged = json!({});
    let mut first_existing: Option<PathBuf> = None;
    for path in &paths {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && ctx.global.kubeconfig.is_none() =>
            {
                continue
            }
            Err(_) => anyhow::bail!("stat {}: no such file or directory", path.display()),
        };
        first_existing.get_or_insert(path.clone());
        let v: Value = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("reading {}", path.display()))?;
        merge(&mut merged, v);
    }
    let target = first_existing
        .or_else(|| paths.first().cloned())
        .unwrap_or_default();
    let m = merged
        .as_object_mut()
        .context("the kubeconfig is not a mapping")?;
    m.entry("apiVersion").or_insert(json!("v1"));
    m.entry("kind").or_insert(json!("Config"));
    m.entry("preferences").or_insert(json!({}));
    for key in ["clusters", "contexts", "users"] {
        if m.get(key).is_none_or(Value::is_null) {
            m.insert(key.into(), Value::Null);
        }
    }
    if m.get("current-context").is_none() {
        m.insert("current-context".into(), json!(""));
    }
    Ok((merged, target))
}

/// client-go's merge: the first file to set a value or a named entry wins.
fn merge(into: &mut Value, from: Value) {
    let (Value::Object(into), Value::Object(from)) = (into, from) else {
        return;
    };
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (None, v) => {
                into.insert(k, v);
            }
            (Some(Value::Array(existing)), Value::Array(more)) => {
                for item in more {
                    if !existing.iter().any(|e| e["name"] == item["name"]) {
                        existing.push(item);
                    }
                }
            }
            (Some(Value::Null), v) => {
                into.insert(k, v);
            }
            _ => {}
        }
    }
}

fn entries<'a>(config: &'a Value, key: &str) -> Vec<&'a Value> {
    config[key]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn current(config: &Value, ctx: &Ctx) -> String {
    ctx.global.context.clone().unwrap_or_else(|| {
        config["current-context"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    })
}

fn save(config: &Value, path: &PathBuf) -> anyhow::Result<()> {
    std::fs::write(path, printers::yaml::to_yaml(config))
        .with_context(|| format!("writing {}", path.display()))
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let (mut config, path) = load(ctx)?;
    match args.command {
        Sub::View {
            minify,
            raw,
            flatten: _,
            output,
        } => {
            if minify {
                let name = current(&config, ctx);
                if name.is_empty() {
                    anyhow::bail!("current-context must exist in order to minify");
                }
                let Some(c) = entries(&config, "contexts")
                    .into_iter()
                    .find(|c| c["name"] == name.as_str())
                    .cloned()
                else {
                    anyhow::bail!("cannot locate context {name}");
                };
                let cluster = c["context"]["cluster"].clone();
                let user = c["context"]["user"].clone();
                let keep = |key: &str, name: &Value| -> Value {
                    Value::Array(
                        entries(&config, key)
                            .into_iter()
                            .filter(|e| &e["name"] == name)
                            .cloned()
                            .collect(),
                    )
                };
                let clusters = keep("clusters", &cluster);
                let users = keep("users", &user);
                config["clusters"] = clusters;
                config["users"] = users;
                config["contexts"] = json!([c]);
                config["current-context"] = json!(name);
            }
            if !raw {
                redact(&mut config);
            }
            let text = match Output::parse(output.as_deref())? {
                Output::Json => printers::json::to_json(&config),
                Output::Table { .. } | Output::Yaml => printers::yaml::to_yaml(&config),
                Output::JsonPath(t) => t.execute(&config).map_err(anyhow::Error::msg)?,
                _ => anyhow::bail!("unsupported output format for config view"),
            };
            print!("{text}");
        }
        Sub::GetContexts {
            name,
            no_headers,
            output,
        } => {
            let cur = current(&config, ctx);
            let contexts: Vec<&Value> = entries(&config, "contexts")
                .into_iter()
                .filter(|c| name.as_ref().is_none_or(|n| c["name"] == n.as_str()))
                .collect();
            if let Some(n) = &name {
                if contexts.is_empty() {
                    if !no_headers && output.is_none() {
                        println!("CURRENT   NAME   CLUSTER   AUTHINFO   NAMESPACE");
                    }
                    anyhow::bail!("context {n} not found");
                }
            }
            if output.as_deref() == Some("name") {
                for c in contexts {
                    println!("{}", c["name"].as_str().unwrap_or_default());
                }
                return Ok(());
            }
            let mut tw = TabWriter::table();
            if !no_headers {
                tw.row(&["CURRENT", "NAME", "CLUSTER", "AUTHINFO", "NAMESPACE"]);
            }
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            for c in contexts {
                let mark = if c["name"] == cur.as_str() { "*" } else { "" };
                tw.row(&[
                    mark.to_string(),
                    s(&c["name"]),
                    s(&c["context"]["cluster"]),
                    s(&c["context"]["user"]),
                    s(&c["context"]["namespace"]),
                ]);
            }
            print!("{}", tw.flush());
        }
        Sub::CurrentContext => {
            let cur = config["current-context"].as_str().unwrap_or_default();
            if cur.is_empty() {
                anyhow::bail!("current-context is not set");
            }
            println!("{cur}");
        }
        Sub::UseContext { name } => {
            if !entries(&config, "contexts")
                .iter()
                .any(|c| c["name"] == name.as_str())
            {
                anyhow::bail!("no context exists with the name: \"{name}\"");
            }
            config["current-context"] = json!(name);
            save(&config, &path)?;
            println!("Switched to context \"{name}\".");
        }
        Sub::SetContext {
            name,
            current: use_current,
            ns,
            cluster_name,
            user_name,
        } => {
            let name = match (name, use_current) {
                (Some(n), false) => n,
                (None, true) => {
                    let c = config["current-context"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if c.is_empty() {
                        anyhow::bail!("no current context is set");
                    }
                    c
                }
                (Some(_), true) => {
                    anyhow::bail!("you cannot specify both a context name and --current")
                }
                (None, false) => {
                    anyhow::bail!("you must specify a non-empty context name or --current")
                }
            };
            let contexts = config["contexts"].as_array_mut();
            let existed;
            let list = match contexts {
                Some(list) => list,
                None => {
                    config["contexts"] = json!([]);
                    config["contexts"].as_array_mut().context("contexts")?
                }
            };
            let entry = match list.iter_mut().position(|c| c["name"] == name.as_str()) {
                Some(i) => {
                    existed = true;
                    &mut list[i]
                }
                None => {
                    existed = false;
                    list.push(json!({"name": name, "context": {}}));
                    let last = list.len() - 1;
                    &mut list[last]
                }
            };
            for (key, value) in [
                ("namespace", ns),
                ("cluster", cluster_name),
                ("user", user_name),
            ] {
                if let Some(v) = value {
                    entry["context"][key] = json!(v);
                }
            }
            save(&config, &path)?;
            println!(
                "Context \"{name}\" {}.",
                if existed { "modified" } else { "created" }
            );
        }
        Sub::GetClusters => {
            println!("NAME");
            for c in entries(&config, "clusters") {
                println!("{}", c["name"].as_str().unwrap_or_default());
            }
        }
        Sub::GetUsers => {
            println!("NAME");
            for u in entries(&config, "users") {
                println!("{}", u["name"].as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}

/// What `config view` hides without `--raw`.
fn redact(config: &mut Value) {
    for cluster in config["clusters"].as_array_mut().into_iter().flatten() {
        if let Some(Value::Object(c)) = cluster.get_mut("cluster") {
            if c.contains_key("certificate-authority-data") {
                c.insert("certificate-authority-data".into(), json!("DATA+OMITTED"));
            }
        }
    }
    for user in config["users"].as_array_mut().into_iter().flatten() {
        if let Some(Value::Object(u)) = user.get_mut("user") {
            for key in ["client-certificate-data", "client-key-data"] {
                if u.contains_key(key) {
                    u.insert(key.into(), json!("DATA+OMITTED"));
                }
            }
            for key in ["token", "password"] {
                if u.contains_key(key) {
                    u.insert(key.into(), json!("REDACTED"));
                }
            }
        }
    }
}
