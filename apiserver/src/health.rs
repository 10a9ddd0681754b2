//! `/healthz`, `/livez` and `/readyz`, as Kubernetes' apiserver answers them: `ok`, or
//! with `?verbose` one `[+]name ok` line per check and `<endpoint> check passed`; a
//! failing check makes the answer 500, lists every check (`[-]etcd failed: reason
//! withheld`) and ends `<endpoint> check failed`. `/readyz/etcd` runs one check,
//! `?exclude=etcd` leaves one out. The checks: `ping` and `log` (the server answers),
//! and `etcd` (the store answers a read: for etcd, some member reachable with quorum).

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::server::ApiServer;

const CHECKS: &[&str] = &["ping", "log", "etcd"];

/// How long the store has to answer before the `etcd` check fails.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

async fn run(api: &ApiServer, check: &str) -> Result<(), String> {
    match check {
        "etcd" => match tokio::time::timeout(STORE_TIMEOUT, api.store.member_health()).await {
            Ok(members) if members.iter().any(Result::is_ok) => Ok(()),
            Ok(members) => Err(members.into_iter().find_map(Result::err).unwrap_or_else(|| "no store member".into())),
            Err(_) => Err(format!("the store did not answer within {STORE_TIMEOUT:?}")),
        },
        _ => Ok(()),
    }
}

fn text(code: StatusCode, body: String) -> Response {
    (code, [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// Serves `endpoint` (`healthz`, `livez`, `readyz`) and, with `check`, one check of it.
pub async fn serve(api: &ApiServer, endpoint: &str, check: Option<&str>, query: Option<&str>) -> Response {
    if let Some(check) = check {
        if !CHECKS.contains(&check) {
            return text(StatusCode::NOT_FOUND, "404 page not found\n".into());
        }
        return match run(api, check).await {
            Ok(()) => text(StatusCode::OK, "ok".into()),
            Err(e) => {
                tracing::warn!(check, error = %e, "{endpoint} check failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, format!("internal server error: {e}\n"))
            }
        };
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
    let verbose = pairs.iter().any(|(k, _)| k == "verbose");
    let excluded: Vec<&str> = pairs.iter().filter(|(k, _)| k == "exclude").map(|(_, v)| v.as_str()).collect();
    let mut lines = Vec::new();
    let mut failed = false;
    for check in CHECKS {
        if excluded.contains(check) {
            lines.push(format!("[+]{check} excluded: ok"));
            continue;
        }
        match run(api, check).await {
            Ok(()) => lines.push(format!("[+]{check} ok")),
            Err(e) => {
                tracing::warn!(check, error = %e, "{endpoint} check failed");
                failed = true;
                lines.push(format!("[-]{check} failed: reason withheld"));
            }
        }
    }
    // Kubernetes warns of exclusions that name no check.
    for unknown in excluded.iter().filter(|e| !CHECKS.contains(e)) {
        lines.push(format!("warn: some health checks cannot be excluded: no matches for \"{unknown}\""));
    }
    if failed {
        return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{}\n{endpoint} check failed\n", lines.join("\n")));
    }
    if verbose {
        return text(StatusCode::OK, format!("{}\n{endpoint} check passed\n", lines.join("\n")));
    }
    text(StatusCode::OK, "ok".into())
}
