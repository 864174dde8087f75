//! The control-host hooks every connector runs (reference §3.3): the power
//! cycle before provisioning and the best-effort `setup/<phase>` request.
//! Scripts run with their output captured, logged when an entry fails
//! ([`crate::power`]).
//!
//! Deliberate difference: the reference waits for the control host to stop
//! answering ICMP `ping` and probes SSH with `nc`; this runtime probes TCP
//! connections to the REST port and to port 22 directly, which needs no
//! helper programs or raw sockets and behaves the same on a real lab.

use std::time::{Duration, Instant};

use crate::config::DeviceConfig;
use crate::endpoints::CONTROL_HOST;
use crate::http::{HttpClient, HttpError, Request};
use crate::power::{self, Style};

/// Why the power cycle could not complete.
#[derive(Debug, thiserror::Error)]
pub enum ControlHostError {
    #[error("control host {host} did not come back: /health did not answer within {secs} s")]
    NotBack { host: String, secs: u64 },
}

/// Deadline of each shell entry of the control-host power scripts.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the pre-provision power cycle of the control host.
/// `come_back_timeout` bounds the wait for `/health` (reference: 300 s).
pub async fn power_cycle(
    config: &DeviceConfig,
    http: &HttpClient,
    manage_dut_power: bool,
    come_back_timeout: Duration,
) -> Result<(), ControlHostError> {
    let cx = Cx { config, http };
    let Some(host) = config.string("control_host") else {
        return Ok(());
    };
    if std::env::var_os("DISABLE_CONTROL_HOST_POWERCYCLE").is_some_and(|v| !v.is_empty()) {
        tracing::info!(target: "tfdc::control_host", "DISABLE_CONTROL_HOST_POWERCYCLE is set: not power cycling the control host");
        return Ok(());
    }
    if config
        .command_list("control_host_reboot_script")
        .ok()
        .flatten()
        .is_none_or(|l| l.is_empty())
    {
        tracing::warn!(target: "tfdc::control_host", "control_host_reboot_script is not configured: cannot power cycle control host {host}");
        return Ok(());
    }
    let has = |key: &str| {
        config
            .command_list(key)
            .ok()
            .flatten()
            .is_some_and(|l| !l.is_empty())
    };
    let dut_power = manage_dut_power && has("poweroff_script") && has("poweron_script");
    if manage_dut_power && !dut_power {
        tracing::warn!(target: "tfdc::control_host", "poweroff_script and poweron_script are not both configured: the device's power is left alone during the control host reboot");
    }
    tracing::info!(target: "tfdc::control_host", "Power cycling control host {host}");
    if dut_power {
        run_best_effort(config, "poweroff_script").await;
    }
    let result = cycle(&cx, &host, come_back_timeout).await;
    if dut_power {
        run_best_effort(config, "poweron_script").await;
    }
    result
}

/// What the hooks use.
struct Cx<'a> {
    config: &'a DeviceConfig,
    http: &'a HttpClient,
}

async fn cycle(
    cx: &Cx<'_>,
    host: &str,
    come_back_timeout: Duration,
) -> Result<(), ControlHostError> {
    let settle = Duration::from_secs_f64(cx.config.runtime.control_host_settle_seconds.max(0.0));
    let poll = Duration::from_secs(2).min(settle.max(Duration::from_millis(100)));
    let rest_addr = rest_address(cx);
    let poweroff = post(cx, "/api/v1/system/poweroff", Duration::from_secs(10)).await;
    match poweroff {
        Ok(()) => {
            // Wait for the host to go down (30 s at most); only if it did,
            // give it time to finish shutting down.
            if let Some(addr) = &rest_addr
                && wait_until(Duration::from_secs(30), poll, || async {
                    !tcp_open(addr).await
                })
                .await
            {
                tokio::time::sleep(settle).await;
            }
            run_best_effort(cx.config, "control_host_reboot_script").await;
            let healthy =
                wait_until(come_back_timeout, poll, || async { health_ok(cx).await }).await;
            if !healthy {
                return Err(ControlHostError::NotBack {
                    host: host.into(),
                    secs: come_back_timeout.as_secs(),
                });
            }
            tracing::info!(target: "tfdc::control_host", "Control host {host} is back");
        }
        Err(e) => {
            tracing::warn!(target: "tfdc::control_host", "Control host REST power-off failed ({e}); falling back to SSH checks");
            let ssh_addr = format!("{}:22", crate::http::bracket_v6(host));
            if tcp_open(&ssh_addr).await {
                return Ok(());
            }
            run_best_effort(cx.config, "control_host_reboot_script").await;
            if !wait_until(come_back_timeout, poll, || async {
                tcp_open(&ssh_addr).await
            })
            .await
            {
                tracing::error!(target: "tfdc::control_host", "Control host {host} did not answer on port 22 within {} s", come_back_timeout.as_secs());
            }
        }
    }
    Ok(())
}

/// Best-effort `POST /api/v1/system/setup/<phase>` with an optional JSON
/// body, announced as `Setting up <phase> on control host <host>`;
/// failures are only logged at debug level, as in the reference.
pub async fn setup(config: &DeviceConfig, http: &HttpClient, phase: &str, body: Option<&str>) {
    let Some(host) = config.string("control_host") else {
        return;
    };
    tracing::info!(target: "tfdc::control_host", "Setting up {phase} on control host {host}");
    let cx = Cx { config, http };
    let path = format!("/api/v1/system/setup/{phase}");
    let result = async {
        let url = cx.http.endpoint_url(CONTROL_HOST, &path)?;
        let mut req = Request::get(url, Duration::from_secs(10));
        req.method = "POST".into();
        if let Some(body) = body {
            req.headers
                .push(("content-type".into(), "application/json".into()));
            req.body = body.as_bytes().to_vec();
        }
        let resp = cx.http.send(req, 1 << 20).await?;
        if !(200..300).contains(&resp.status) {
            return Err(HttpError::Invalid(format!("HTTP status {}", resp.status)));
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(target: "tfdc::control_host", "control host setup/{phase} failed: {e}");
    }
}

/// Runs every entry of `key`, going on after failures (which
/// [`power::run_entry`] logs with the entry's output), as the reference
/// does.
async fn run_best_effort(config: &DeviceConfig, key: &str) {
    let Ok(Some(entries)) = config.command_list(key) else {
        return;
    };
    for entry in entries {
        let _ = power::run_entry(key, &entry, Style::Shell, SCRIPT_TIMEOUT).await;
    }
}

async fn post(cx: &Cx<'_>, path: &str, timeout: Duration) -> Result<(), HttpError> {
    let url = cx.http.endpoint_url(CONTROL_HOST, path)?;
    let mut req = Request::get(url.clone(), timeout);
    req.method = "POST".into();
    let resp = cx.http.send(req, 1 << 20).await?;
    if (200..300).contains(&resp.status) {
        Ok(())
    } else {
        Err(HttpError::Transport {
            method: "POST".into(),
            url,
            message: format!("HTTP status {}", resp.status),
        })
    }
}

async fn health_ok(cx: &Cx<'_>) -> bool {
    let Ok(url) = cx.http.endpoint_url(CONTROL_HOST, "/health") else {
        return false;
    };
    matches!(cx.http.send(Request::get(url, Duration::from_secs(3)), 1 << 20).await, Ok(r) if (200..300).contains(&r.status))
}

fn rest_address(cx: &Cx<'_>) -> Option<String> {
    let base = cx.http.endpoint_base(CONTROL_HOST).ok()?;
    let url = reqwest::Url::parse(base).ok()?;
    let host = url.host_str()?.to_string();
    let port = url.port_or_known_default()?;
    Some(format!(
        "{}:{port}",
        crate::http::bracket_v6(host.trim_matches(|c| c == '[' || c == ']'))
    ))
}

async fn tcp_open(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Polls `check` every `poll` until it holds or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, poll: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep(poll.min(deadline - now)).await;
    }
}
