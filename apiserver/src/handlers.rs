//! The REST verbs over stored objects: get, list, watch, create, update, patch, delete
//! and deletecollection, with the subresources `status` and `scale`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Map, Value};
use tracing::debug;

use apimachinery::managedfields;
use apimachinery::patch::BuiltinPatchMeta;

use crate::admission;
use crate::codec::{self, Format, Negotiated, Shape};
use crate::conversion;
use crate::errors::ApiError;
use crate::filter::Filter;
use crate::printers;
use crate::registry::ResourceInfo;
use crate::server::ApiServer;
use crate::storage::{RangeOptions, Revision, StoreError};
use crate::watchcache::{self, CacheEvent, EventType};

/// What a request addresses, parsed from its path.
#[derive(Debug, Clone)]
pub struct Target {
    pub res: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

/// Query parameters of a request (the last value of each wins, as in Kubernetes).
#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(query: Option<&str>) -> Result<Params, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
        Ok(Params(pairs))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    fn dry_run(&self) -> Result<bool, ApiError> {
        match self.0.iter().filter(|(k, _)| k == "dryRun").map(|(_, v)| v.as_str()).collect::<Vec<_>>().as_slice() {
            [] => Ok(false),
            ["All"] => Ok(true),
            other => Err(ApiError::bad_request(format!("dryRun: Unsupported value: {other:?}: supported values: \"All\""))),
        }
    }

    /// Fills in `fieldManager` for writes that are not applies, from the User-Agent as
    /// Kubernetes does (`kubectl/v1.32.0 …` → `kubectl`).
    fn with_default_field_manager(mut self, headers: &HeaderMap) -> Params {
        if self.get("fieldManager").is_none_or(str::is_empty) && !codec::content_type(headers).starts_with("application/apply-patch") {
            let ua = headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
            self.0.push(("fieldManager".into(), managedfields::manager_from_user_agent(ua)));
        }
        self
    }

    /// The manager an Update is recorded for (none for internal writes).
    fn field_manager(&self) -> Option<&str> {
        self.get("fieldManager").filter(|m| !m.is_empty())
    }

    fn positive(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| ApiError::bad_request(format!("{key}: invalid value {v:?}"))),
        }
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn respond(status: StatusCode, negotiated: Negotiated, value: &Value) -> Response {
    let (body, ct) = codec::encode(negotiated.format, value);
    (status, [(http::header::CONTENT_TYPE, ct)], body).into_response()
}

/// The object as a client asked to see it (itself, a one-row Table, or its metadata).
fn shape_one(target: &Target, negotiated: Negotiated, obj: Value, params: &Params) -> Value {
    match negotiated.shape {
        Shape::Object => obj,
        Shape::Table => {
            let list_meta = json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)});
            printers::table(target.res.plural, target.res.group, &[obj], include_object(params), list_meta, chrono::Utc::now())
        }
        Shape::PartialObjectMetadata => partial_metadata(&obj),
    }
}

pub(crate) fn include_object(params: &Params) -> printers::IncludeObject {
    match params.get("includeObject") {
        Some("None") => printers::IncludeObject::None,
        Some("Object") => printers::IncludeObject::Object,
        _ => printers::IncludeObject::Metadata,
    }
}

pub(crate) fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

impl ApiServer {
    /// Serves one resource request.
    pub async fn serve_resource(
        self: Arc<Self>,
        method: Method,
        target: Target,
        params: Params,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response, ApiError> {
        let negotiated = codec::negotiate(&headers)?;
        if let Some(s) = target.sub.as_deref() {
            if !target.res.has_subresource(s) {
                return Err(ApiError::path_not_found(&format!("{}/{}", target.res.plural, s)));
            }
            if !matches!(s, "status" | "scale" | "binding" | "eviction" | "finalize" | "approval" | "ephemeralcontainers") {
                return Err(ApiError::service_unavailable(format!(
                    "the {s} subresource is served by the kubelet, and no kubelet API is connected to this apiserver yet"
                )));
            }
        }
        let params = params.with_default_field_manager(&headers);
        // A create or update body is decoded once, for field validation and the verb.
        let decoded = match method {
            Method::POST | Method::PUT => Some(codec::decode_object(&headers, &body)?),
            _ => None,
        };
        let mut warnings = self.check_fields(&target, &method, &params, &headers, &body, decoded.as_ref())?;
        if let (Some(obj), Some(ns), None) = (decoded.as_ref(), target.namespace.as_deref(), target.sub.as_deref()) {
            warnings.extend(crate::admission::pod_security_warnings(&self, target.res.kind, ns, obj));
        }
        let mut response = self.dispatch_verb(method, target, params, headers, body, decoded, negotiated).await?;
        for w in warnings {
            let text = format!("299 - {}", serde_json::Value::String(w));
            if let Ok(v) = http::HeaderValue::from_str(&text) {
                response.headers_mut().append(http::header::WARNING, v);
            }
        }
        Ok(response)
    }

    /// Server-side field validation of a write's body: unknown fields are an error
    /// (Strict), a warning (Warn, the default) or ignored.
    fn check_fields(
        &self,
        target: &Target,
        method: &Method,
        params: &Params,
        headers: &HeaderMap,
        body: &[u8],
        decoded: Option<&Value>,
    ) -> Result<Vec<String>, ApiError> {
        if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) || target.sub.as_deref().is_some_and(|s| s != "status") {
            return Ok(vec![]);
        }
        let mode = crate::openapi::FieldValidation::parse(params.get("fieldValidation")).map_err(ApiError::bad_request)?;
        if mode == crate::openapi::FieldValidation::Ignore {
            return Ok(vec![]);
        }
        let ct = codec::content_type(headers);
        let patch_body;
        let obj = match (decoded, ct.as_str()) {
            (Some(obj), _) => obj,
            (None, "application/merge-patch+json" | "application/strategic-merge-patch+json") => match codec::decode_json(body) {
                Ok(v) => {
                    patch_body = v;
                    &patch_body
                }
                Err(_) => return Ok(vec![]),
            },
            (None, "application/apply-patch+yaml") => match codec::decode_yaml(body) {
                Ok(v) => {
                    patch_body = v;
                    &patch_body
                }
                Err(_) => return Ok(vec![]),
            },
            // JSON patch bodies are operations, not objects; under Strict the object they
            // produce is checked in `patch`.
            _ => return Ok(vec![]),
        };
        let unknown: Vec<String> = crate::openapi::unknown_fields(target.res, obj).into_iter().map(|f| format!("unknown field \"{f}\"")).collect();
        if unknown.is_empty() {
            return Ok(vec![]);
        }
        match mode {
            crate::openapi::FieldValidation::Strict => {
                let kind = target.res.kind;
                let what = if *method == Method::PATCH { String::new() } else { format!("{kind} in version \"{}\" cannot be handled as a {kind}: ", target.res.version) };
                Err(ApiError::bad_request(format!("{what}strict decoding error: {}", unknown.join(", "))))
            }
            _ => Ok(unknown),
        }
    }

    async fn dispatch_verb(
        self: Arc<Self>,
        method: Method,
        target: Target,
        params: Params,
        headers: HeaderMap,
        body: Bytes,
        decoded: Option<Value>,
        negotiated: Negotiated,
    ) -> Result<Response, ApiError> {
        let sub = target.sub.as_deref();
        let object = move || decoded.ok_or_else(|| ApiError::bad_request("the request has no body"));
        match (method, target.name.is_some()) {
            (Method::GET, false) if params.flag("watch") => self.watch(target, params, negotiated).await,
            (Method::GET, false) => self.list(&target, &params, negotiated).await,
            (Method::GET, true) => {
                let (obj, _) = self.read(&target).await?;
                let obj = if sub == Some("scale") { admission::scale_of(target.res, &obj)? } else { obj };
                Ok(respond(StatusCode::OK, negotiated, &shape_one(&target, negotiated, obj, &params)))
            }
            (Method::POST, false) => {
                let obj = object()?;
                if target.res.plural == "bindings" {
                    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
                    let pods = crate::registry::lookup("", "v1", "pods").ok_or_else(|| ApiError::internal("pods not registered"))?;
                    let pod_target = Target { res: pods, namespace: target.namespace.clone(), name: Some(name), sub: Some("binding".into()) };
                    return self.bind(&pod_target, obj, &params, negotiated).await;
                }
                let (status, created) = self.create(&target, obj, &params).await?;
                Ok(respond(status, negotiated, &shape_one(&target, negotiated, created, &params)))
            }
            (Method::POST, true) if sub == Some("binding") => {
                let obj = object()?;
                self.bind(&target, obj, &params, negotiated).await
            }
            (Method::POST, true) if sub == Some("eviction") => {
                let obj = object()?;
                self.evict(&target, &obj, &params, negotiated).await
            }
            (Method::PUT, true) if sub == Some("finalize") => {
                let obj = object()?;
                let (status, updated) = self.finalize_namespace(&target, &obj, &params).await?;
                Ok(respond(status, negotiated, &shape_one(&target, negotiated, updated, &params)))
            }
            (Method::PUT, true) => {
                let obj = object()?;
                let (status, updated) = self.update(&target, obj, &params).await?;
                Ok(respond(status, negotiated, &shape_one(&target, negotiated, updated, &params)))
            }
            (Method::PATCH, true) => {
                let (status, patched, warnings) = self.patch(&target, &headers, &body, &params).await?;
                let mut response = respond(status, negotiated, &shape_one(&target, negotiated, patched, &params));
                for w in warnings {
                    if let Ok(v) = http::HeaderValue::from_str(&format!("299 - {}", Value::String(w))) {
                        response.headers_mut().append(http::header::WARNING, v);
                    }
                }
                Ok(response)
            }
            (Method::DELETE, true) => {
                let options = if body.is_empty() { json!({}) } else { codec::decode_object(&headers, &body)? };
                let (status, out) = self.delete(&target, &options, &params).await?;
                Ok(respond(status, negotiated, &out))
            }
            (Method::DELETE, false) => {
                let options = if body.is_empty() { json!({}) } else { codec::decode_object(&headers, &body)? };
                self.delete_collection(&target, &options, &params, negotiated).await
            }
            (m, _) => Err(ApiError::method_not_allowed(format!("the server does not allow this method on the requested resource ({m})"))),
        }
    }

    fn name_of<'a>(&self, target: &'a Target) -> &'a str {
        target.name.as_deref().unwrap_or_default()
    }

    /// Reads one object with its revision.
    pub async fn read(&self, target: &Target) -> Result<(Value, Revision), ApiError> {
        let name = self.name_of(target);
        let key = target.res.key(target.namespace.as_deref(), name);
        let (kv, _) = self.store.get(&key).await.map_err(|e| ApiError::from_store(target.res, name, e))?;
        let kv = kv.ok_or_else(|| ApiError::not_found(target.res, name))?;
        let mut obj = watchcache::decode_stored(&kv.value, kv.mod_revision).map_err(ApiError::internal)?;
        conversion::from_storage(target.res, &mut obj);
        Ok((obj, kv.mod_revision))
    }

    async fn list(&self, target: &Target, params: &Params, negotiated: Negotiated) -> Result<Response, ApiError> {
        let filter = Filter::new(target.res, target.namespace.clone(), params.get("labelSelector"), params.get("fieldSelector"))?;
        let limit = params.positive("limit")?.filter(|l| *l > 0).map(|l| l as usize);
        let prefix = target.res.namespace_prefix(target.namespace.as_deref());
        let (mut start_after, mut revision) = (None, None);
        if let Some(token) = params.get("continue").filter(|t| !t.is_empty()) {
            let (rv, start) = decode_continue(token, &prefix)?;
            start_after = Some(start);
            revision = Some(rv);
        } else if let Some(rv) = params.get("resourceVersion").filter(|v| !v.is_empty() && *v != "0") {
            let rv: Revision = rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
            match params.get("resourceVersionMatch") {
                Some("Exact") => revision = Some(rv),
                Some("NotOlderThan") | None | Some("") => {
                    let current = self.store.current_revision().await.map_err(|e| ApiError::from_store(target.res, "", e))?;
                    if rv > current {
                        return Err(ApiError::from_store(target.res, "", StoreError::FutureRevision { requested: rv, current }));
                    }
                }
                Some(other) => {
                    return Err(ApiError::bad_request(format!("resourceVersionMatch: Unsupported value: \"{other}\"")));
                }
            }
        }
        // Plain JSON lists without selectors are written from the stored bytes, not
        // decoded and encoded again (the namespace is the key prefix's already).
        let raw = negotiated.shape == Shape::Object
            && negotiated.format == Format::Json
            && !conversion::converts(target.res)
            && filter.labels.is_empty()
            && filter.fields.is_empty();
        let mut items = Vec::new();
        let mut raw_items: Vec<u8> = Vec::new();
        let mut count = 0usize;
        let mut more = false;
        let mut last_key = None;
        loop {
            let want = limit.map(|l| (l - count).max(1));
            let chunk = want.map(|w| w.max(if filter.labels.is_empty() && filter.fields.is_empty() { w } else { 500 }));
            let page = self
                .store
                .range(&prefix, RangeOptions { start_after: start_after.clone(), limit: chunk, revision })
                .await
                .map_err(|e| ApiError::from_store(target.res, "", e))?;
            revision = Some(page.revision);
            let n = page.kvs.len();
            for (i, kv) in page.kvs.into_iter().enumerate() {
                if raw {
                    if count > 0 {
                        raw_items.push(b',');
                    }
                    if !crate::rawjson::append_with_resource_version(&mut raw_items, &kv.value, kv.mod_revision) {
                        let obj = watchcache::decode_stored(&kv.value, kv.mod_revision).map_err(ApiError::internal)?;
                        serde_json::to_writer(&mut raw_items, &obj).map_err(ApiError::internal)?;
                    }
                    count += 1;
                } else {
                    let mut obj = watchcache::decode_stored(&kv.value, kv.mod_revision).map_err(ApiError::internal)?;
                    // Filters see the stored shape, as they do in watches.
                    if filter.matches(&obj) {
                        conversion::from_storage(target.res, &mut obj);
                        items.push(obj);
                        count += 1;
                    }
                }
                last_key = Some(kv.key.clone());
                start_after = Some(kv.key);
                if limit.is_some_and(|l| count >= l) {
                    more = i + 1 < n || page.more;
                    break;
                }
            }
            if limit.is_some_and(|l| count >= l) || !page.more {
                break;
            }
        }
        let rv = revision.unwrap_or_default();
        let mut list_meta = json!({"resourceVersion": rv.to_string()});
        if more {
            if let Some(key) = last_key {
                list_meta["continue"] = Value::String(encode_continue(rv, &key, &prefix));
            }
        }
        if raw {
            let head = json!({"kind": format!("{}List", target.res.kind), "apiVersion": target.res.api_version(), "metadata": list_meta});
            let mut body = serde_json::to_vec(&head).map_err(ApiError::internal)?;
            body.pop();
            body.extend_from_slice(b",\"items\":[");
            body.extend_from_slice(&raw_items);
            body.extend_from_slice(b"]}");
            return Ok((StatusCode::OK, [(http::header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        let body = match negotiated.shape {
            Shape::Table => printers::table(target.res.plural, target.res.group, &items, include_object(params), list_meta, chrono::Utc::now()),
            Shape::PartialObjectMetadata => json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": list_meta,
                "items": items.iter().map(partial_metadata).collect::<Vec<_>>(),
            }),
            Shape::Object => json!({
                "kind": format!("{}List", target.res.kind),
                "apiVersion": target.res.api_version(),
                "metadata": list_meta,
                "items": items,
            }),
        };
        Ok(respond(StatusCode::OK, negotiated, &body))
    }

    async fn watch(self: Arc<Self>, target: Target, params: Params, negotiated: Negotiated) -> Result<Response, ApiError> {
        let filter = Filter::new(target.res, target.namespace.clone(), params.get("labelSelector"), params.get("fieldSelector"))?;
        let cache = self.cache(target.res)?;
        let bookmarks = params.flag("allowWatchBookmarks");
        let send_initial = params.flag("sendInitialEvents");
        let rv = params.get("resourceVersion").filter(|v| !v.is_empty());
        let from = match rv {
            None | Some("0") => None,
            Some(_) if send_initial => None,
            Some(v) => Some(v.parse::<Revision>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {v}")))?),
        };
        if send_initial && params.get("resourceVersionMatch") != Some("NotOlderThan") {
            return Err(ApiError::invalid(
                target.res,
                "",
                vec![crate::errors::Cause::forbidden("resourceVersionMatch", "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")],
            ));
        }
        let timeout = params
            .positive("timeoutSeconds")?
            .filter(|t| *t > 0)
            .map(|t| Duration::from_secs(t as u64))
            .unwrap_or_else(|| Duration::from_secs(1800 + rand::random::<u64>() % 1800));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
        let format = negotiated.format;
        let encode_event = {
            let target = target.clone();
            let params = params.clone();
            move |kind: &str, obj: &Value| -> Bytes {
                let converted;
                let obj = if conversion::converts(target.res) && !matches!(kind, "BOOKMARK" | "ERROR") {
                    let mut o = obj.clone();
                    conversion::from_storage(target.res, &mut o);
                    converted = o;
                    &converted
                } else {
                    obj
                };
                let object = match negotiated.shape {
                    Shape::Table if kind != "BOOKMARK" => {
                        let rv = obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                        printers::table(target.res.plural, target.res.group, std::slice::from_ref(obj), include_object(&params), json!({"resourceVersion": rv}), chrono::Utc::now())
                    }
                    Shape::PartialObjectMetadata => partial_metadata(obj),
                    _ => obj.clone(),
                };
                let ev = json!({"type": kind, "object": object});
                let mut line = match format {
                    Format::Json => serde_json::to_vec(&ev).unwrap_or_default(),
                    Format::Yaml => serde_yaml_ng::to_string(&ev).unwrap_or_default().into_bytes(),
                };
                if format == Format::Yaml {
                    let mut doc = b"---\n".to_vec();
                    doc.extend(line);
                    line = doc;
                } else {
                    line.push(b'\n');
                }
                Bytes::from(line)
            }
        };
        // A change sent as the object is (JSON, no conversion) is the JSON the watch
        // cache keeps: no encode, however many watchers.
        let plain = negotiated.shape == Shape::Object && format == Format::Json && !conversion::converts(target.res);
        let encode_change = {
            let encode_event = encode_event.clone();
            move |kind: &str, ev: &CacheEvent| -> Bytes {
                if !plain {
                    return encode_event(kind, &ev.object.decode());
                }
                let object = ev.object.json();
                let mut line = Vec::with_capacity(object.len() + 32);
                line.extend_from_slice(b"{\"type\":\"");
                line.extend_from_slice(kind.as_bytes());
                line.extend_from_slice(b"\",\"object\":");
                line.extend_from_slice(object);
                line.extend_from_slice(b"}\n");
                Bytes::from(line)
            }
        };
        let bookmark = {
            let res = target.res;
            move |rv: Revision, initial_end: bool| -> Value {
                let mut meta = json!({"resourceVersion": rv.to_string()});
                if initial_end {
                    meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                }
                json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": meta})
            }
        };

        // A resourceVersion older than the cache's window is served from the store's own
        // history (after an apiserver restart, say); the store answers 410 if it is gone.
        let subscription = match cache.subscribe(from) {
            Ok(s) => Ok(s),
            Err(watchcache::CacheError::TooOld { requested, .. }) => Err(requested),
        };
        let shutdown = self.shutdown.clone();
        match subscription {
            Ok(mut sub) => {
                let target2 = target.clone();
                tokio::spawn(async move {
                    let deadline = tokio::time::sleep(timeout);
                    tokio::pin!(deadline);
                    let mut last = sub.after;
                    for ev in &sub.initial {
                        if let Some(line) = filtered_event(&filter, ev, &encode_change) {
                            if tx.send(Ok(line)).await.is_err() {
                                return;
                            }
                        }
                    }
                    if send_initial && tx.send(Ok(encode_event("BOOKMARK", &bookmark(last, true)))).await.is_err() {
                        return;
                    }
                    let mut ticker = tokio::time::interval(Duration::from_secs(60));
                    ticker.tick().await;
                    loop {
                        tokio::select! {
                            _ = &mut deadline => return,
                            _ = shutdown.cancelled() => return,
                            _ = tx.closed() => return,
                            _ = ticker.tick(), if bookmarks => {
                                let rv = last.max(cache.revision());
                                if tx.send(Ok(encode_event("BOOKMARK", &bookmark(rv, false)))).await.is_err() { return; }
                            }
                            ev = sub.live.recv() => match ev {
                                Ok(ev) => {
                                    if ev.revision <= last { continue; }
                                    last = ev.revision;
                                    if let Some(line) = filtered_event(&filter, &ev, &encode_change) {
                                        if tx.send(Ok(line)).await.is_err() { return; }
                                    }
                                }
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                    debug!(resource = %target2.res.plural, lagged = n, "watcher fell behind; ending its watch");
                                    let status = ApiError::gone(format!("too old resource version: {last}")).status();
                                    let _ = tx.send(Ok(encode_event("ERROR", &status))).await;
                                    return;
                                }
                                Err(_) => return,
                            }
                        }
                    }
                });
            }
            Err(requested) => {
                let pointers = crate::filter::selectable_pointers(target.res.storage_resource);
                let mut stream = self
                    .store
                    .watch(&target.res.namespace_prefix(target.namespace.as_deref()), requested)
                    .await
                    .map_err(|e| match e {
                        StoreError::Compacted { .. } => ApiError::gone(format!("too old resource version: {requested}")),
                        other => ApiError::from_store(target.res, "", other),
                    })?;
                tokio::spawn(async move {
                    let deadline = tokio::time::sleep(timeout);
                    tokio::pin!(deadline);
                    loop {
                        let next = tokio::select! {
                            _ = &mut deadline => return,
                            _ = shutdown.cancelled() => return,
                            _ = tx.closed() => return,
                            n = stream.next() => n,
                        };
                        let ev = match next {
                            Some(Ok(ev)) => ev,
                            Some(Err(e)) => {
                                let status = ApiError::from_store(target.res, "", e).status();
                                let _ = tx.send(Ok(encode_event("ERROR", &status))).await;
                                return;
                            }
                            None => return,
                        };
                        let cache_event = match ev {
                            crate::storage::WatchEvent::Progress { revision } => {
                                if bookmarks && tx.send(Ok(encode_event("BOOKMARK", &bookmark(revision, false)))).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            ev => match CacheEvent::from_store(ev, None, &pointers) {
                                Some(Ok(ev)) => ev,
                                _ => continue,
                            },
                        };
                        if let Some(line) = filtered_event(&filter, &cache_event, &encode_change) {
                            if tx.send(Ok(line)).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        }
        let ct = match format {
            Format::Json => "application/json",
            Format::Yaml => "application/yaml",
        };
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, ct)
            .header(http::header::CACHE_CONTROL, "no-cache, private")
            .body(body)
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
    }

    async fn create(&self, target: &Target, obj: Value, params: &Params) -> Result<(StatusCode, Value), ApiError> {
        self.create_recording(target, obj, params, true).await
    }

    /// Creates an object; with `record`, the request's field manager comes to own every
    /// field (an apply that creates has recorded its own entry already).
    async fn create_recording(&self, target: &Target, mut obj: Value, params: &Params, record: bool) -> Result<(StatusCode, Value), ApiError> {
        let res = target.res;
        check_type(res, &obj)?;
        let meta = obj
            .as_object_mut()
            .and_then(|o| o.entry("metadata").or_insert_with(|| json!({})).as_object_mut())
            .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
        if res.namespaced {
            let ns = target.namespace.clone().unwrap_or_default();
            match meta.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta.insert("namespace".into(), Value::String(ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
        let has_name = meta.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        if !has_name {
            match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let name = generate_name(prefix);
                    meta.insert("name".into(), Value::String(name));
                }
                _ => {
                    return Err(ApiError::invalid(res, "", vec![crate::errors::Cause::required("metadata.name")]));
                }
            }
        }
        // As Kubernetes' storage: a resourceVersion that reads as a revision is refused,
        // anything else (empty, "0", not a number) is dropped.
        if meta.get("resourceVersion").and_then(Value::as_str).and_then(|rv| rv.parse::<u64>().ok()).is_some_and(|rv| rv > 0) {
            return Err(ApiError::resource_version_on_create());
        }
        for field in ["resourceVersion", "uid", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"] {
            meta.remove(field);
        }
        meta.insert("uid".into(), Value::String(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        if res.tracks_generation {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        let name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let namespace = meta.get("namespace").and_then(Value::as_str).map(str::to_string);
        if let Some(ns) = &namespace {
            self.check_namespace_accepts_creates(res, &name, ns).await?;
        }
        let dry_run = params.dry_run()?;
        let _allocation = admission::admit_create(self, res, &mut obj, dry_run).await?;
        if let Some(manager) = params.field_manager().filter(|_| record) {
            obj = managedfields::update(None, &obj, manager, &BuiltinPatchMeta::for_kind(res.group, res.kind), &now_rfc3339());
        }
        conversion::round_trip(res, &mut obj);
        let key = res.key(namespace.as_deref(), &name);
        if dry_run {
            if self.store.get(&key).await.map_err(|e| ApiError::from_store(res, &name, e))?.0.is_some() {
                return Err(ApiError::already_exists(res, &name));
            }
            return Ok((StatusCode::CREATED, obj));
        }
        let rev = self.store.create(&key, stored_for(res, &obj)).await.map_err(|e| ApiError::from_store(res, &name, e))?;
        watchcache::set_resource_version(&mut obj, rev);
        Ok((StatusCode::CREATED, obj))
    }

    async fn check_namespace_accepts_creates(&self, res: &ResourceInfo, name: &str, ns: &str) -> Result<(), ApiError> {
        let namespaces = crate::registry::lookup("", "v1", "namespaces").ok_or_else(|| ApiError::internal("namespaces not registered"))?;
        let key = namespaces.key(None, ns);
        // The namespace cache answers without a store round trip; a namespace created a
        // moment ago may not be in it yet, so a miss asks the store.
        let namespace = match self.cache(namespaces)?.get(&key) {
            Some(cached) => cached,
            None => {
                let (kv, _) = self.store.get(&key).await.map_err(|e| ApiError::from_store(res, name, e))?;
                let kv = kv.ok_or_else(|| ApiError::not_found(namespaces, ns))?;
                Arc::new(watchcache::decode_stored(&kv.value, kv.mod_revision).map_err(ApiError::internal)?)
            }
        };
        if namespace.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::forbidden(
                res,
                name,
                format!("unable to create new content in namespace {ns} because it is being terminated"),
            ));
        }
        Ok(())
    }

    async fn update(&self, target: &Target, new: Value, params: &Params) -> Result<(StatusCode, Value), ApiError> {
        let res = target.res;
        let name = self.name_of(target).to_string();
        check_type(res, &new)?;
        match new.pointer("/metadata/name").and_then(Value::as_str) {
            Some(n) if n == name => {}
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            None => return Err(ApiError::bad_request("name is required in the object's metadata")),
        }
        if let (Some(ns), Some(body_ns)) = (&target.namespace, new.pointer("/metadata/namespace").and_then(Value::as_str)) {
            if res.namespaced && !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        if target.sub.as_deref() == Some("scale") {
            return self.update_scale(target, new, params).await;
        }
        let precondition: Option<Revision> = match new.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            Some(rv) if !rv.is_empty() => Some(rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?),
            _ => None,
        };
        let dry_run = params.dry_run()?;
        let sub = target.sub.clone();
        let manager = params.field_manager().map(|m| (m, target.sub.as_deref().unwrap_or_default()));
        self.guaranteed_update_as(target, dry_run, manager, move |current, current_rev| {
            if let Some(rv) = precondition {
                if rv != current_rev {
                    return Err(ApiError::stale(res, &name));
                }
            }
            Ok(new.clone().with_current(current, sub.as_deref()))
        })
        .await
    }

    /// Reads, transforms and writes an object, retrying on write conflicts, with
    /// admission on the way. `change` gets the current object and its revision.
    pub async fn guaranteed_update<F>(&self, target: &Target, dry_run: bool, change: F) -> Result<(StatusCode, Value), ApiError>
    where
        F: FnMut(&Value, Revision) -> Result<Value, ApiError>,
    {
        self.guaranteed_update_as(target, dry_run, None, change).await
    }

    /// [`Self::guaranteed_update`], recording the fields the write changes (after
    /// admission) as owned by `manager` = (field manager, subresource).
    async fn guaranteed_update_as<F>(&self, target: &Target, dry_run: bool, manager: Option<(&str, &str)>, mut change: F) -> Result<(StatusCode, Value), ApiError>
    where
        F: FnMut(&Value, Revision) -> Result<Value, ApiError>,
    {
        let res = target.res;
        let name = self.name_of(target).to_string();
        for _ in 0..16 {
            let (current, rev) = self.read(target).await?;
            let mut updated = change(&current, rev)?;
            check_type(res, &updated)?;
            preserve_system_meta(&mut updated, &current, res);
            if target.sub.is_none() && res.group.is_empty() && res.plural == "pods" && admission::changes_ephemeral_containers(&updated, &current) {
                return Err(ApiError::invalid(res, &name, vec![admission::pod_update_forbidden()]));
            }
            let status_only = target.sub.as_deref() == Some("status");
            if target.sub.as_deref() == Some("ephemeralcontainers") {
                let causes = admission::validate_ephemeral_containers(&updated, &current);
                if !causes.is_empty() {
                    return Err(ApiError::invalid(res, &name, causes));
                }
            }
            // Held until the write: node ports allocated here are not handed out twice.
            let _allocation = admission::admit_update(self, res, &mut updated, &current, status_only).await?;
            if let Some((manager, subresource)) = manager {
                let meta = BuiltinPatchMeta::for_kind(res.group, res.kind);
                updated = managedfields::update_subresource(Some(&current), &updated, manager, subresource, &meta, &now_rfc3339());
            }
            conversion::round_trip(res, &mut updated);
            if updated_without_change(&updated, &current) {
                return Ok((StatusCode::OK, current));
            }
            let key = res.key(target.namespace.as_deref(), &name);
            if dry_run {
                return Ok((StatusCode::OK, updated));
            }
            if admission::finalized(&updated) && updated.pointer("/spec/finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                match self.store.delete(&key, Some(rev)).await {
                    Ok((_, del_rev)) => {
                        watchcache::set_resource_version(&mut updated, del_rev);
                        return Ok((StatusCode::OK, updated));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(ApiError::from_store(res, &name, e)),
                }
            }
            match self.store.update(&key, stored_for(res, &updated), rev).await {
                Ok(new_rev) => {
                    watchcache::set_resource_version(&mut updated, new_rev);
                    return Ok((StatusCode::OK, updated));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(res, &name, e)),
            }
        }
        Err(ApiError::conflict(res, &name, "too many concurrent writes; try again"))
    }

    /// Applies a patch; the warnings are a JSON patch's unknown fields under
    /// `fieldValidation=Warn` (the other patch types are checked up front).
    async fn patch(&self, target: &Target, headers: &HeaderMap, body: &[u8], params: &Params) -> Result<(StatusCode, Value, Vec<String>), ApiError> {
        let res = target.res;
        let name = self.name_of(target).to_string();
        let ct = codec::content_type(headers);
        if body.len() > codec::MAX_BODY_BYTES {
            return Err(ApiError::too_large("patch is too large"));
        }
        let dry_run = params.dry_run()?;
        let kind = match ct.as_str() {
            "application/json-patch+json" => PatchKind::Json,
            "application/merge-patch+json" => PatchKind::Merge,
            "application/strategic-merge-patch+json" => PatchKind::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchKind::Apply,
            other => {
                return Err(ApiError::unsupported_media_type(other));
            }
        };
        let patch = match kind {
            PatchKind::Apply => codec::decode_yaml(body)?,
            _ => codec::decode_json(body)?,
        };
        if kind == PatchKind::Apply {
            let Some(manager) = params.field_manager().map(str::to_string) else {
                return Err(ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"));
            };
            if !patch.is_object() {
                return Err(ApiError::bad_request("apply patch must be an object"));
            }
            if target.sub.is_none() {
                return self.server_side_apply(target, patch, &manager, params).await.map(|(code, obj)| (code, obj, Vec::new()));
            }
            // An apply to a subresource: merged as before, recorded as an Update.
            self.read(target).await?;
        }
        let sub = target.sub.clone();
        let group = res.group;
        let kind_name = res.kind;
        let manager = params.field_manager().map(|m| (m, target.sub.as_deref().unwrap_or_default()));
        // A JSON patch's body is operations, not an object: its fields are checked in the
        // object it produces, as Kubernetes does (the other kinds were checked up front).
        let validation = crate::openapi::FieldValidation::parse(params.get("fieldValidation")).ok();
        let strict_json = kind == PatchKind::Json && validation == Some(crate::openapi::FieldValidation::Strict);
        let warn_json = kind == PatchKind::Json && validation == Some(crate::openapi::FieldValidation::Warn);
        let warnings = std::sync::Mutex::new(Vec::new());
        let found = &warnings;
        self.guaranteed_update_as(target, dry_run, manager, move |current, _| {
            let base = if sub.as_deref() == Some("scale") { admission::scale_of(res, current)? } else { current.clone() };
            let mut patched = match kind {
                PatchKind::Json => apimachinery::patch::json_patch(&base, &patch),
                PatchKind::Merge => apimachinery::patch::merge_patch(&base, &patch),
                PatchKind::Strategic | PatchKind::Apply => {
                    let meta = apimachinery::patch::BuiltinPatchMeta::for_kind(group, kind_name);
                    apimachinery::patch::strategic_merge_patch(&base, &patch, &meta)
                }
            }
            .map_err(|e| ApiError::invalid(res, &name, vec![crate::errors::Cause { reason: "FieldValueInvalid", field: String::new(), message: e.to_string() }]))?;
            if (strict_json || warn_json) && sub.as_deref() != Some("scale") {
                let unknown: Vec<String> = crate::openapi::unknown_fields(res, &patched).into_iter().map(|f| format!("unknown field \"{f}\"")).collect();
                if !unknown.is_empty() && strict_json {
                    return Err(ApiError::bad_request(format!("strict decoding error: {}", unknown.join(", "))));
                }
                // Retried writes see the same fields: the last attempt's are the answer's.
                *found.lock().unwrap_or_else(|e| e.into_inner()) = unknown;
            }
            if sub.as_deref() == Some("scale") {
                let replicas = patched.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
                let mut obj = current.clone();
                obj["spec"]["replicas"] = replicas;
                return Ok(obj);
            }
            // A patch may not rename or move the object (as for an update, Kubernetes
            // answers 400 rather than ignore it).
            if let Some(n) = patched.pointer("/metadata/name").and_then(Value::as_str).filter(|n| *n != name) {
                return Err(ApiError::bad_request(format!("the name of the object ({n}) does not match the name on the URL ({name})")));
            }
            if let (Some(ns), Some(url_ns)) = (patched.pointer("/metadata/namespace").and_then(Value::as_str), current.pointer("/metadata/namespace").and_then(Value::as_str)) {
                if !ns.is_empty() && ns != url_ns {
                    return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
                }
            }
            if let Some(meta) = patched.get_mut("metadata").and_then(Value::as_object_mut) {
                // A patch may carry a resourceVersion precondition.
                if let Some(rv) = meta.get("resourceVersion").and_then(Value::as_str) {
                    if Some(rv) != current.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
                        return Err(ApiError::stale(res, &name));
                    }
                }
            }
            // `{"$patch": "replace"}` at the root, or a JSON patch removing `/kind`, leaves
            // the object without its type, which Kubernetes' typed decode fills in from
            // the resource; a patch that changes the type is refused further on.
            if let Some(o) = patched.as_object_mut() {
                o.entry("apiVersion").or_insert_with(|| Value::String(res.api_version()));
                o.entry("kind").or_insert_with(|| Value::String(kind_name.to_string()));
            }
            Ok(patched.with_current(current, sub.as_deref()))
        })
        .await
        .and_then(|(code, obj)| match target.sub.as_deref() {
            Some("scale") => Ok((code, admission::scale_of(res, &obj)?)),
            _ => Ok((code, obj)),
        })
        .map(|(code, obj)| (code, obj, warnings.into_inner().unwrap_or_else(|e| e.into_inner())))
    }

    /// Server-side apply (`application/apply-patch+yaml`) to the main resource: merges
    /// the configuration, records `manager`'s ownership in `managedFields`, and answers
    /// 409 with the conflicting fields unless `force=true`; creates missing objects.
    async fn server_side_apply(&self, target: &Target, applied: Value, manager: &str, params: &Params) -> Result<(StatusCode, Value), ApiError> {
        let res = target.res;
        let name = self.name_of(target).to_string();
        let force = params.flag("force");
        let dry_run = params.dry_run()?;
        let meta = BuiltinPatchMeta::for_kind(res.group, res.kind);
        let to_api_error = |e: managedfields::ApplyError| match e {
            managedfields::ApplyError::Conflicts(c) => ApiError::apply_conflicts(&c),
            other => ApiError::invalid(res, &name, vec![crate::errors::Cause { reason: "FieldValueInvalid", field: String::new(), message: other.to_string() }]),
        };
        match self.read(target).await {
            Err(e) if e.code == 404 => {
                let mut obj = managedfields::apply(None, &applied, manager, force, &meta, &now_rfc3339()).map_err(to_api_error)?;
                obj["metadata"]["name"] = Value::String(name.clone());
                return self.create_recording(target, obj, params, false).await;
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let precondition = applied.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|rv| !rv.is_empty()).map(str::to_string);
        self.guaranteed_update(target, dry_run, |current, rev| {
            if precondition.as_ref().is_some_and(|rv| *rv != rev.to_string()) {
                return Err(ApiError::stale(res, &name));
            }
            let merged = managedfields::apply(Some(current), &applied, manager, force, &meta, &now_rfc3339()).map_err(to_api_error)?;
            Ok(merged.with_current(current, None))
        })
        .await
    }

    /// `PUT namespaces/{name}/finalize`: replaces `spec.finalizers` only; a terminating
    /// namespace left without finalizers of either kind is then deleted.
    async fn finalize_namespace(&self, target: &Target, body: &Value, params: &Params) -> Result<(StatusCode, Value), ApiError> {
        let finalizers = body.pointer("/spec/finalizers").filter(|v| v.is_array()).cloned().unwrap_or_else(|| json!([]));
        let dry_run = params.dry_run()?;
        self.guaranteed_update(&Target { sub: None, ..target.clone() }, dry_run, |current, _| {
            let mut obj = current.clone();
            obj["spec"]["finalizers"] = finalizers.clone();
            Ok(obj)
        })
        .await
    }

    async fn delete(&self, target: &Target, options: &Value, params: &Params) -> Result<(StatusCode, Value), ApiError> {
        let res = target.res;
        let name = self.name_of(target).to_string();
        let dry_run = params.dry_run()? || options.get("dryRun").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
        let grace = match options.get("gracePeriodSeconds").and_then(Value::as_i64) {
            Some(g) => Some(g),
            None => params.positive("gracePeriodSeconds")?,
        };
        let policy = options
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| params.get("propagationPolicy").map(str::to_string))
            .or_else(|| match options.get("orphanDependents").and_then(Value::as_bool) {
                Some(true) => Some("Orphan".into()),
                Some(false) => Some("Background".into()),
                None => None,
            });
        let finalizer = match policy.as_deref() {
            None | Some("") | Some("Background") => None,
            Some("Orphan") => Some("orphan"),
            Some("Foreground") => Some("foregroundDeletion"),
            Some(other) => {
                return Err(ApiError::invalid(res, &name, vec![crate::errors::Cause::not_supported("propagationPolicy", other, &["Foreground", "Background", "Orphan"])]));
            }
        };
        for _ in 0..16 {
            let (current, rev) = self.read(target).await?;
            if let Some(uid) = options.pointer("/preconditions/uid").and_then(Value::as_str) {
                if current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                    return Err(ApiError::conflict(res, &name, &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", current.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or(""))));
                }
            }
            if let Some(prv) = options.pointer("/preconditions/resourceVersion").and_then(Value::as_str) {
                if prv != rev.to_string() {
                    return Err(ApiError::conflict(res, &name, &format!("Precondition failed: ResourceVersion in precondition: {prv}, ResourceVersion in object meta: {rev}")));
                }
            }
            let mut updated = current.clone();
            let graceful = admission::graceful_delete(res, &mut updated, grace);
            let meta = updated.get_mut("metadata").and_then(Value::as_object_mut).ok_or_else(|| ApiError::internal("object without metadata"))?;
            if let Some(f) = finalizer {
                let list = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(arr) = list.as_array_mut() {
                    if !arr.iter().any(|v| v == f) {
                        arr.push(Value::String(f.into()));
                    }
                    let other = if f == "orphan" { "foregroundDeletion" } else { "orphan" };
                    arr.retain(|v| v != other);
                }
            }
            let has_finalizers = meta.get("finalizers").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
            let key = res.key(target.namespace.as_deref(), &name);
            if graceful || has_finalizers || res.plural == "namespaces" {
                if !meta.contains_key("deletionTimestamp") {
                    meta.insert("deletionTimestamp".into(), Value::String(now_rfc3339()));
                    meta.entry("deletionGracePeriodSeconds").or_insert(json!(0));
                }
                if res.plural == "namespaces" {
                    updated["status"]["phase"] = json!("Terminating");
                }
                if updated == current {
                    return Ok((StatusCode::OK, current));
                }
                if dry_run {
                    return Ok((StatusCode::OK, updated));
                }
                match self.store.update(&key, stored_for(res, &updated), rev).await {
                    Ok(new_rev) => {
                        watchcache::set_resource_version(&mut updated, new_rev);
                        let code = if finalizer == Some("foregroundDeletion") { StatusCode::ACCEPTED } else { StatusCode::OK };
                        return Ok((code, updated));
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(ApiError::from_store(res, &name, e)),
                }
            }
            if dry_run {
                return Ok((StatusCode::OK, current));
            }
            match self.store.delete(&key, Some(rev)).await {
                Ok(_) => {
                    admission::release(self, res, &current).await;
                    let mut details = json!({"name": name, "kind": res.plural, "uid": current.pointer("/metadata/uid").cloned().unwrap_or(Value::Null)});
                    if !res.group.is_empty() {
                        details["group"] = json!(res.group);
                    }
                    return Ok((
                        StatusCode::OK,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
                    ));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(res, &name, e)),
            }
        }
        Err(ApiError::conflict(res, &name, "too many concurrent writes; try again"))
    }

    async fn delete_collection(&self, target: &Target, options: &Value, params: &Params, negotiated: Negotiated) -> Result<Response, ApiError> {
        let filter = Filter::new(target.res, target.namespace.clone(), params.get("labelSelector"), params.get("fieldSelector"))?;
        let prefix = target.res.namespace_prefix(target.namespace.as_deref());
        let listed = self.store.range(&prefix, RangeOptions::default()).await.map_err(|e| ApiError::from_store(target.res, "", e))?;
        let mut deleted = Vec::new();
        for kv in listed.kvs {
            let mut obj = watchcache::decode_stored(&kv.value, kv.mod_revision).map_err(ApiError::internal)?;
            if !filter.matches(&obj) {
                continue;
            }
            conversion::from_storage(target.res, &mut obj);
            let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
            let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
            let one = Target { res: target.res, namespace, name: Some(name), sub: None };
            match self.delete(&one, options, params).await {
                Ok(_) => deleted.push(obj),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let body = json!({
            "kind": format!("{}List", target.res.kind),
            "apiVersion": target.res.api_version(),
            "metadata": {"resourceVersion": listed.revision.to_string()},
            "items": deleted,
        });
        Ok(respond(StatusCode::OK, negotiated, &body))
    }

    async fn update_scale(&self, target: &Target, scale: Value, params: &Params) -> Result<(StatusCode, Value), ApiError> {
        let res = target.res;
        let name = self.name_of(target).to_string();
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid(res, &name, vec![crate::errors::Cause::invalid("spec.replicas", replicas, "must be greater than or equal to 0")]));
        }
        let precondition = scale.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        let dry_run = params.dry_run()?;
        let manager = params.field_manager().map(|m| (m, "scale"));
        let (code, obj) = self
            .guaranteed_update_as(&Target { sub: None, ..target.clone() }, dry_run, manager, |current, rev| {
                if let Some(p) = &precondition {
                    if *p != rev.to_string() {
                        return Err(ApiError::stale(res, &name));
                    }
                }
                let mut obj = current.clone();
                obj["spec"]["replicas"] = json!(replicas);
                Ok(obj)
            })
            .await?;
        Ok((code, admission::scale_of(res, &obj)?))
    }

    async fn bind(&self, target: &Target, binding: Value, params: &Params, negotiated: Negotiated) -> Result<Response, ApiError> {
        let res = target.res;
        let name = self.name_of(target).to_string();
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::invalid(res, &name, vec![crate::errors::Cause::required("target.name")]))?
            .to_string();
        let dry_run = params.dry_run()?;
        let pod_target = Target { sub: None, ..target.clone() };
        let annotations = binding.pointer("/metadata/annotations").cloned();
        self.guaranteed_update(&pod_target, dry_run, |current, _| {
            if current.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(ApiError::conflict(res, &name, "pod is being deleted, cannot be assigned to a host"));
            }
            match current.pointer("/spec/nodeName").and_then(Value::as_str) {
                Some(n) if !n.is_empty() => {
                    return Err(ApiError::conflict(res, &name, &format!("pod {name} is already assigned to node \"{n}\"")));
                }
                _ => {}
            }
            let mut pod = current.clone();
            pod["spec"]["nodeName"] = json!(node);
            if let Some(Value::Object(extra)) = &annotations {
                let meta = pod["metadata"].as_object_mut();
                if let Some(meta) = meta {
                    let ann = meta.entry("annotations").or_insert_with(|| json!({}));
                    if let Some(ann) = ann.as_object_mut() {
                        for (k, v) in extra {
                            ann.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            admission::set_pod_condition(&mut pod, "PodScheduled", "True", None, None);
            Ok(pod)
        })
        .await?;
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
        Ok(respond(StatusCode::CREATED, negotiated, &status))
    }

    async fn evict(&self, target: &Target, eviction: &Value, params: &Params, negotiated: Negotiated) -> Result<Response, ApiError> {
        let name = self.name_of(target);
        if eviction.pointer("/metadata/name").and_then(Value::as_str).is_some_and(|n| n != name) {
            return Err(ApiError::bad_request("name in URL does not match name in Eviction object"));
        }
        let pod_target = Target { sub: None, ..target.clone() };
        let options = eviction.get("deleteOptions").filter(|o| o.is_object()).cloned().unwrap_or_else(|| json!({}));
        let dry_run = params.dry_run()? || options.get("dryRun").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
        let (pod, _) = self.read(&pod_target).await?;
        crate::eviction::admit(self, &pod, dry_run).await?;
        if !dry_run {
            // As Kubernetes does: the pod says why it goes (a Job's podFailurePolicy reads it).
            let status_target = Target { sub: Some("status".into()), ..pod_target.clone() };
            self.guaranteed_update(&status_target, false, |current, _| {
                let mut pod = current.clone();
                admission::set_pod_condition(&mut pod, "DisruptionTarget", "True", Some("EvictionByEvictionAPI"), Some("Eviction API: evicting"));
                Ok(pod)
            })
            .await?;
        }
        self.delete(&pod_target, &options, params).await?;
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
        Ok(respond(StatusCode::CREATED, negotiated, &status))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

fn filtered_event(filter: &Filter, ev: &CacheEvent, encode: &impl Fn(&str, &CacheEvent) -> Bytes) -> Option<Bytes> {
    let now = filter.matches_selectable(ev.object.selectable());
    let before = ev.prev.as_deref().is_some_and(|p| filter.matches_selectable(p.selectable()));
    let kind = match ev.kind {
        EventType::Added if now => "ADDED",
        EventType::Modified if now && before => "MODIFIED",
        EventType::Modified if now => "ADDED",
        EventType::Modified if before => "DELETED",
        EventType::Deleted if now || before => "DELETED",
        _ => return None,
    };
    Some(encode(kind, ev))
}

/// Checks that a body's apiVersion and kind, where given, are the URL's.
fn check_type(res: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if (!kind.is_empty() && kind != res.kind) || (!api_version.is_empty() && api_version != res.api_version()) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            res.api_version()
        ))
        .with_kind_message(kind, res));
    }
    Ok(())
}

trait KindMessage {
    fn with_kind_message(self, kind: &str, res: &ResourceInfo) -> ApiError;
}

impl KindMessage for ApiError {
    fn with_kind_message(mut self, kind: &str, res: &ResourceInfo) -> ApiError {
        if !kind.is_empty() && kind != res.kind {
            self.message = format!("the kind in the data ({kind}) does not match the expected kind ({}) of {}", res.kind, res.group_resource());
        }
        self
    }
}

trait WithCurrent {
    /// Completes an update body from the current object: the status is kept on a main
    /// resource write and only the status taken on a status write.
    fn with_current(self, current: &Value, sub: Option<&str>) -> Value;
}

impl WithCurrent for Value {
    fn with_current(mut self, current: &Value, sub: Option<&str>) -> Value {
        match sub {
            Some("approval") => crate::certificates::with_approval(&self, current),
            Some("status") => {
                let mut out = current.clone();
                if let Some(status) = self.get("status").cloned() {
                    out["status"] = status;
                } else if let Some(o) = out.as_object_mut() {
                    o.remove("status");
                }
                out
            }
            Some("ephemeralcontainers") => {
                let mut out = current.clone();
                match (self.pointer("/spec/ephemeralContainers"), out.get_mut("spec").and_then(Value::as_object_mut)) {
                    (Some(list), Some(spec)) => {
                        spec.insert("ephemeralContainers".into(), list.clone());
                    }
                    (None, Some(spec)) => {
                        spec.remove("ephemeralContainers");
                    }
                    _ => {}
                }
                out
            }
            _ => {
                if let Some(status) = current.get("status") {
                    if let Some(o) = self.as_object_mut() {
                        o.insert("status".into(), status.clone());
                    }
                }
                // A pod's ephemeral containers change only through their subresource: an
                // update that changes them is refused by the pod's update validation.
                self
            }
        }
    }
}

/// Carries the fields a client may not change across an update.
fn preserve_system_meta(updated: &mut Value, current: &Value, res: &ResourceInfo) {
    let Some(meta) = updated.as_object_mut().map(|o| o.entry("metadata").or_insert_with(|| json!({}))) else { return };
    let Some(meta) = meta.as_object_mut() else { return };
    let cur = current.get("metadata").and_then(Value::as_object);
    for field in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "namespace", "name", "generation", "selfLink"] {
        match cur.and_then(|c| c.get(field)) {
            Some(v) => {
                meta.insert(field.into(), v.clone());
            }
            None => {
                meta.remove(field);
            }
        }
    }
    meta.remove("resourceVersion");
    if res.tracks_generation {
        let spec_changed = updated.get("spec") != current.get("spec");
        let generation = current.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
        let generation = if spec_changed { generation + 1 } else { generation };
        updated["metadata"]["generation"] = json!(generation);
    }
}

fn updated_without_change(updated: &Value, current: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        v
    };
    strip(updated) == strip(current)
}

/// The bytes stored for an object: its JSON without the resourceVersion, which is the
/// store's revision.
pub fn to_stored(obj: &Value) -> Vec<u8> {
    serde_json::to_vec(&WithoutResourceVersion(obj)).unwrap_or_default()
}

/// Serializes an object as it is, except for `metadata.resourceVersion`: the store's
/// revision is the resourceVersion, so it is not stored (and the object is not cloned
/// to drop it).
struct WithoutResourceVersion<'a>(&'a Value);

impl serde::Serialize for WithoutResourceVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Metadata<'a>(&'a Map<String, Value>);
        impl serde::Serialize for Metadata<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let fields = self.0.iter().filter(|(k, _)| k.as_str() != "resourceVersion");
                let mut map = serializer.serialize_map(None)?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
        let Some(fields) = self.0.as_object() else {
            return self.0.serialize(serializer);
        };
        let mut map = serializer.serialize_map(Some(fields.len()))?;
        for (k, v) in fields {
            match v {
                Value::Object(meta) if k == "metadata" => map.serialize_entry(k, &Metadata(meta))?,
                _ => map.serialize_entry(k, v)?,
            }
        }
        map.end()
    }
}

/// The bytes stored for an object of `res`'s version (see [`crate::conversion`]).
fn stored_for(res: &ResourceInfo, obj: &Value) -> Vec<u8> {
    if !conversion::converts(res) {
        return to_stored(obj);
    }
    let mut obj = obj.clone();
    conversion::to_storage(res, &mut obj);
    to_stored(&obj)
}

/// `prefix` plus five random characters from Kubernetes' alphabet.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let prefix = if prefix.len() > 58 { &prefix[..58] } else { prefix };
    let suffix: String = (0..5).map(|_| ALPHABET[rand::random::<u32>() as usize % ALPHABET.len()] as char).collect();
    format!("{prefix}{suffix}")
}

fn encode_continue(rv: Revision, key: &str, prefix: &str) -> String {
    use base64::Engine;
    let start = key.strip_prefix(prefix).unwrap_or(key);
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{start}\u{0}")});
    base64::engine::general_purpose::STANDARD.encode(token.to_string())
}

fn decode_continue(token: &str, prefix: &str) -> Result<(Revision, String), ApiError> {
    use base64::Engine;
    let bad = || ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)");
    let raw = base64::engine::general_purpose::STANDARD.decode(token).map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    let start = start.strip_suffix('\u{0}').unwrap_or(start);
    if start.contains("..") || start.starts_with('/') {
        return Err(bad());
    }
    Ok((rv, format!("{prefix}{start}")))
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bytes_leave_out_only_the_resource_version() {
        let obj = json!({"kind": "Pod", "metadata": {"name": "a", "resourceVersion": "7", "labels": {"resourceVersion": "kept"}}, "spec": {"x": 1}});
        let stored: Value = serde_json::from_slice(&to_stored(&obj)).expect("json");
        assert_eq!(stored, json!({"kind": "Pod", "metadata": {"name": "a", "labels": {"resourceVersion": "kept"}}, "spec": {"x": 1}}));
        let keys: Vec<&str> = stored["metadata"].as_object().expect("metadata").keys().map(String::as_str).collect();
        assert_eq!(keys, ["name", "labels"], "field order is kept");
    }

    #[test]
    fn continue_tokens_round_trip() {
        let token = encode_continue(42, "/registry/pods/default/web-1", "/registry/pods/");
        let (rv, start) = decode_continue(&token, "/registry/pods/").expect("decode");
        assert_eq!(rv, 42);
        assert_eq!(start, "/registry/pods/default/web-1");
        assert!(decode_continue("not base64!", "/registry/pods/").is_err());
    }

    #[test]
    fn generated_names_have_five_character_suffixes() {
        let name = generate_name("web-");
        assert_eq!(name.len(), 9);
        assert!(name.starts_with("web-"));
    }
}
