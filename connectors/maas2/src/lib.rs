//! `maas2` (reference §4.5): machines managed by MAAS. Provisioning
//! releases the machine, applies a storage layout, allocates and deploys
//! it through the MAAS 2.0 REST API, and waits until MAAS reports it
//! deployed at the configured address and it answers SSH; cleanup releases
//! it again.
//!
//! The reference drives the `maas` command line with a logged-in profile;
//! this connector calls the REST API through the host's `maas` endpoint,
//! which holds the API key and signs every request, so the key never
//! enters the sandbox. `docs/maas2.md` lists the configuration keys and the
//! deliberate differences from the reference.

pub mod api;
pub mod efi;
pub mod settings;
pub mod storage;
pub mod userdata;

use std::cell::Cell;
use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use testflinger_connector::prelude::*;
use testflinger_connector::units::human_duration;
use testflinger_connector::wait::Wait;

use api::{Maas, MaasError};
use settings::{Options, Settings};
use storage::{ClearStep, Layout, Step};

/// Deadline of the SSH boot check (connection and `/bin/true`; reference
/// 60 s).
const BOOT_CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of each TPM command (reference 30 s).
const TPM_TIMEOUT: Duration = Duration::from_secs(30);
/// State reads while waiting for `Ready` after a release (reference 30).
const RELEASE_POLLS: u32 = 30;
/// State reads after each recovery step (reference 3).
const RECOVERY_POLLS: u32 = 3;
/// How often a long wait logs that it is still waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// MAAS releases that can deploy to RAM only.
const EPHEMERAL_SINCE: (u64, u64, u64) = (3, 5, 0);

/// The connector.
pub struct Maas2;

impl Connector for Maas2 {
    fn new() -> Self {
        Maas2
    }

    fn provision(&mut self) -> PhaseResult<()> {
        // Unlike the other reference connectors, maas2 logs the failure
        // and `END provision` after a failed provisioning too.
        provision::Frame::new()
            .capture_console()
            .end_after_failure()
            .run(
                |cfg| {
                    let node = Node::load(cfg)?;
                    let layouts = node.check()?;
                    Ok::<_, PhaseError>((node, layouts))
                },
                |(node, layouts)| {
                    info!("Provisioning device");
                    let result = node.provision(&layouts);
                    if let Err(e) = &result
                        && e.kind() == PhaseKind::Failed
                    {
                        error!("Provisioning failed: {}", e.message());
                    }
                    result
                },
            )
    }

    fn cleanup(&mut self) -> PhaseResult<()> {
        Node::load(&config::Config::load()?)?.recover()
    }
}

export_connector!(Maas2);

fn note(message: impl AsRef<str>) {
    info!("MAAS: {}", message.as_ref());
}

/// A storage-layout failure (the reference's `MaasStorageError`).
fn storage_failed(e: impl std::fmt::Display) -> PhaseError {
    let message = format!("Unable to configure node storage: {e}");
    error!("MAAS: {message}");
    PhaseError::failed(message).class("MaasStorageError")
}

/// A MAAS call of the storage configuration that failed: a storage
/// failure, caused by the host error behind it, if any.
fn storage_call_failed(what: impl std::fmt::Display, e: MaasError) -> PhaseError {
    let failed = storage_failed(format!("{what}: {e}"));
    match e.cause {
        Some(cause) => failed.caused_by(cause),
        None => failed,
    }
}

/// One deployment request.
struct Deploy<'a> {
    distro: String,
    kernel: Option<String>,
    /// Already in the form MAAS wants (base64).
    user_data: Option<String>,
    /// The layout, and which setting it came from.
    layout: Option<&'a Layout>,
    ephemeral: bool,
}

/// The storage layouts, checked against the static rules.
struct Layouts {
    /// `provision_data.disks`.
    job: Option<Layout>,
    /// `default_disks`.
    default: Option<Layout>,
}

/// The machine this invocation works on.
struct Node {
    s: Settings,
    o: Options,
    api: Maas,
    /// Newest installation result before the deployment started.
    start_install_id: Cell<Option<u64>>,
}

impl Node {
    fn load(cfg: &config::Config) -> Result<Node, Error> {
        let s = Settings::from_config(cfg)?;
        let o = Options::load()?;
        let api = Maas::new(&s.node_id, o.debug, s.retry_base);
        Ok(Node {
            s,
            o,
            api,
            start_install_id: Cell::new(None),
        })
    }

    fn agent(&self) -> &str {
        if self.s.agent_name.is_empty() {
            &self.s.node_id
        } else {
            &self.s.agent_name
        }
    }

    fn device_ip(&self) -> PhaseResult<&str> {
        self.s.device_ip.as_deref().ok_or_else(|| {
            PhaseError::failed(
                "device config key `device_ip` is missing: set it to the address the deployed machine answers on",
            )
        })
    }

    /// Checks what can be checked before MAAS or the device is touched:
    /// `device_ip` and the static rules of the storage layouts.
    fn check(&self) -> PhaseResult<Layouts> {
        self.device_ip()?;
        let parse = |value: Option<&Value>, source: &str| {
            value
                .map(|d| Layout::parse(d, source))
                .transpose()
                .map_err(storage_failed)
        };
        Ok(Layouts {
            job: parse(self.o.disks.as_ref(), "provision_data.disks")?,
            default: parse(self.s.default_disks.as_ref(), "default_disks")?,
        })
    }

    fn provision(&self, layouts: &Layouts) -> PhaseResult<()> {
        let default_layout = layouts.default.as_ref();
        let layout = layouts.job.as_ref().or(default_layout);
        let user_data = self.o.user_data.as_deref().map(|text| {
            let (value, encoded) = userdata::for_maas(text);
            if encoded {
                note("user_data is already base64-encoded cloud-init data; sending it as it is");
            }
            value
        });
        note("Reading node's block device information");
        let devices = self.api.block_devices()?;
        for l in [layout, default_layout.filter(|_| self.s.clear_tpm)]
            .into_iter()
            .flatten()
        {
            l.plan(&devices).map_err(storage_failed)?;
        }

        if self.s.clear_tpm {
            if self.s.reset_efi {
                self.efi_fix();
            }
            self.clear_tpm(default_layout)?;
        }
        self.deploy(&Deploy {
            distro: self.o.distro.clone(),
            kernel: self.o.kernel.clone(),
            user_data,
            layout,
            ephemeral: self.o.ephemeral,
        })
    }

    /// Releases the node (after the EFI fix when configured): the
    /// reference's `recover`, used before every deployment and as cleanup.
    fn recover(&self) -> PhaseResult<()> {
        if self.s.reset_efi {
            self.efi_fix();
        }
        note(format!("Releasing node {}", self.agent()));
        self.release()?;
        note(format!("Successfully released node {}", self.agent()));
        Ok(())
    }

    fn deploy(&self, d: &Deploy<'_>) -> PhaseResult<()> {
        self.recover()?;
        let status = self.api.status()?;
        note(format!("Node {} is {status}", self.s.node_id));
        match d.layout {
            Some(layout) => self.configure_storage(layout)?,
            None => {
                warn!(
                    "MAAS: 'default_disks' and/or 'disks' unspecified; setting default storage layout to flat"
                );
                if let Err(e) = self
                    .api
                    .machine_op_once("set_storage_layout", &[("storage_layout", "flat")])
                {
                    error!(
                        "MAAS: Unable to set flat disk layout, attempting to continue anyway: {e}"
                    );
                }
            }
        }
        note("Acquiring node");
        self.api.allocate()?;
        self.start_install_id.set(self.api.installation_id()?);

        let mut params: Vec<(&str, &str)> = vec![("distro_series", &d.distro)];
        if let Some(k) = &d.kernel {
            params.push(("hwe_kernel", k));
        }
        if let Some(u) = &d.user_data {
            params.push(("user_data", u));
        }
        if d.ephemeral && self.supports_ephemeral() {
            params.push(("ephemeral_deploy", "true"));
            note("Deployment set to ephemeral");
        }
        note(format!(
            "Starting node {} with distro {}",
            self.agent(),
            d.distro
        ));
        let reply = self.api.machine_op("deploy", &params)?;
        self.wait_deployed(&reply.text())
    }

    fn supports_ephemeral(&self) -> bool {
        let version = match self.api.version() {
            Ok(v) => v,
            Err(e) => {
                warn!(
                    "MAAS: Unable to determine MAAS version: {e}. Proceeding without ephemeral deployment"
                );
                return false;
            }
        };
        note(format!("MAAS version detected: {version}"));
        match api::parse_version(&version) {
            Some(v) if v >= EPHEMERAL_SINCE => true,
            Some(_) => {
                warn!(
                    "MAAS: MAAS {version} cannot deploy to RAM (needs 3.5.0 or newer); deploying to disk"
                );
                false
            }
            None => {
                warn!(
                    "MAAS: Unable to understand MAAS version {version:?}. Proceeding without ephemeral deployment"
                );
                false
            }
        }
    }

    /// Clears the node's storage and applies `layout`.
    fn configure_storage(&self, layout: &Layout) -> PhaseResult<()> {
        note("Configuring node storage");
        let devices = self.api.block_devices()?;
        let plan = layout.plan(&devices).map_err(storage_failed)?;
        for (disk, blk) in &plan.disks {
            if let Some(dev) = devices.iter().find(|d| d.id == *blk) {
                note(format!(
                    "Disk `{disk}` is block device {blk} ({}, {} bytes)",
                    dev.name, dev.size
                ));
            }
        }
        note("Clearing existing storage configuration");
        for step in storage::clear_steps(&devices) {
            let result = match step {
                ClearStep::DeletePartition { blk, partition } => {
                    self.api.delete_partition(blk, partition)
                }
                ClearStep::Unmount { blk } => self.api.block_device_op(blk, "unmount", &[]),
                ClearStep::Unformat { blk } => self.api.block_device_op(blk, "unformat", &[]),
            };
            result.map_err(|e| storage_call_failed("clearing the current layout", e))?;
        }
        note("Applying storage layout");
        let mut partitions: HashMap<String, u64> = HashMap::new();
        let pid = |partitions: &HashMap<String, u64>, entry: &str| -> Result<u64, MaasError> {
            partitions.get(entry).copied().ok_or_else(|| {
                MaasError::answer(format!("partition `{entry}` was not created"), false)
            })
        };
        for step in &plan.steps {
            let result = match step {
                Step::SetBootDisk { blk, .. } => self
                    .api
                    .block_device_op(*blk, "set_boot_disk", &[])
                    .map(drop),
                Step::Rename { blk, name, .. } => self
                    .api
                    .block_device_update(*blk, &[("name", name)])
                    .map(drop),
                Step::CreatePartition {
                    partition,
                    blk,
                    size,
                } => self.api.create_partition(*blk, *size).map(|id| {
                    partitions.insert(partition.clone(), id);
                }),
                Step::FormatPartition {
                    partition,
                    blk,
                    fstype,
                    label,
                    ..
                } => pid(&partitions, partition).and_then(|p| {
                    let mut params = vec![("fstype", fstype.as_str())];
                    if let Some(l) = label {
                        params.push(("label", l));
                    }
                    self.api.partition_op(*blk, p, "format", &params).map(drop)
                }),
                Step::FormatDisk { blk, fstype, .. } => self
                    .api
                    .block_device_op(*blk, "format", &[("fstype", fstype)])
                    .map(drop),
                Step::MountPartition {
                    partition,
                    blk,
                    path,
                    ..
                } => pid(&partitions, partition).and_then(|p| {
                    self.api
                        .partition_op(*blk, p, "mount", &[("mount_point", path)])
                        .map(drop)
                }),
                Step::MountDisk { blk, path, .. } => self
                    .api
                    .block_device_op(*blk, "mount", &[("mount_point", path)])
                    .map(drop),
            };
            result.map_err(|e| storage_call_failed(layout.describe(step.entry()), e))?;
        }
        Ok(())
    }

    /// Polls the deployment until the node is deployed at `device_ip` and
    /// answers SSH, fails, or `timeout_min` passes.
    fn wait_deployed(&self, deploy_reply: &str) -> PhaseResult<()> {
        let device_ip = self.device_ip()?;
        let timeout = self.s.deploy_timeout;
        let poll = self.s.deploy_poll;
        let started = clock::now();
        let mut last: Option<String> = None;
        let mut failure: Option<PhaseError> = None;
        let mut stop = |e: PhaseError| {
            let reason = Error::new(ErrorKind::Failed, e.message());
            failure = Some(e);
            Check::Failed(reason)
        };
        let waited = Wait::new("the deployment", timeout)
            .every(poll)
            .progress_every(PROGRESS_EVERY)
            .prefix("MAAS: ")
            .note(format!(
                " (until {}), reading its state every {}",
                clock::utc_after(timeout),
                human_duration(poll)
            ))
            .done("the deployment ended")
            .until(|| {
                let machine = match self.api.machine() {
                    Ok(m) => m,
                    Err(e) => return stop(e.into()),
                };
                let status = api::status_name(&machine);
                if last.as_deref() != Some(status.as_str()) {
                    note(format!(
                        "Node is {status} ({} since the deployment started)",
                        human_duration(clock::now().saturating_sub(started))
                    ));
                }
                last = Some(status.clone());
                match status.as_str() {
                    "Failed deployment" => {
                        error!("MAAS: MAAS reports Failed Deployment");
                        let detail = machine
                            .get("status_message")
                            .and_then(Value::as_str)
                            .filter(|m| !m.is_empty())
                            .map(|m| format!(" MAAS says: {m}"))
                            .unwrap_or_default();
                        if !detail.is_empty() {
                            error!("MAAS:{detail}");
                        }
                        self.log_install_log();
                        stop(PhaseError::failed(format!(
                            "Provisioning failed because MAAS got unexpected or deployment failure status signal.{detail}"
                        )))
                    }
                    "Deployed" => {
                        let addresses: Vec<String> = machine
                            .get("ip_addresses")
                            .and_then(Value::as_array)
                            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                            .unwrap_or_default();
                        if !addresses.iter().any(|a| a == device_ip) {
                            error!("MAAS: MAAS reports Wrong IP Address");
                            self.log_install_log();
                            return stop(PhaseError::failed(format!(
                                "Provisioning failed because of bad device configuration. Expected device ip {device_ip} was not any of the addresses known to maas: [{}]",
                                addresses.join(", ")
                            )));
                        }
                        if self.booted() {
                            note("Deployed and booted.");
                            Check::Ready(())
                        } else {
                            Check::not_yet("deployed; the test image does not answer SSH yet")
                        }
                    }
                    _ => Check::not_yet(format!("the node is {status}")),
                }
            });
        match waited {
            Ok(_) => Ok(()),
            Err(w) if !w.is_timeout() => Err(failure.unwrap_or_else(|| w.into())),
            Err(_) => {
                let status = last.unwrap_or_else(|| "(not read)".into());
                error!(
                    "MAAS: Device {} still in \"{status}\" state, deployment failed!",
                    self.agent()
                );
                error!("MAAS: {}", api::excerpt(deploy_reply, 2000));
                self.log_install_log();
                Err(PhaseError::failed(format!(
                    "Provisioning failed because deployment timeout. Deploying for more than {} minutes.",
                    fmt_minutes(timeout)
                )))
            }
        }
    }

    /// The reference's boot check: `ubuntu@device_ip /bin/true`.
    fn booted(&self) -> bool {
        note("Checking if test image booted.");
        let session = match ssh::connect_with("device", BOOT_CHECK_TIMEOUT, Some("ubuntu")) {
            Ok(s) => s,
            Err(e) => {
                note(format!("The test image does not answer over SSH yet: {e}"));
                return false;
            }
        };
        match session.exec_with("/bin/true", BOOT_CHECK_TIMEOUT, false) {
            Ok(out) if out.success() => true,
            Ok(out) => {
                note(format!("/bin/true exited with status {}", out.status));
                false
            }
            Err(e) => {
                note(format!("/bin/true did not run: {e}"));
                false
            }
        }
    }

    /// Logs the installation log of the deployment, if MAAS has a new one.
    fn log_install_log(&self) {
        match self.api.installation_id() {
            Ok(Some(id)) if Some(id) != self.start_install_id.get() => {
                match self.api.install_log(id) {
                    Ok(text) => info!("MAAS: Installation log (result {id}):\n{}", text.trim_end()),
                    Err(e) => warn!("MAAS: cannot download installation log {id}: {e}"),
                }
            }
            Ok(_) => note("MAAS has no installation log for this deployment"),
            Err(e) => warn!("MAAS: cannot list installation results: {e}"),
        }
    }

    /// Reads the state up to `polls + 1` times, `maas_release_poll_seconds`
    /// apart, until it is `Ready`. Returns whether it got there and the
    /// last state.
    fn wait_ready(&self, polls: u32) -> PhaseResult<(bool, String)> {
        let mut status = String::new();
        let mut failure = None;
        let waited = Wait::counted("the node to be Ready", polls + 1)
            .every(self.s.release_poll)
            .prefix("MAAS: ")
            .done("the node is Ready")
            .until(|| match self.api.status() {
                Ok(s) if s == "Ready" => Check::Ready(()),
                Ok(s) => {
                    let reason = format!("the node is {s}");
                    status = s;
                    Check::not_yet(reason)
                }
                Err(e) => {
                    let reason = Error::new(ErrorKind::Failed, e.message.clone());
                    failure = Some(e);
                    Check::Failed(reason)
                }
            });
        match (waited, failure) {
            (Ok(_), _) => Ok((true, "Ready".to_string())),
            (Err(_), Some(e)) => Err(e.into()),
            (Err(_), None) => Ok((false, status)),
        }
    }

    /// `release`, escalating to mark-broken/mark-fixed and power-off when
    /// the node does not become `Ready`. Only a node still not `Ready`
    /// after all of that needs recovery (exit 46); MAAS refusing or failing
    /// the calls themselves is an ordinary failure.
    fn release(&self) -> PhaseResult<()> {
        self.api.machine_op("release", &[])?;
        let (ready, status) = self.wait_ready(RELEASE_POLLS)?;
        if ready {
            return Ok(());
        }
        error!(
            "MAAS: Device {} still in \"{status}\" state, attempting recovery!",
            self.agent()
        );
        note("Attempt to mark-broken:");
        self.api.machine_op("mark_broken", &[])?;
        note("Attempt to mark-fixed:");
        self.api.machine_op("mark_fixed", &[])?;
        note("Check for Ready status");
        if self.wait_ready(RECOVERY_POLLS)?.0 {
            return Ok(());
        }
        note("Attempt to just power-off the machine");
        self.api.machine_op("power_off", &[])?;
        note("Check for Ready status");
        let (ready, status) = self.wait_ready(RECOVERY_POLLS)?;
        if ready {
            return Ok(());
        }
        error!(
            "MAAS: Device {} still in \"{status}\" state, could not recover!",
            self.agent()
        );
        Err(PhaseError::recovery(format!(
            "Device recovery failed! MAAS machine {} is still {status} after release, mark-broken, mark-fixed and power-off",
            self.s.node_id
        )))
    }

    /// Puts the network (IPv4) boot entries first; best effort.
    fn efi_fix(&self) {
        note("Fixing EFI boot order before provisioning");
        let session = match ssh::connect_as("device", "ubuntu") {
            Ok(s) => s,
            Err(e) => {
                warn!(
                    "MAAS: Cannot reach the device to fix its EFI boot order ({e}); leaving it as it is"
                );
                return;
            }
        };
        let read = |s: &ssh::Session| {
            s.exec_quiet("sudo efibootmgr -v")
                .ok()
                .filter(ssh::Output::success)
        };
        let output = match read(&session) {
            Some(out) => out,
            None => {
                note("efibootmgr failed; installing efi-tools");
                for cmd in [
                    "sudo snap install efi-tools-ijohnson --devmode --edge",
                    "sudo snap alias efi-tools-ijohnson.efibootmgr efibootmgr",
                ] {
                    let _ = session.exec_quiet(cmd);
                }
                match read(&session) {
                    Some(out) => out,
                    None => {
                        warn!(
                            "MAAS: Cannot read the EFI boot entries; leaving the boot order as it is"
                        );
                        return;
                    }
                }
            }
        };
        let Some(order) = efi::new_boot_order(&output.stdout) else {
            warn!("MAAS: efibootmgr shows no BootOrder; leaving the boot order as it is");
            return;
        };
        note(format!("Setting boot order to {order}"));
        match session.exec_quiet(&format!("sudo efibootmgr -o {order}")) {
            Ok(out) if out.success() => {}
            Ok(out) => error!(
                "MAAS: Failed to set efi boot order to \"{order}\":\n{}{}",
                out.stdout, out.stderr
            ),
            Err(e) => error!("MAAS: Failed to set efi boot order to \"{order}\": {e}"),
        }
    }

    /// Clears the TPM, deploying the default image first when the current
    /// system cannot do it.
    fn clear_tpm(&self, default_layout: Option<&Layout>) -> PhaseResult<()> {
        note("Clearing the TPM before provisioning");
        if self.tpm_clear_command() {
            return Ok(());
        }
        note("The current system cannot clear the TPM; deploying the default image first");
        self.deploy(&Deploy {
            distro: "jammy".into(),
            kernel: None,
            user_data: None,
            layout: default_layout,
            ephemeral: false,
        })?;
        if !self.tpm_clear_command() {
            return Err(PhaseError::failed("Failed to clear TPM"));
        }
        Ok(())
    }

    fn tpm_clear_command(&self) -> bool {
        let Ok(session) = ssh::connect_with("device", TPM_TIMEOUT, Some("ubuntu")) else {
            return false;
        };
        let ok = |cmd: &str, log: bool| {
            session
                .exec_with(cmd, TPM_TIMEOUT, log)
                .ok()
                .filter(ssh::Output::success)
        };
        if ok("echo 5 | sudo tee /sys/class/tpm/tpm0/ppi/request", true).is_none() {
            return false;
        }
        ok("cat /sys/class/tpm/tpm0/ppi/request", false).is_some_and(|o| o.stdout.trim() == "5")
    }
}

/// `timeout_min` as given: `60`, or `0.05`.
fn fmt_minutes(d: Duration) -> String {
    let m = d.as_secs_f64() / 60.0;
    if m.fract() == 0.0 {
        format!("{m:.0}")
    } else {
        format!("{}", (m * 1000.0).round() / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use testflinger_connector::testing::{FakeHost, Installed, err, pattern, response};

    use super::*;

    fn config() -> Value {
        json!({
            "agent_name": "maas-1", "node_id": "abc", "device_ip": "10.0.0.7",
            "maas_url": "http://maas:5240/MAAS",
        })
    }

    fn machine(status: &str) -> testflinger_connector::Result<http::Response> {
        response(
            200,
            &json!({"status_name": status, "ip_addresses": ["10.0.0.7"]}).to_string(),
        )
    }

    fn host(job: Value) -> FakeHost {
        FakeHost::new().config(config()).job(job)
    }

    fn reads(host: &Installed) -> usize {
        host.trace()
            .iter()
            .filter(|c| *c == "http maas GET /api/2.0/machines/abc/")
            .count()
    }

    #[test]
    fn cleanup_releases_and_waits_until_ready() {
        let host = host(json!({}))
            .http(
                "maas",
                "POST /api/2.0/machines/abc/?op=release",
                [response(200, "{}")],
            )
            .http(
                "maas",
                "GET /api/2.0/machines/abc/",
                [machine("Releasing"), machine("Ready")],
            )
            .install();
        Maas2::new().cleanup().unwrap();
        assert_eq!(reads(&host), 2);
        assert!(host.logged("INFO MAAS: Successfully released node maas-1"));
        assert!(host.logged("INFO MAAS: The node is Ready after 10 s, 2 checks"));
    }

    #[test]
    fn a_node_that_never_gets_ready_needs_recovery_after_the_escalation() {
        let ok = || [response(200, "{}")];
        let host = host(json!({}))
            .http("maas", pattern(r"^POST /api/2.0/machines/abc/\?op="), ok())
            .http("maas", "GET /api/2.0/machines/abc/", [machine("Releasing")])
            .install();
        let e = Maas2::new().cleanup().unwrap_err();
        assert!(e.is_recovery());
        assert!(e.message().starts_with("Device recovery failed!"), "{e}");
        // 1 + 30 reads after the release, 1 + 3 after each recovery step,
        // 10 s apart on the virtual clock.
        assert_eq!(reads(&host), 31 + 4 + 4);
        assert_eq!(host.elapsed(), Duration::from_secs(10 * (30 + 3 + 3)));
        let ops: Vec<String> = host
            .trace()
            .into_iter()
            .filter(|c| c.starts_with("http maas POST"))
            .collect();
        assert_eq!(
            ops,
            ["release", "mark_broken", "mark_fixed", "power_off"]
                .map(|op| format!("http maas POST /api/2.0/machines/abc/?op={op}"))
        );
    }

    #[test]
    fn failed_calls_back_off_and_keep_the_host_error_as_their_cause() {
        let host = host(json!({}))
            .http(
                "maas",
                "POST /api/2.0/machines/abc/?op=release",
                [err(ErrorKind::Io, "connection refused")],
            )
            .install();
        let e = Maas2::new().cleanup().unwrap_err();
        assert_eq!(e.kind(), PhaseKind::Failed);
        assert!(
            e.message()
                .starts_with("POST machines/abc/?op=release failed 4 times: [1] "),
            "{e}"
        );
        assert_eq!(e.cause(), Some("connection refused"));
        // 10, 20 and 40 s between the four attempts.
        assert_eq!(host.elapsed(), Duration::from_secs(70));
        assert!(host.logged("WARNING MAAS: POST machines/abc/?op=release failed (POST machines/abc/?op=release: connection refused); trying again in 40 s"));
    }

    #[test]
    fn storage_layout_errors_are_maas_storage_errors_found_before_any_change() {
        let disks = json!([
            {"id": "d0", "type": "disk"},
            {"id": "p1", "type": "partition", "device": "d0", "alloc_pct": 60},
            {"id": "p2", "type": "partition", "device": "d0", "alloc_pct": 50},
        ]);
        let host = host(json!({"provision_data": {"disks": disks}})).install();
        let e = Maas2::new().provision().unwrap_err();
        assert_eq!(e.class_name(), Some("MaasStorageError"));
        assert!(e.message().contains("exceeds 100"), "{e}");
        // Not even the pre-provision hook ran.
        assert!(host.trace().is_empty(), "{:?}", host.trace());
        assert!(!host.logged("BEGIN provision"));
    }

    #[test]
    fn a_deployment_that_never_ends_times_out_after_timeout_min() {
        let mut cfg = config();
        cfg["timeout_min"] = json!(5);
        let ok = || [response(200, "{}")];
        let host = FakeHost::new()
            .config(cfg)
            .job(json!({"provision_data": {"distro": "noble"}}))
            .http(
                "maas",
                "GET /api/2.0/nodes/abc/blockdevices/",
                [response(200, "[]")],
            )
            .http("maas", pattern("^POST "), ok())
            .http(
                "maas",
                "GET /api/2.0/nodes/abc/results/?type=installation",
                [response(200, "[]")],
            )
            .http(
                "maas",
                "GET /api/2.0/machines/abc/",
                [machine("Ready"), machine("Ready"), machine("Deploying")],
            )
            .install();
        let e = Maas2::new().provision().unwrap_err();
        assert_eq!(
            e.message(),
            "Provisioning failed because deployment timeout. Deploying for more than 5 minutes."
        );
        assert!(host.logged("INFO MAAS: Waiting up to 5 min for the deployment (until 2027-01-01 00:05:00 UTC), reading its state every 60 s"));
        assert!(host.logged("INFO MAAS: Node is Deploying (0 ms since the deployment started)"));
        assert!(host.logged(
            "INFO MAAS: Still waiting for the deployment (4 min left): the node is Deploying"
        ));
        assert!(
            host.logged("MAAS: Device maas-1 still in \"Deploying\" state, deployment failed!")
        );
        assert!(
            host.trace()
                .contains(&"http maas POST /api/2.0/machines/abc/?op=deploy".to_string())
        );
    }
}
