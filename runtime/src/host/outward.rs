//! The one wrapper every host function that reaches outside the sandbox
//! goes through, so none can forget a step. For each call it:
//!
//! 1. asks the gate ([`Gate::check`]) for every capability the call needs,
//!    before anything else happens;
//! 2. caps the connector's deadline at `limits.host_call_timeout`;
//! 3. runs the call inside a tracing span (target `tfdc::host`: interface,
//!    function, capability, target);
//! 4. leaves exactly one audit line ([`Gate::audit`]): `denied` (or
//!    `invalid`) when the gate said no, otherwise how the call ended, with
//!    its duration.
//!
//! A host function names itself by its entry in
//! [`crate::capability::HOST_FUNCTIONS`]; a function that is not gated
//! there, or a check of another family than the table says, is a host bug
//! and traps.

use std::future::Future;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::HostError;
use crate::capability::{Access, Ask, AuditLine, Gate, HostFn};
use crate::limits::Limits;

/// Longest deadline a guest may ask for, so that absurd values cannot
/// overflow an `Instant`: 30 days.
const MAX_GUEST_MS: u64 = 30 * 24 * 3600 * 1000;

/// Converts a duration in milliseconds from the guest, refusing absurd
/// values instead of overflowing.
pub fn duration_ms(ms: u64) -> Duration {
    Duration::from_millis(ms.min(MAX_GUEST_MS))
}

/// The gate's refusal as the guest gets it (outside the generic wrapper,
/// whose `HostError: From<E>` bound would make `into` ambiguous).
fn refused(refusal: crate::capability::Refusal) -> HostError {
    refusal.into()
}

/// The gate and the deadline cap an interface's calls go through.
#[derive(Clone, Copy)]
pub struct Outward<'a> {
    gate: &'a Gate,
    max_deadline: Duration,
}

impl<'a> Outward<'a> {
    /// Calls checked by `gate`, their deadlines capped by
    /// `limits.host_call_timeout`.
    pub fn new(gate: &'a Gate, limits: &Limits) -> Self {
        Outward {
            gate,
            max_deadline: limits.host_call_timeout,
        }
    }

    /// Runs `body` as the call `func` of the connector: `asks` are checked
    /// first (the first names the capability in the span and the audit
    /// line), then `body` gets the deadline, `timeout_ms` from the guest
    /// capped by the lab (the lab's cap when the function takes none).
    /// `target` is what the audit line says was reached.
    pub async fn call<T, E, Fut>(
        &self,
        func: &'static HostFn,
        asks: &[Ask<'_>],
        target: &str,
        timeout_ms: Option<u64>,
        body: impl FnOnce(Duration) -> Fut,
    ) -> Result<T, HostError>
    where
        Fut: Future<Output = Result<T, E>>,
        HostError: From<E>,
    {
        let family = match func.access {
            Access::Gated(cap) | Access::Handle(cap) => cap,
            Access::Local | Access::RunDir => {
                return Err(HostError::trap(format!(
                    "host bug: {} is not an outward call in HOST_FUNCTIONS",
                    func.call
                )));
            }
        };
        let Some(first) = asks.first() else {
            return Err(HostError::trap(format!(
                "host bug: {} asks the gate for nothing",
                func.call
            )));
        };
        if first.family() != family {
            return Err(HostError::trap(format!(
                "host bug: {} is guarded by {} in HOST_FUNCTIONS but asked for {}",
                func.call,
                family.key(),
                first.label()
            )));
        }
        for ask in asks {
            if let Err(refusal) = self.gate.check(*ask) {
                let err = refused(refusal);
                self.record(func, ask, target, &Err(&err), Duration::ZERO);
                return Err(err);
            }
        }
        let deadline = timeout_ms.map_or(self.max_deadline, |ms| {
            duration_ms(ms).min(self.max_deadline)
        });
        let span = tracing::debug_span!(
            target: "tfdc::host",
            "host",
            interface = func.interface,
            function = func.function,
            capability = %first.label(),
            target = %target,
        );
        let start = Instant::now();
        let result = body(deadline)
            .instrument(span)
            .await
            .map_err(HostError::from);
        self.record(
            func,
            first,
            target,
            &result.as_ref().map(|_| ()),
            start.elapsed(),
        );
        result
    }

    fn record(
        &self,
        func: &HostFn,
        ask: &Ask<'_>,
        target: &str,
        result: &Result<(), &HostError>,
        duration: Duration,
    ) {
        let detail = result.as_ref().err().map(|e| e.to_string());
        self.gate.audit(&AuditLine {
            call: func.call,
            capability: ask.label(),
            target,
            result: match result {
                Ok(()) => "ok",
                Err(e) => e.audit_result(),
            },
            duration,
            detail: detail.as_deref(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::{Capability, CapabilitySet, Subject, funcs};

    fn gate(dir: &std::path::Path, caps: &[(Capability, &str)]) -> Gate {
        let mut set = CapabilitySet::new();
        for (cap, name) in caps {
            set.entry(*cap).or_default().insert(name.to_string());
        }
        Gate::new(Subject::default(), set.clone(), set, vec![], "the test")
            .with_json_audit(&dir.join("audit.jsonl"))
            .unwrap()
    }

    fn audit(dir: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The gate comes first: a denied call never runs its body, and leaves
    /// one audit line; an allowed one runs with the capped deadline and
    /// leaves one line with its outcome.
    #[tokio::test]
    async fn one_gate_check_one_deadline_one_audit_line() {
        let dir = tempfile::tempdir().unwrap();
        let gate = gate(dir.path(), &[(Capability::Ssh, "device")]);
        let limits = Limits {
            host_call_timeout: Duration::from_secs(5),
            ..Limits::default()
        };
        let out = Outward::new(&gate, &limits);
        let mut ran = false;
        let err = out
            .call(
                &funcs::SSH_CONNECT,
                &[Ask::Name(Capability::Ssh, "control-host")],
                "control-host",
                Some(1000),
                |_| async {
                    ran = true;
                    Ok::<_, HostError>(())
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "denied");
        assert!(!ran);
        let got = out
            .call(
                &funcs::SSH_CONNECT,
                &[Ask::Name(Capability::Ssh, "device")],
                "device",
                Some(3_600_000),
                |deadline| async move { Ok::<_, HostError>(deadline) },
            )
            .await
            .unwrap();
        assert_eq!(got, Duration::from_secs(5), "the lab's cap wins");
        let got = out
            .call(
                &funcs::SSH_WAIT_REACHABLE,
                &[Ask::Name(Capability::Ssh, "device")],
                "device",
                Some(200),
                |deadline| async move { Ok::<_, HostError>(deadline) },
            )
            .await
            .unwrap();
        assert_eq!(got, Duration::from_millis(200));
        let err = out
            .call(
                &funcs::SSH_EXEC,
                &[Ask::Name(Capability::Ssh, "device")],
                "device",
                None,
                |_| async { Err::<(), _>(HostError::Escape("`..` is not allowed".into())) },
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "invalid");
        let lines = audit(dir.path());
        let summary: Vec<(&str, &str, &str, &str)> = lines
            .iter()
            .map(|l| {
                (
                    l["call"].as_str().unwrap(),
                    l["capability"].as_str().unwrap(),
                    l["target"].as_str().unwrap(),
                    l["result"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("ssh.connect", "ssh:control-host", "control-host", "denied"),
                ("ssh.connect", "ssh:device", "device", "ok"),
                ("ssh.wait-reachable", "ssh:device", "device", "ok"),
                ("ssh.exec", "ssh:device", "device", "denied"),
            ]
        );
        assert!(
            lines[0]["detail"]
                .as_str()
                .unwrap()
                .contains("did not declare capability ssh: control-host"),
            "{}",
            lines[0]
        );
    }

    /// The table is the wrapper's contract: an ungated function, a check
    /// of another family or no check at all is a host bug, and traps.
    #[tokio::test]
    async fn the_table_says_what_may_be_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let gate = gate(dir.path(), &[(Capability::Ssh, "device")]);
        let limits = Limits::default();
        let out = Outward::new(&gate, &limits);
        let ok = |_| async { Ok::<_, HostError>(()) };
        for (func, asks) in [
            (
                &funcs::JOB_WRITE_ARTIFACT,
                vec![Ask::Name(Capability::Ssh, "device")],
            ),
            (
                &funcs::HTTP_CALL,
                vec![Ask::Name(Capability::Ssh, "device")],
            ),
            (&funcs::SSH_CONNECT, vec![]),
        ] {
            let err = out.call(func, &asks, "x", None, ok).await.unwrap_err();
            assert_eq!(err.kind(), "trap", "{}", func.call);
            assert!(err.to_string().contains("host bug"), "{err}");
        }
        assert!(audit(dir.path()).is_empty());
    }

    #[test]
    fn absurd_guest_deadlines_do_not_overflow() {
        assert_eq!(duration_ms(u64::MAX), Duration::from_millis(MAX_GUEST_MS));
        assert!(
            std::time::Instant::now()
                .checked_add(duration_ms(u64::MAX))
                .is_some()
        );
    }
}
