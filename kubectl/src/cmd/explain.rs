//! `kubectl explain TYPE[.FIELD…] [--recursive] [--api-version]`: the field
//! documentation from the apiserver's OpenAPI v3 documents
//! (`/openapi/v3/apis/<group>/<version>`), printed as the stock kubectl 1.32 prints it.

use serde_json::Value;

use crate::context::Ctx;
use crate::errors;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TYPE[.FIELD…]
    pub target: Vec<String>,
    /// Print the fields of fields (Currently only 1 level deep)
    #[arg(long)]
    pub recursive: bool,
    /// Use given api-version (group/version) of the resource.
    #[arg(long = "api-version")]
    pub api_version: Option<String>,
    /// Format in which to render the schema. Valid values are: (plaintext, plaintext-openapiv2).
    #[arg(long = "output", short = 'o', default_value = "plaintext")]
    pub output: String,
}

/// One OpenAPI document and the lookups explain needs in it.
struct Doc<'a> {
    schemas: &'a serde_json::Map<String, Value>,
}

impl<'a> Doc<'a> {
    fn resolve(&self, r: &str) -> Option<&'a Value> {
        self.schemas.get(r.rsplit('/').next()?)
    }

    /// The schema with a lone `allOf` or a `$ref` followed (for walking into fields).
    fn deref(&self, s: &'a Value) -> &'a Value {
        if let Some(r) = s["$ref"].as_str() {
            return self.resolve(r).map(|t| self.deref(t)).unwrap_or(s);
        }
        if let Some([one]) = s["allOf"].as_array().map(Vec::as_slice) {
            if s.get("properties").is_none() {
                return self.deref(one);
            }
        }
        s
    }

    /// The type name explain shows (`string`, `[]Container`, `map[string]string`, `Object`…).
    fn type_guess(&self, s: &Value) -> String {
        if s.get("items").is_some() {
            return format!("[]{}", self.type_guess(&s["items"]));
        }
        if s.get("additionalProperties").is_some_and(|a| a.is_object()) {
            return format!("map[string]{}", self.type_guess(&s["additionalProperties"]));
        }
        if let Some([one]) = s["allOf"].as_array().map(Vec::as_slice) {
            if s.get("properties").is_none() {
                return self.type_guess(one);
            }
        }
        if let Some(r) = s["$ref"].as_str() {
            if let Some(target) = self.resolve(r) {
                match target["type"].as_str() {
                    None | Some("object") => {
                        let name = r.rsplit('/').next().unwrap_or_default();
                        let short = name.rsplit('.').next().unwrap_or_default();
                        return if short.is_empty() {
                            "Object".into()
                        } else {
                            short.to_string()
                        };
                    }
                    Some(t) => return t.to_string(),
                }
            }
        }
        s["type"].as_str().unwrap_or("Object").to_string()
    }

    /// The description of a field (and of the type it refers to).
    fn descriptions(&self, s: &Value) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(d) = s["description"].as_str() {
            out.push(d.to_string());
        }
        let mut inner = s;
        loop {
            if let Some(items) = inner.get("items") {
                inner = items;
                continue;
            }
            if let Some(a) = inner.get("additionalProperties").filter(|a| a.is_object()) {
                inner = a;
                continue;
            }
            if let Some([one]) = inner["allOf"].as_array().map(Vec::as_slice) {
                inner = one;
                continue;
            }
            break;
        }
        if let Some(r) = inner["$ref"].as_str() {
            if let Some(d) = self.resolve(r).and_then(|t| t["description"].as_str()) {
                out.push(d.to_string());
            }
        }
        out
    }
}

/// Greedy word wrap at `width` columns (spaces kept as they are inside a line).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        for word in para.split(' ') {
            if line.is_empty() {
                line.push_str(word);
            } else if line.chars().count() + 1 + word.chars().count() <= width {
                line.push(' ');
                line.push_str(word);
            } else {
                lines.push(std::mem::take(&mut line));
                line.push_str(word);
            }
        }
        lines.push(line);
    }
    lines
}

fn push_wrapped(out: &mut String, text: &str, indent: usize) {
    for l in wrap(text, 80 - indent) {
        out.push_str(&" ".repeat(indent));
        out.push_str(&l);
        out.push('\n');
    }
}

fn fields_of<'a>(doc: &Doc<'a>, s: &'a Value) -> Vec<(String, &'a Value, bool)> {
    let s = doc.deref(s);
    let s = match s.get("items") {
        Some(items) => doc.deref(items),
        None => s,
    };
    let required: Vec<&str> = s["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out: Vec<(String, &Value, bool)> = s["properties"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v, required.contains(&k.as_str())))
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn recursive_fields(doc: &Doc, s: &Value, indent: usize, out: &mut String, depth: usize) {
    for (name, f, req) in fields_of(doc, s) {
        out.push_str(&format!(
            "{}{name}\t<{}>{}\n",
            " ".repeat(indent),
            doc.type_guess(f),
            if req { " -required-" } else { "" }
        ));
        if depth < 15 {
            recursive_fields(doc, f, indent + 2, out, depth + 1);
        }
    }
}

pub async fn run(ctx: &Ctx, args: Args) -> anyhow::Result<()> {
    let Some(target) = args.target.first() else {
        return errors::usage("explain", "You must specify the type of resource to explain. Use \"kubectl api-resources\" for a complete list of supported resources.\n");
    };
    if args.target.len() > 1 {
        return errors::usage("explain", "We accept only this format: explain RESOURCE\n");
    }
    let discovery = ctx.discovery().await?;
    let (type_part, path): (&str, Vec<&str>) = match target.split_once('.') {
        Some((t, rest)) => (t, rest.split('.').collect()),
        None => (target.as_str(), Vec::new()),
    };
    let mut res = match discovery.resolve(type_part) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return Err(crate::errors::Exit(1).into());
        }
    };
    if let Some(av) = &args.api_version {
        let (g, v) = av.split_once('/').unwrap_or(("", av));
        match discovery
            .resources
            .iter()
            .find(|r| r.kind == res.kind && r.group == g && r.version == v)
        {
            Some(r) => res = r.clone(),
            None => anyhow::bail!("couldn't find resource for \"{av}, Kind={}\"", res.kind),
        }
    }
    let client = ctx.client().await?;
    let url = if res.group.is_empty() {
        format!("/openapi/v3/api/{}", res.version)
    } else {
        format!("/openapi/v3/apis/{}/{}", res.group, res.version)
    };
    let document = super::get_json(&client, &url).await?;
    let empty = serde_json::Map::new();
    let doc = Doc {
        schemas: document["components"]["schemas"]
            .as_object()
            .unwrap_or(&empty),
    };
    let root = doc
        .schemas
        .values()
        .find(|s| {
            s["x-kubernetes-group-version-kind"]
                .as_array()
                .is_some_and(|g| {
                    g.iter().any(|gvk| {
                        gvk["group"] == res.group.as_str()
                            && gvk["version"] == res.version.as_str()
                            && gvk["kind"] == res.kind.as_str()
                    })
                })
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "couldn't find resource for \"{}, Kind={}\"",
                res.api_version(),
                res.kind
            )
        })?;
    let mut out = String::new();
    if !res.group.is_empty() {
        out.push_str(&format!("GROUP:      {}\n", res.group));
    }
    out.push_str(&format!(
        "KIND:       {}\nVERSION:    {}\n\n",
        res.kind, res.version
    ));
    let mut schema = root;
    for field in &path {
        let fields = fields_of(&doc, schema);
        match fields.into_iter().find(|(n, _, _)| n == field) {
            Some((_, f, _)) => schema = f,
            None => {
                print!("{out}");
                anyhow::bail!("field \"{field}\" does not exist")
            }
        }
    }
    let descriptions = if let Some(last) = path.last() {
        out.push_str(&format!("FIELD: {last} <{}>\n\n\n", doc.type_guess(schema)));
        doc.descriptions(schema)
    } else {
        root["description"]
            .as_str()
            .map(|d| vec![d.to_string()])
            .unwrap_or_default()
    };
    out.push_str("DESCRIPTION:\n");
    for d in &descriptions {
        push_wrapped(&mut out, d, 4);
    }
    out.push_str("    \n");
    let fields = fields_of(&doc, schema);
    if !fields.is_empty() {
        out.push_str("FIELDS:\n");
        if args.recursive {
            recursive_fields(&doc, schema, 2, &mut out, 0);
        } else {
            for (name, f, req) in fields {
                out.push_str(&format!(
                    "  {name}\t<{}>{}\n",
                    doc.type_guess(f),
                    if req { " -required-" } else { "" }
                ));
                if let Some(d) = f["description"].as_str() {
                    push_wrapped(&mut out, d, 4);
                }
                out.push('\n');
            }
        }
    }
    out.push('\n');
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_like_the_stock_explain() {
        let text = "List of ports to expose from the container. Not specifying a port here DOES NOT prevent that port";
        assert_eq!(
            wrap(text, 76),
            vec![
                "List of ports to expose from the container. Not specifying a port here DOES",
                "NOT prevent that port"
            ]
        );
        assert_eq!(wrap("a  b\n\nc", 76), vec!["a  b", "", "c"]);
    }
}
