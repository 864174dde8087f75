//! The MAAS 2.0 REST API through the host's `maas` endpoint. The host adds
//! the base URL (`maas_url`) and signs every request with the device's API
//! key; this side only names paths, operations and form parameters.

use std::time::Duration;

use serde_json::Value;
use testflinger_connector::prelude::*;
use testflinger_connector::units::human_duration;

use crate::storage::NodeDevice;

/// Path prefix of every call, under `maas_url`.
pub const API: &str = "/api/2.0/";
/// Deadline of one request.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Retries after the first attempt (reference: 1 + 3 attempts).
pub const RETRIES: u32 = 3;
/// Characters of a response body quoted in messages.
const EXCERPT: usize = 400;
/// Characters of a response body logged with `debug`.
const DEBUG_EXCERPT: usize = 4000;

/// A failed MAAS call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaasError {
    pub message: String,
    /// Worth another attempt (transport problems, 409 conflicts, 5xx).
    pub retryable: bool,
    /// The host error behind it (the request did not get an answer).
    pub cause: Option<String>,
}

impl MaasError {
    /// A failure MAAS itself reported, or a bad answer.
    pub fn answer(message: String, retryable: bool) -> Self {
        MaasError {
            message,
            retryable,
            cause: None,
        }
    }
}

impl std::fmt::Display for MaasError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<MaasError> for PhaseError {
    fn from(e: MaasError) -> Self {
        let failed = PhaseError::failed(e.message);
        match e.cause {
            Some(cause) => failed.caused_by(cause),
            None => failed,
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self, what: &str) -> Result<Value, MaasError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            MaasError::answer(
                format!(
                    "MAAS answered {what} with something that is not JSON ({e}): {}",
                    excerpt(&self.text(), EXCERPT)
                ),
                false,
            )
        })
    }
}

/// `application/x-www-form-urlencoded` encoding of `params`.
pub fn form(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One line of at most `max` characters.
pub fn excerpt(text: &str, max: usize) -> String {
    let line = text.trim().replace(['\n', '\r'], " ");
    if line.chars().count() > max {
        let cut: String = line.chars().take(max).collect();
        format!("{cut}... ({} bytes)", text.len())
    } else {
        line
    }
}

/// How a call is shown in logs and messages: long values (user data) are
/// summarised.
fn describe(method: &str, path: &str, params: &[(&str, &str)]) -> String {
    let mut out = format!("{method} {path}");
    for (k, v) in params {
        if v.len() > 64 {
            out.push_str(&format!(" {k}=<{} bytes>", v.len()));
        } else {
            out.push_str(&format!(" {k}={v}"));
        }
    }
    out
}

/// Parses MAAS's `version` (`3.5.0`, `3.5.0~beta1`, `3.4.2-14353-g.abc`)
/// into numbers; `None` if it does not start with one.
pub fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let mut parts = text.trim().split(['.', '-', '~', '+']);
    let mut next = || -> Option<u64> {
        let p = parts.next()?;
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let major = next()?;
    let minor = next().unwrap_or(0);
    let patch = next().unwrap_or(0);
    Some((major, minor, patch))
}

/// The API for one machine.
pub struct Maas {
    node: String,
    debug: bool,
    retry_base: Duration,
}

impl Maas {
    /// Calls about machine `node`; `debug` logs every response,
    /// `retry_base` is the first pause between attempts.
    pub fn new(node: &str, debug: bool, retry_base: Duration) -> Self {
        Maas {
            node: node.to_string(),
            debug,
            retry_base,
        }
    }

    /// One request, no retries. `path` is relative to `/api/2.0/` and may
    /// carry a query (`machines/x/?op=release`); `params` go in the query
    /// for GET and DELETE, in a form body otherwise.
    pub fn once(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<Reply, MaasError> {
        let what = describe(method, path, params);
        let mut url = format!("{API}{path}");
        let mut req;
        if matches!(method, "GET" | "DELETE") {
            if !params.is_empty() {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(&form(params));
            }
            req = http::Request::new(method, &url);
        } else {
            req = http::Request::new(method, &url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(params));
        }
        req = req
            .header("accept", "application/json")
            .timeout(CALL_TIMEOUT);
        let resp = match http::call("maas", req) {
            Ok(r) => r,
            Err(e) => {
                return Err(MaasError {
                    retryable: matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Io),
                    message: format!("{what}: {e}"),
                    cause: Some(e.to_string()),
                });
            }
        };
        let body = resp.text();
        if self.debug {
            info!(
                "MAAS: {what} -> HTTP {}: {}",
                resp.status,
                excerpt(&body, DEBUG_EXCERPT)
            );
        }
        if resp.is_success() {
            return Ok(Reply {
                status: resp.status,
                body: resp.body,
            });
        }
        let quoted = excerpt(&body, EXCERPT);
        let (message, retryable) = match resp.status {
            401 | 403 => (
                format!(
                    "MAAS refused the credentials for {what} (HTTP {}: {quoted}); check `maas_api_key` in the device config: it must be the API key of a MAAS user allowed to manage machine {}",
                    resp.status, self.node
                ),
                false,
            ),
            404 => (
                format!(
                    "MAAS does not know {what} (HTTP 404: {quoted}); check `node_id` ({}) and `maas_url` in the device config",
                    self.node
                ),
                false,
            ),
            400 => (format!("MAAS rejected {what} (HTTP 400: {quoted})"), false),
            status => (format!("{what} failed with HTTP {status}: {quoted}"), true),
        };
        Err(MaasError::answer(message, retryable))
    }

    /// [`Maas::once`] with the reference's retries: up to 1 + 3 attempts,
    /// pausing 1, 2 and 4 × `maas_retry_base_seconds` (10, 20, 40 s by
    /// default). Requests MAAS refused for good (400, 401, 403, 404, a
    /// capability the lab did not grant) are not repeated.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<Reply, MaasError> {
        let what = describe(method, path, params);
        let mut errors: Vec<String> = Vec::new();
        let mut cause = None;
        for attempt in 0..=RETRIES {
            match self.once(method, path, params) {
                Ok(r) => return Ok(r),
                Err(e) if !e.retryable => {
                    if errors.is_empty() {
                        return Err(e);
                    }
                    errors.push(e.message);
                    cause = e.cause.or(cause);
                    break;
                }
                Err(e) => {
                    let reason = excerpt(&e.message, 200);
                    errors.push(e.message);
                    cause = e.cause.or(cause);
                    if attempt == RETRIES {
                        break;
                    }
                    // The reference's backoff: a count of attempts, not a
                    // deadline, so not a `wait::Wait`.
                    let pause = self.retry_base * 2u32.pow(attempt);
                    warn!(
                        "MAAS: {what} failed ({reason}); trying again in {}",
                        human_duration(pause)
                    );
                    clock::sleep(pause);
                }
            }
        }
        error!("MAAS: {what}: giving up after {} attempts", errors.len());
        let list: Vec<String> = errors
            .iter()
            .enumerate()
            .map(|(i, e)| format!("[{}] {e}", i + 1))
            .collect();
        Err(MaasError {
            message: format!("{what} failed {} times: {}", errors.len(), list.join("; ")),
            retryable: false,
            cause,
        })
    }

    fn machine_path(&self, op: Option<&str>) -> String {
        match op {
            Some(op) => format!("machines/{}/?op={op}", self.node),
            None => format!("machines/{}/", self.node),
        }
    }

    /// `machine read`.
    pub fn machine(&self) -> Result<Value, MaasError> {
        self.call("GET", &self.machine_path(None), &[])?
            .json("machine read")
    }

    /// The machine's `status_name`.
    pub fn status(&self) -> Result<String, MaasError> {
        Ok(status_name(&self.machine()?))
    }

    /// A machine operation (`release`, `mark_broken`, `deploy` ...).
    pub fn machine_op(&self, op: &str, params: &[(&str, &str)]) -> Result<Reply, MaasError> {
        self.call("POST", &self.machine_path(Some(op)), params)
    }

    /// A machine operation, tried once (`set_storage_layout`).
    pub fn machine_op_once(&self, op: &str, params: &[(&str, &str)]) -> Result<Reply, MaasError> {
        self.once("POST", &self.machine_path(Some(op)), params)
    }

    /// `machines allocate system_id=<node>`.
    pub fn allocate(&self) -> Result<Reply, MaasError> {
        self.call(
            "POST",
            "machines/?op=allocate",
            &[("system_id", &self.node)],
        )
    }

    /// `block-devices read`.
    pub fn block_devices(&self) -> Result<Vec<NodeDevice>, MaasError> {
        let value = self
            .call("GET", &format!("nodes/{}/blockdevices/", self.node), &[])?
            .json("block-devices read")?;
        NodeDevice::list_from_json(&value).map_err(|e| {
            MaasError::answer(
                format!("MAAS's block device list of machine {}: {e}", self.node),
                false,
            )
        })
    }

    /// `block-device <op>` (`unmount`, `unformat`, `format`, `mount`,
    /// `set_boot_disk`), tried once.
    pub fn block_device_op(
        &self,
        blk: u64,
        op: &str,
        params: &[(&str, &str)],
    ) -> Result<Reply, MaasError> {
        self.once(
            "POST",
            &format!("nodes/{}/blockdevices/{blk}/?op={op}", self.node),
            params,
        )
    }

    /// `block-device update`, tried once.
    pub fn block_device_update(
        &self,
        blk: u64,
        params: &[(&str, &str)],
    ) -> Result<Reply, MaasError> {
        self.once(
            "PUT",
            &format!("nodes/{}/blockdevices/{blk}/", self.node),
            params,
        )
    }

    /// `partitions create`; the new partition's id.
    pub fn create_partition(&self, blk: u64, size: u64) -> Result<u64, MaasError> {
        let size = size.to_string();
        let v = self
            .once(
                "POST",
                &format!("nodes/{}/blockdevices/{blk}/partitions/", self.node),
                &[("size", &size)],
            )?
            .json("partitions create")?;
        v.get("id").and_then(Value::as_u64).ok_or_else(|| {
            MaasError::answer(
                format!(
                    "MAAS created a partition on block device {blk} but did not say its id: {v}"
                ),
                false,
            )
        })
    }

    /// `partition delete`, tried once.
    pub fn delete_partition(&self, blk: u64, partition: u64) -> Result<Reply, MaasError> {
        self.once(
            "DELETE",
            &format!(
                "nodes/{}/blockdevices/{blk}/partition/{partition}",
                self.node
            ),
            &[],
        )
    }

    /// `partition <op>` (`format`, `mount`), tried once.
    pub fn partition_op(
        &self,
        blk: u64,
        partition: u64,
        op: &str,
        params: &[(&str, &str)],
    ) -> Result<Reply, MaasError> {
        self.once(
            "POST",
            &format!(
                "nodes/{}/blockdevices/{blk}/partition/{partition}?op={op}",
                self.node
            ),
            params,
        )
    }

    /// The id of the newest installation result set (`node-script-results
    /// read type=installation`), if any.
    pub fn installation_id(&self) -> Result<Option<u64>, MaasError> {
        let v = self
            .call(
                "GET",
                &format!("nodes/{}/results/?type=installation", self.node),
                &[],
            )?
            .json("node-script-results read")?;
        Ok(v.as_array().and_then(|sets| {
            sets.iter()
                .filter_map(|s| s.as_object()?.get("id")?.as_u64())
                .max()
        }))
    }

    /// The combined output of installation result set `id`
    /// (`node-script-result download`).
    pub fn install_log(&self, id: u64) -> Result<String, MaasError> {
        Ok(self
            .call(
                "GET",
                &format!("nodes/{}/results/{id}/?op=download", self.node),
                &[],
            )?
            .text())
    }

    /// `version read` → `version`.
    pub fn version(&self) -> Result<String, MaasError> {
        let v = self.call("GET", "version/", &[])?.json("version read")?;
        v.get("version")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                MaasError::answer(
                    format!("MAAS's version answer has no `version`: {v}"),
                    false,
                )
            })
    }
}

/// `status_name` of a machine read.
pub fn status_name(machine: &Value) -> String {
    machine
        .get("status_name")
        .and_then(Value::as_str)
        .unwrap_or("(unknown)")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(
            form(&[
                ("mount_point", "/boot/efi"),
                ("label", "my disk"),
                ("user_data", "YQ==")
            ]),
            "mount_point=%2Fboot%2Fefi&label=my+disk&user_data=YQ%3D%3D"
        );
        assert_eq!(form(&[]), "");
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("3.5.0"), Some((3, 5, 0)));
        assert_eq!(parse_version("3.5.0~beta1"), Some((3, 5, 0)));
        assert_eq!(parse_version("3.4.2-14353-g.abc"), Some((3, 4, 2)));
        assert_eq!(parse_version("3.6"), Some((3, 6, 0)));
        assert_eq!(parse_version("dev"), None);
        assert!(parse_version("3.10.1").unwrap() >= (3, 5, 0));
        assert!(parse_version("2.9.2").unwrap() < (3, 5, 0));
    }

    #[test]
    fn calls_are_described_without_dumping_user_data() {
        let long = "x".repeat(100);
        assert_eq!(
            describe(
                "POST",
                "machines/a/?op=deploy",
                &[("distro_series", "jammy"), ("user_data", &long)]
            ),
            "POST machines/a/?op=deploy distro_series=jammy user_data=<100 bytes>"
        );
        assert_eq!(excerpt("a\nb", 10), "a b");
        assert!(excerpt(&"y".repeat(50), 10).ends_with("... (50 bytes)"));
    }
}
