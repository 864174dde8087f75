//! Native default `reserve` (reference §3.5): installs the submitter's SSH
//! keys on the device, prints the reservation banner and holds the device
//! for `reserve_data.timeout` seconds (the agent kills the process when the
//! job is cancelled).
//!
//! The banner's wording is parsed by tools (the GitHub submit action waits
//! for `TESTFLINGER SYSTEM RESERVED` and reads the address after
//! `You can now connect to`), so it is reproduced character for character,
//! including Python's `isoformat()` timestamps.
//!
//! Deliberate differences: `timeout` also accepts duration strings such as
//! `"2h30m"` (the reference crashes on them; the server normally converts
//! them), and it is checked before the keys are imported rather than
//! after; keys are fetched and installed natively (see [`super::ssh_keys`]);
//! the retry pauses scale with `connector_runtime.poll_interval_seconds`
//! (the default, 10 s, gives the reference's 1..100 s import backoff and
//! 60 s between installation attempts).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeDelta};
use serde_json::Value;

use super::ssh_keys;
use crate::context::StageContext;
use crate::error::StageError;
use crate::stage::Stage;

/// Reservation length when the job gives none (reference: one hour).
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;
/// Longest reservation accepted (100 years): past this the expiry time
/// cannot be shown or slept until.
pub const MAX_TIMEOUT_SECS: u64 = 100 * 366 * 86_400;
/// File holding the keys of the entry being processed (reference: written
/// by `ssh-import-id -o key.pub`).
pub const KEY_FILE: &str = "key.pub";

/// Runs the default reserve.
pub async fn run(cx: &Arc<StageContext>) -> Result<u8, StageError> {
    tracing::info!(target: "tfdc::defaults", "BEGIN reservation");
    let user = cx.job.test_username();
    let ip = cx
        .config
        .require_string("device_ip")
        .map_err(|e| StageError::failed("KeyError", e.to_string()))?;
    let reserve_data = cx
        .job
        .stage_data(Stage::Reserve)
        .map_err(|e| StageError::failed("JobDataError", e.to_string()))?
        .ok_or_else(|| StageError::failed("KeyError", "the job has no reserve_data"))?;
    let timeout = reserve_timeout(reserve_data.get("timeout"))?;
    let keys = key_entries(reserve_data.get("ssh_keys"));

    // The reference's 1 s import backoff unit and 60 s installation pause
    // at the default poll interval of 10 s.
    let unit = Duration::from_secs_f64(cx.config.runtime.poll_interval_seconds.max(0.0) / 10.0);
    for entry in &keys {
        import_and_install(cx, entry, &user, unit).await;
    }

    let banner = Banner {
        user: &user,
        ip: &ip,
        serial: cx
            .config
            .string("serial_host")
            .zip(cx.config.string("serial_port")),
        now: chrono::Local::now().fixed_offset(),
        timeout,
        job_id: job_id_text(cx.job.get("job_id")),
    };
    crate::logging::print(&banner.render()?);
    sleep_secs(timeout).await;
    Ok(0)
}

/// `reserve_data.timeout`: integer seconds or a duration string, default
/// one hour.
pub fn reserve_timeout(value: Option<&Value>) -> Result<u64, StageError> {
    let invalid = |shown: String| {
        StageError::failed(
            "ValueError",
            format!(
                "reserve_data.timeout {shown} is not a valid reservation time; use seconds (3600) or a duration such as \"30s\", \"5m\", \"2h30m\", \"1d5h\""
            ),
        )
    };
    let secs = match value {
        None | Some(Value::Null) => DEFAULT_TIMEOUT_SECS,
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => u,
            // Python's int() truncates floats.
            (None, Some(f)) if f >= 0.0 && f.is_finite() => f.trunc() as u64,
            _ => return Err(invalid(n.to_string())),
        },
        Some(Value::String(s)) => crate::units::parse_duration(s)
            .ok_or_else(|| invalid(format!("{s:?}")))?
            .as_secs(),
        Some(other) => return Err(invalid(format!("({})", crate::config::kind_of(other)))),
    };
    if secs > MAX_TIMEOUT_SECS {
        return Err(invalid(format!("{secs} (more than 100 years)")));
    }
    Ok(secs)
}

/// `reserve_data.ssh_keys` as strings; anything else is logged and left
/// out.
fn key_entries(value: Option<&Value>) -> Vec<String> {
    match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| match item {
                Value::String(s) => Some(s.clone()),
                other => {
                    tracing::error!(target: "tfdc::defaults", "Ignoring ssh_keys entry {other}: it must be a string like lp:<user> or gh:<user>");
                    None
                }
            })
            .collect(),
        Some(other) => {
            tracing::error!(target: "tfdc::defaults",
                "reserve_data.ssh_keys must be a list, found {}; no keys are imported",
                crate::config::kind_of(other));
            Vec::new()
        }
    }
}

/// One `ssh_keys` entry: fetch its keys, write `key.pub`, install them.
/// Every failure is logged; none stops the reservation.
async fn import_and_install(cx: &StageContext, entry: &str, user: &str, unit: Duration) {
    let key_file = cx.rundir.file(KEY_FILE);
    if let Err(e) = std::fs::remove_file(&key_file)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(target: "tfdc::defaults", "cannot remove {}: {e}", key_file.display());
    }
    let Some(spec) = ssh_keys::parse_spec(entry) else {
        tracing::error!(target: "tfdc::defaults",
            "Invalid ssh key {entry:?}: expected lp:<user> or gh:<user>; skipping it");
        return;
    };
    let body = match ssh_keys::fetch(cx, &spec, unit).await {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(target: "tfdc::defaults", "{e}");
            return;
        }
    };
    let (keys, rejected) = ssh_keys::authorized_lines(&body, &spec);
    if rejected > 0 {
        tracing::warn!(target: "tfdc::defaults", "Ignored {rejected} line(s) from {spec} that are not SSH public keys");
    }
    if keys.is_empty() {
        tracing::error!(target: "tfdc::defaults", "No ssh keys found for {spec}");
        return;
    }
    for (_, key) in &keys {
        tracing::info!(target: "tfdc::defaults", "Imported key {} from {spec}", ssh_keys::describe(key));
    }
    tracing::info!(target: "tfdc::defaults", "Successfully imported key: {spec}");
    let lines: Vec<String> = keys.into_iter().map(|(line, _)| line).collect();
    // Same layout as `ssh-import-id -o key.pub`.
    let file_text: String = lines.iter().map(|l| format!("{l}\n\n")).collect();
    if let Err(e) = std::fs::write(&key_file, file_text) {
        tracing::warn!(target: "tfdc::defaults", "cannot write {}: {e}", key_file.display());
    }
    match ssh_keys::install(cx, user, &spec, &lines, unit * 60).await {
        Ok(()) => {
            tracing::info!(target: "tfdc::defaults", "Installed the keys of {spec} for {user} on the device");
        }
        Err(_) => tracing::error!(target: "tfdc::defaults", "Failed to copy ssh key: {spec}"),
    }
}

/// Python's `str()` of the job id, or `<job_id>` when there is none.
fn job_id_text(value: Option<&Value>) -> String {
    match value {
        None => "<job_id>".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => super::template::py_str(other),
    }
}

/// What the reservation banner shows.
pub struct Banner<'a> {
    pub user: &'a str,
    pub ip: &'a str,
    /// `serial_host` and `serial_port`, when both are set.
    pub serial: Option<(String, String)>,
    /// The current local time with its UTC offset.
    pub now: DateTime<FixedOffset>,
    pub timeout: u64,
    pub job_id: String,
}

impl Banner<'_> {
    /// The banner's lines, exactly as the reference prints them.
    pub fn render(&self) -> Result<String, StageError> {
        let expires = i64::try_from(self.timeout)
            .ok()
            .and_then(TimeDelta::try_seconds)
            .and_then(|d| self.now.checked_add_signed(d))
            .ok_or_else(|| {
                StageError::failed(
                    "OverflowError",
                    format!("reservation timeout {} s is too large", self.timeout),
                )
            })?;
        let mut out = String::new();
        out.push_str("*** TESTFLINGER SYSTEM RESERVED ***\n");
        out.push_str(&format!(
            "You can now connect to {}@{}\n",
            self.user, self.ip
        ));
        if let Some((host, port)) = &self.serial {
            out.push_str(&format!(
                "Serial access is available via: telnet {host} {port}\n"
            ));
        }
        out.push_str(&format!(
            "Current time:           [{}]\n",
            isoformat(&self.now)
        ));
        out.push_str(&format!(
            "Reservation expires at: [{}]\n",
            isoformat(&expires)
        ));
        out.push_str(&format!(
            "Reservation will automatically timeout in {} seconds\n",
            self.timeout
        ));
        out.push_str(&format!(
            "To end the reservation sooner use: testflinger-cli cancel {}\n",
            self.job_id
        ));
        Ok(out)
    }
}

/// Python's `datetime.isoformat()` of an aware datetime: microseconds only
/// when non-zero, offset as `+HH:MM` (with `:SS` only when non-zero).
pub fn isoformat(t: &DateTime<FixedOffset>) -> String {
    let mut out = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let micros = t.timestamp_subsec_micros() % 1_000_000;
    if micros != 0 {
        out.push_str(&format!(".{micros:06}"));
    }
    let offset = t.offset().local_minus_utc();
    let sign = if offset < 0 { '-' } else { '+' };
    let abs = offset.unsigned_abs();
    out.push_str(&format!("{sign}{:02}:{:02}", abs / 3600, abs / 60 % 60));
    if !abs.is_multiple_of(60) {
        out.push_str(&format!(":{:02}", abs % 60));
    }
    out
}

/// Sleeps `secs` seconds (any size accepted by [`reserve_timeout`]).
async fn sleep_secs(secs: u64) {
    let now = tokio::time::Instant::now();
    match now.checked_add(Duration::from_secs(secs)) {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn at(
        offset_secs: i32,
        (y, mo, d): (i32, u32, u32),
        (h, mi, s): (u32, u32, u32),
        micros: u32,
    ) -> DateTime<FixedOffset> {
        FixedOffset::east_opt(offset_secs)
            .unwrap()
            .with_ymd_and_hms(y, mo, d, h, mi, s)
            .unwrap()
            + TimeDelta::microseconds(i64::from(micros))
    }

    #[test]
    fn isoformat_matches_python() {
        // Expected strings from CPython's datetime.isoformat().
        assert_eq!(
            isoformat(&at(7200, (2024, 9, 6), (16, 26, 50), 299_123)),
            "2024-09-06T16:26:50.299123+02:00"
        );
        assert_eq!(
            isoformat(&at(0, (2024, 1, 2), (3, 4, 5), 0)),
            "2024-01-02T03:04:05+00:00"
        );
        assert_eq!(
            isoformat(&at(-(5 * 3600 + 30 * 60), (2024, 12, 31), (23, 59, 59), 10)),
            "2024-12-31T23:59:59.000010-05:30"
        );
        assert_eq!(
            isoformat(&at(3600 + 15, (2024, 1, 1), (0, 0, 0), 0)),
            "2024-01-01T00:00:00+01:00:15"
        );
    }

    #[test]
    fn banner_is_exact() {
        let banner = Banner {
            user: "ubuntu",
            ip: "10.0.0.5",
            serial: Some(("serial.lab".into(), "3001".into())),
            now: at(3600, (2024, 3, 31), (0, 30, 0), 500_000),
            timeout: 5400,
            job_id: "00000000-1111".into(),
        };
        assert_eq!(
            banner.render().unwrap(),
            "*** TESTFLINGER SYSTEM RESERVED ***\n\
             You can now connect to ubuntu@10.0.0.5\n\
             Serial access is available via: telnet serial.lab 3001\n\
             Current time:           [2024-03-31T00:30:00.500000+01:00]\n\
             Reservation expires at: [2024-03-31T02:00:00.500000+01:00]\n\
             Reservation will automatically timeout in 5400 seconds\n\
             To end the reservation sooner use: testflinger-cli cancel 00000000-1111\n"
        );
        let banner = Banner {
            serial: None,
            job_id: job_id_text(None),
            ..banner
        };
        let text = banner.render().unwrap();
        assert!(!text.contains("Serial access"));
        assert!(text.ends_with("testflinger-cli cancel <job_id>\n"));
        assert_eq!(job_id_text(Some(&Value::Null)), "None");
        assert_eq!(job_id_text(Some(&json!(42))), "42");
    }

    #[test]
    fn timeouts_accept_seconds_and_durations() {
        let t = |v: Value| reserve_timeout(Some(&v));
        assert_eq!(reserve_timeout(None).unwrap(), 3600);
        assert_eq!(t(Value::Null).unwrap(), 3600);
        assert_eq!(t(json!(7200)).unwrap(), 7200);
        assert_eq!(t(json!(90.9)).unwrap(), 90);
        assert_eq!(t(json!("1800")).unwrap(), 1800);
        assert_eq!(t(json!("30s")).unwrap(), 30);
        assert_eq!(t(json!("5m")).unwrap(), 300);
        assert_eq!(t(json!("2h30m")).unwrap(), 9000);
        assert_eq!(t(json!("1d5h")).unwrap(), 104_400);
        assert_eq!(t(json!(0)).unwrap(), 0);
        for bad in [
            json!(-5),
            json!("soon"),
            json!("5 m"),
            json!(true),
            json!([1]),
            json!(1u64 << 40),
        ] {
            let e = t(bad.clone()).unwrap_err();
            assert_eq!(e.exit_code(), 1, "{bad}");
            assert!(e.message.contains("reserve_data.timeout"), "{}", e.message);
        }
    }

    #[test]
    fn key_entries_keep_strings_only() {
        assert_eq!(key_entries(None), Vec::<String>::new());
        assert_eq!(
            key_entries(Some(&json!(["lp:a", 3, "gh:b"]))),
            vec!["lp:a", "gh:b"]
        );
        assert!(key_entries(Some(&json!("lp:a"))).is_empty());
    }
}
