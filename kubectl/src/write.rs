//! What the write commands share: `--dry-run`, reading manifests (`-f FILE|DIR|URL|-`,
//! `-R`, multi-document YAML, `kind: List`, JSON), mapping objects to resources, the
//! HTTP calls (POST/PUT/PATCH/DELETE with `dryRun=All`), and the one-line results
//! (`deployment.apps/web created (dry run)`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::{json, Map, Value};

use crate::context::Ctx;
use crate::printers::{self, Output};
use crate::resources::{Discovery, ResourceInfo};

/// The `--dry-run` flag: `none`, `client` or `server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DryRun {
    #[default]
    None,
    Client,
    Server,
}

impl DryRun {
    /// Parses the flag's value with the stock error.
    pub fn parse(v: Option<&str>) -> anyhow::Result<DryRun> {
        Ok(match v {
            None | Some("none") | Some("false") => DryRun::None,
            Some("client") => DryRun::Client,
            Some("server") => DryRun::Server,
            Some(other) => anyhow::bail!(
                "Invalid dry-run value ({other}). Must be \"none\", \"server\", or \"client\"."
            ),
        })
    }

    /// `" (dry run)"`, `" (server dry run)"` or nothing.
    pub fn suffix(self) -> &'static str {
        match self {
            DryRun::None => "",
            DryRun::Client => " (dry run)",
            DryRun::Server => " (server dry run)",
        }
    }

    /// The `dryRun` query parameter for the server.
    pub fn param(self) -> &'static str {
        if self == DryRun::Server {
            "All"
        } else {
            ""
        }
    }
}

/// clap options of `--dry-run` (a value only with `=`, as pflag's NoOptDefVal).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DryRunArg {
    /// Must be "none", "server", or "client". If client strategy, only print the object
    /// that would be sent, without sending it. If server strategy, submit server-side
    /// request without persisting the resource.
    #[arg(long = "dry-run", num_args = 0..=1, require_equals = true, default_missing_value = "unchanged")]
    pub dry_run: Option<String>,
}

impl DryRunArg {
    pub fn get(&self) -> anyhow::Result<DryRun> {
        DryRun::parse(self.dry_run.as_deref())
    }
}

/// One object read from a manifest, with the name of the file it came from as the stock
/// kubectl reports it (`STDIN` for `-`).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub obj: Value,
    pub source: String,
}

/// Reads every object of `-f` arguments: files, directories (`.json`, `.yaml`, `.yml`
/// files, recursing with `-R`), `http(s)://` URLs are refused, `-` is stdin.
pub fn read_manifests(files: &[String], recursive: bool) -> anyhow::Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading stdin")?;
            out.extend(parse_documents(&text, "STDIN")?);
            continue;
        }
        if f.starts_with("http://") || f.starts_with("https://") {
            anyhow::bail!("reading manifests from URLs is not supported by rkube's kubectl: {f}");
        }
        let path = Path::new(f);
        if !path.exists() {
            anyhow::bail!("the path \"{f}\" does not exist");
        }
        if path.is_dir() {
            let mut files = Vec::new();
            walk(path, recursive, &mut files)?;
            for p in files {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                out.extend(parse_documents(&text, &p.display().to_string())?);
            }
        } else {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {f}"))?;
            out.extend(parse_documents(&text, f)?);
        }
    }
    Ok(out)
}

fn walk(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if recursive {
                walk(&p, recursive, out)?;
            }
            continue;
        }
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
        if matches!(ext, "json" | "yaml" | "yml") {
            out.push(p);
        }
    }
    Ok(())
}

/// Splits a YAML stream at `---` lines (or reads one JSON document) and returns its
/// objects, `kind: List` expanded.
pub fn parse_documents(text: &str, source: &str) -> anyhow::Result<Vec<Manifest>> {
    let mut docs: Vec<String> = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        let mut values = Vec::new();
        for v in stream.by_ref() {
            values.push(v.map_err(|e| anyhow::anyhow!("error parsing {source}: {e}"))?);
        }
        return Ok(values
            .into_iter()
            .flat_map(expand_list)
            .map(|obj| Manifest {
                obj,
                source: source.to_string(),
            })
            .collect());
    }
    let mut cur = String::new();
    for line in text.split_inclusive('\n') {
        if line.starts_with("---")
            && line[3..]
                .chars()
                .next()
                .is_none_or(|c| c.is_whitespace() || c == '#')
        {
            docs.push(std::mem::take(&mut cur));
            continue;
        }
        cur.push_str(line);
    }
    docs.push(cur);
    let mut out = Vec::new();
    for doc in docs {
        if doc.trim().is_empty() {
            continue;
        }
        let v: Value = match serde_yaml_ng::from_str::<Value>(&doc) {
            Ok(v) => v,
            Err(e) => anyhow::bail!(
                "error parsing {source}: error converting YAML to JSON: {}",
                go_yaml_error(&e)
            ),
        };
        if v.is_null() {
            continue;
        }
        for obj in expand_list(v) {
            out.push(Manifest {
                obj,
                source: source.to_string(),
            });
        }
    }
    Ok(out)
}

/// serde_yaml_ng's libyaml error in go-yaml's words: `yaml: line N: <problem>` (go-yaml
/// names the problem mark's 0-based line for parser errors, 1-based for scanner errors,
/// else the context mark's line).
fn go_yaml_error(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    // serde_yaml_ng: "<problem> at line L column C[, <context> at line L2 column C2]"
    let mut parts = text.split(" at line ");
    let problem = parts.next().unwrap_or_default().to_string();
    let number = |s: Option<&str>| {
        s.and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<usize>().ok())
    };
    let problem_line = number(parts.next());
    let context_line = number(parts.next());
    let Some(problem_line) = problem_line else {
        return format!("yaml: {problem}");
    };
    const PARSER: &[&str] = &[
        "did not find expected key",
        "did not find expected ',' or ']'",
        "did not find expected ',' or '}'",
        "did not find expected '-' indicator",
        "did not find expected node content",
        "did not find expected <document start>",
    ];
    let zero_based = problem_line.saturating_sub(1);
    let line = if zero_based != 0 {
        if PARSER.contains(&problem.as_str()) {
            zero_based
        } else {
            problem_line
        }
    } else {
        context_line.map(|l| l.saturating_sub(1)).unwrap_or(0)
    };
    if line == 0 {
        return format!("yaml: {problem}");
    }
    format!("yaml: line {line}: {problem}")
}

fn expand_list(v: Value) -> Vec<Value> {
    let is_list = v["kind"]
        .as_str()
        .is_some_and(|k| k == "List" || k.ends_with("List"))
        && v["items"].is_array();
    if is_list {
        return v["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .flat_map(expand_list)
            .collect();
    }
    vec![v]
}

/// An object read from a file, resolved to its resource and namespace.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub obj: Value,
    pub res: ResourceInfo,
    /// The namespace for namespaced resources.
    pub namespace: Option<String>,
    pub name: String,
    pub source: String,
}

impl Resolved {
    pub fn url(&self) -> String {
        self.res.object_url(self.namespace.as_deref(), &self.name)
    }

    pub fn collection_url(&self) -> String {
        self.res.collection_url(self.namespace.as_deref())
    }
}

/// Checks `apiVersion`/`kind`, finds the resource, and settles the namespace (the
/// object's, else `default_ns`; `-n` must agree with the object's).
pub fn resolve(
    m: &Manifest,
    discovery: &Discovery,
    default_ns: &str,
    explicit_ns: Option<&str>,
) -> anyhow::Result<Resolved> {
    let api_version = m.obj["apiVersion"].as_str().unwrap_or_default();
    let kind = m.obj["kind"].as_str().unwrap_or_default();
    let mut missing = Vec::new();
    if api_version.is_empty() {
        missing.push("apiVersion not set");
    }
    if kind.is_empty() {
        missing.push("kind not set");
    }
    if !missing.is_empty() {
        let detail = if missing.len() == 1 {
            missing[0].to_string()
        } else {
            format!("[{}]", missing.join(", "))
        };
        anyhow::bail!(
            "error validating \"{}\": error validating data: {detail}; if you choose to ignore these errors, turn validation off with --validate=false",
            m.source
        );
    }
    let name = m.obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let obj_ns = m.obj["metadata"]["namespace"].as_str().map(str::to_string);
    let Some(res) = discovery.for_kind(api_version, kind) else {
        anyhow::bail!(
            "resource mapping not found for name: \"{name}\" namespace: \"{}\" from \"{}\": no matches for kind \"{kind}\" in version \"{api_version}\"\nensure CRDs are installed first",
            obj_ns.as_deref().unwrap_or_default(),
            m.source
        );
    };
    let namespace = if res.namespaced {
        match (&obj_ns, explicit_ns) {
            (Some(o), Some(e)) if o != e => anyhow::bail!(
                "the namespace from the provided object \"{o}\" does not match the namespace \"{e}\". You must pass '--namespace={o}' to perform this operation."
            ),
            (Some(o), _) if !o.is_empty() => Some(o.clone()),
            _ => Some(default_ns.to_string()),
        }
    } else {
        None
    };
    Ok(Resolved {
        obj: m.obj.clone(),
        res,
        namespace,
        name,
        source: m.source.clone(),
    })
}

/// Reads and resolves every object of `-f` arguments.
pub async fn resolve_files(
    ctx: &Ctx,
    files: &[String],
    recursive: bool,
) -> anyhow::Result<Vec<Resolved>> {
    let manifests = read_manifests(files, recursive)?;
    let discovery = ctx.discovery().await?;
    let ns = ctx.namespace().await?;
    manifests
        .iter()
        .map(|m| resolve(m, discovery, &ns, ctx.global.namespace.as_deref()))
        .collect()
}

/// Sends one request; the server's Status becomes a `kube::Error::Api`.
/// The `fieldValidation` a `--validate` value asks the server for, as kubectl maps it:
/// strict when not given (kubectl's default since 1.25), so unknown fields are refused.
pub fn field_validation(validate: Option<&str>) -> anyhow::Result<&'static str> {
    match validate.map(str::to_ascii_lowercase).as_deref() {
        None | Some("strict" | "true") => Ok("Strict"),
        Some("warn") => Ok("Warn"),
        Some("ignore" | "false") => Ok("Ignore"),
        Some(other) => anyhow::bail!("invalid - validate option {other:?}; must be one of: strict (or true), warn, ignore (or false)"),
    }
}

pub async fn send(
    client: &kube::Client,
    method: http::Method,
    url: &str,
    body: Option<(&str, Vec<u8>)>,
) -> anyhow::Result<Value> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::ACCEPT, "application/json");
    let bytes = match body {
        Some((ct, b)) => {
            req = req.header(http::header::CONTENT_TYPE, ct);
            b
        }
        None => Vec::new(),
    };
    let req = req.body(bytes)?;
    Ok(client.request::<Value>(req).await?)
}

/// `url` with `dryRun=All` when `dry` is server, and the other `params`.
pub fn url_with(url: &str, dry: DryRun, params: &[(&str, &str)]) -> String {
    let mut p: Vec<(&str, &str)> = vec![("dryRun", dry.param())];
    p.extend_from_slice(params);
    crate::cmd::with_query(url, &p)
}

pub async fn create(
    client: &kube::Client,
    collection_url: &str,
    obj: &Value,
    dry: DryRun,
    params: &[(&str, &str)],
) -> anyhow::Result<Value> {
    send(
        client,
        http::Method::POST,
        &url_with(collection_url, dry, params),
        Some(("application/json", serde_json::to_vec(obj)?)),
    )
    .await
}

pub async fn patch(
    client: &kube::Client,
    url: &str,
    content_type: &str,
    patch: &Value,
    dry: DryRun,
    params: &[(&str, &str)],
) -> anyhow::Result<Value> {
    send(
        client,
        http::Method::PATCH,
        &url_with(url, dry, params),
        Some((content_type, serde_json::to_vec(patch)?)),
    )
    .await
}

pub async fn get(client: &kube::Client, url: &str) -> anyhow::Result<Value> {
    send(client, http::Method::GET, url, None).await
}

/// The content type of strategic merge patches for built-in types, merge patches
/// for the rest (custom resources refuse strategic ones).
pub fn smp_or_merge(res: &ResourceInfo) -> &'static str {
    if apimachinery::patch::BuiltinPatchMeta::is_builtin_group(&res.group) {
        "application/strategic-merge-patch+json"
    } else {
        "application/merge-patch+json"
    }
}

/// `e` with the server's message prefixed (`error when creating "x.yaml": `).
pub fn prefix_api_error(e: anyhow::Error, prefix: &str) -> anyhow::Error {
    if let Some(status) = crate::errors::api_status(&e) {
        let mut s = status.clone();
        s.message = format!("{prefix}{}", s.message);
        return kube::Error::Api(Box::new(s)).into();
    }
    e
}

/// The `-o` flag of write commands: `yaml`, `json`, `name` or none (the message).
pub fn parse_output(o: Option<&str>) -> anyhow::Result<Option<Output>> {
    match o {
        None | Some("") => Ok(None),
        Some(o) => Output::parse(Some(o)).map(Some),
    }
}

/// Prints the result of a write: the object (`-o yaml|json|name`) or
/// `kind.group/name <verb><dry-run suffix>`.
pub fn print_result(
    output: Option<&Output>,
    obj: &Value,
    res: &ResourceInfo,
    verb: &str,
    dry: DryRun,
) -> anyhow::Result<()> {
    match output {
        None => println!("{} {verb}{}", printers::object_name(obj, res), dry.suffix()),
        Some(o) => {
            let mut obj = obj.clone();
            printers::strip_managed_fields(&mut obj);
            print!(
                "{}",
                printers::print_objects(o, &[(obj, res.clone())], true, false)?
            )
        }
    }
    Ok(())
}

/// A JSON object with keys sorted recursively (Go's encoding of maps).
pub fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for k in keys {
                out.insert(k.clone(), sorted(&m[k]));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// Sets `metadata.<field>.<key>` to `value` (creating the maps).
pub fn set_meta_entry(obj: &mut Value, field: &str, key: &str, value: &str) {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if !obj["metadata"][field].is_object() {
        obj["metadata"][field] = json!({});
    }
    obj["metadata"][field][key] = json!(value);
}

/// The objects of a `TYPE NAME…` / `TYPE/NAME…` / `-l` / `--all` selection, fetched.
pub async fn select(
    ctx: &Ctx,
    resources: &[String],
    selector: Option<&str>,
    all: bool,
    all_namespaces: bool,
) -> anyhow::Result<Vec<(Value, ResourceInfo)>> {
    let discovery = ctx.discovery().await?;
    let namespace = ctx.namespace().await?;
    let client = ctx.client().await?;
    let mut out = Vec::new();
    for sel in crate::resources::parse_type_names(resources)? {
        let res = discovery.resolve(&sel.type_arg)?;
        let ns = (res.namespaced && !all_namespaces).then_some(namespace.as_str());
        if sel.names.is_empty() {
            if selector.is_none() && !all {
                anyhow::bail!("resource(s) were provided, but no name was specified");
            }
            let url = crate::cmd::with_query(
                &res.collection_url(ns),
                &[("labelSelector", selector.unwrap_or_default())],
            );
            let list = get(&client, &url).await?;
            for item in list["items"].as_array().cloned().unwrap_or_default() {
                out.push((item, res.clone()));
            }
        } else {
            for n in &sel.names {
                out.push((get(&client, &res.object_url(ns, n)).await?, res.clone()));
            }
        }
    }
    Ok(out)
}

/// The namespace of a fetched object, for its URL.
pub fn ns_of(obj: &Value) -> Option<&str> {
    obj["metadata"]["namespace"].as_str()
}

pub fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_multi_document_yaml_lists_and_json() {
        let docs = parse_documents(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n# only a comment\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: b}}\n- {apiVersion: v1, kind: Secret, metadata: {name: c}}\n",
            "f.yaml",
        )
        .expect("parses");
        let names: Vec<&str> = docs.iter().map(|d| name_of(&d.obj)).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(docs.iter().all(|d| d.source == "f.yaml"));
        let json = parse_documents(
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "j"}}"#,
            "j.json",
        )
        .expect("parses");
        assert_eq!(json.len(), 1);
    }

    #[test]
    fn yaml_errors_read_like_go_yaml() {
        let err = |text: &str| parse_documents(text, "x.yaml").err().map(|e| e.to_string());
        assert_eq!(
            err("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [bad\n").as_deref(),
            Some("error parsing x.yaml: error converting YAML to JSON: yaml: line 4: did not find expected ',' or ']'")
        );
        assert_eq!(
            err("a: 1\nb:\n  c: d\n   e: f\n").as_deref(),
            Some("error parsing x.yaml: error converting YAML to JSON: yaml: line 4: mapping values are not allowed in this context")
        );
        assert_eq!(
            err("a: b: c\n").as_deref(),
            Some("error parsing x.yaml: error converting YAML to JSON: yaml: mapping values are not allowed in this context")
        );
    }
}
