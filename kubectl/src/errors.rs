//! The stock kubectl's error messages: `Error from server (NotFound): pods "x" not found`
//! for API errors, `error: ...` for everything else, and the exit code for each.

use std::fmt;

/// An error the command already reported (or that needs no message): exit with `code`.
#[derive(Debug)]
pub struct Exit(pub i32);

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// Commands that act on several objects go on past one that fails, as the stock kubectl
/// does: each failure is printed when it happens, and the command exits 1 at the end.
#[derive(Debug, Default)]
pub struct Failures {
    any: bool,
}

impl Failures {
    /// Prints `e` as the stock kubectl would, and remembers that something failed.
    pub fn report(&mut self, e: &anyhow::Error) {
        eprintln!("{}", message(e));
        self.any = true;
    }

    /// `Ok`, or exit 1 (already reported) if anything failed.
    pub fn finish(self) -> anyhow::Result<()> {
        if self.any {
            return Err(Exit(1).into());
        }
        Ok(())
    }
}

/// A usage error: printed as `error: <msg>` followed by the stock hint
/// `See 'kubectl <command> -h' for help and examples`.
#[derive(Debug)]
pub struct Usage {
    pub message: String,
    pub command: String,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Usage {}

/// `Err(Usage)` for `kubectl <command>`.
pub fn usage<T>(command: &str, message: impl Into<String>) -> anyhow::Result<T> {
    Err(Usage {
        message: message.into(),
        command: command.to_string(),
    }
    .into())
}

/// The API status inside `e`, when the server answered with one.
pub fn api_status(e: &anyhow::Error) -> Option<&kube::core::Status> {
    e.chain()
        .find_map(|c| match c.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(status)) => Some(status.as_ref()),
            _ => None,
        })
}

/// Whether `e` is the server's NotFound.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    api_status(e).is_some_and(|s| s.code == 404)
}

/// The line the stock kubectl prints for `e` (without the newline).
pub fn message(e: &anyhow::Error) -> String {
    if let Some(status) = api_status(e) {
        let reason = if status.reason.is_empty() {
            reason_for_code(status.code)
        } else {
            status.reason.as_str()
        };
        if let Some(text) = invalid_text(status) {
            return text;
        }
        if reason.is_empty() {
            return format!("Error from server: {}", status.message);
        }
        return format!("Error from server ({reason}): {}", status.message);
    }
    let text = format!("{e:#}");
    if text.contains("Connection refused") || text.contains("connection refused") {
        if let Some(host) = connection_host(e) {
            return format!("The connection to the server {host} was refused - did you specify the right host or port?");
        }
    }
    format!("error: {e:#}")
}

/// kubectl's words for a 422 Invalid with details: `The Deployment "web" is invalid:
/// field: message` (several causes in brackets).
fn invalid_text(status: &kube::core::Status) -> Option<String> {
    if status.code != 422 || status.reason != "Invalid" {
        return None;
    }
    let details = status.details.as_ref()?;
    let mut s = format!("The {} {:?} is invalid", details.kind, details.name);
    let causes: Vec<String> = details
        .causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    match causes.len() {
        0 => {}
        1 => s.push_str(&format!(": {}", causes[0])),
        _ => s.push_str(&format!(": [{}]", causes.join(", "))),
    }
    Some(s)
}

fn reason_for_code(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Gone",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

/// The `host:port` of the server the client talks to, for connection errors.
pub static SERVER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn connection_host(_e: &anyhow::Error) -> Option<String> {
    SERVER.get().cloned()
}

/// Prints `e` as the stock kubectl does and returns the exit code.
pub fn print(e: &anyhow::Error) -> i32 {
    if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
        return *code;
    }
    if let Some(u) = e.downcast_ref::<Usage>() {
        eprintln!("error: {}", u.message);
        eprintln!("See 'kubectl {} -h' for help and examples", u.command);
        return 1;
    }
    eprintln!("{}", message(e));
    1
}
