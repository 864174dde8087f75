//! `serial`: the device's console (see [`crate::serial`]).

use wasmtime::component::Resource;

use super::{HostError, HostState, duration_ms};
use crate::capability::Capability;
use crate::host::wit::latest::serial::{Host, HostPort};
use crate::serial::SerialPort;

/// Bytes a single `write` may send.
const MAX_WRITE_BYTES: usize = 1 << 20;

/// The host side of a `port` resource.
pub struct PortHandle {
    /// The console name the port was opened for.
    pub name: String,
    /// The open console; dropping it ends its share of the capture.
    pub port: SerialPort,
}

impl HostState {
    fn serial_timeout(&self, ms: u64) -> std::time::Duration {
        duration_ms(ms).min(self.cx.limits.host_call_timeout)
    }
}

impl HostPort for HostState {
    async fn wait_for(
        &mut self,
        this: Resource<PortHandle>,
        pattern: String,
        timeout: u64,
    ) -> Result<String, HostError> {
        let timeout = self.serial_timeout(timeout);
        let max = self.cx.limits.max_return_bytes;
        let cx = self.cx.clone();
        let handle = self.table().get(&this)?;
        let text = super::audited(&cx, "serial.wait-for", &handle.name, async {
            Ok(handle.port.wait_for(&pattern, timeout).await?)
        })
        .await?;
        if text.len() as u64 > max {
            return Err(HostError::limit(format!(
                "serial match on `{}` is {} bytes, over limits.max_return_bytes ({max}); use a narrower pattern",
                handle.name,
                text.len()
            )));
        }
        Ok(text)
    }

    async fn write(
        &mut self,
        this: Resource<PortHandle>,
        data: Vec<u8>,
        timeout: u64,
    ) -> Result<(), HostError> {
        let timeout = self.serial_timeout(timeout);
        if data.len() > MAX_WRITE_BYTES {
            return Err(HostError::invalid(format!(
                "serial write of {} bytes is over the limit of {MAX_WRITE_BYTES} bytes per call",
                data.len()
            )));
        }
        let cx = self.cx.clone();
        let handle = self.table().get(&this)?;
        super::audited(&cx, "serial.write", &handle.name, async {
            Ok(handle.port.write(&data, timeout).await?)
        })
        .await
    }

    async fn drop(&mut self, this: Resource<PortHandle>) -> wasmtime::Result<()> {
        self.table().delete(this)?;
        Ok(())
    }
}

impl Host for HostState {
    async fn open(&mut self, name: String) -> Result<Resource<PortHandle>, HostError> {
        self.cx.gate.check(Capability::Serial, &name)?;
        let cx = self.cx.clone();
        let port = super::audited(&cx, "serial.open", &name, async {
            Ok(cx.serial.open(&name)?)
        })
        .await?;
        Ok(self.table().push(PortHandle { name, port })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::context::{context, state};
    use labsim::serial::SerialServer;
    use std::time::Duration;

    #[tokio::test]
    async fn open_wait_write_and_drop_through_the_adapter() {
        let server = SerialServer::start("127.0.0.1").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cx = context(
            dir.path(),
            &format!(
                "serial_host: 127.0.0.1\nserial_port: {}\nconnector_runtime: {{serial_retry_seconds: 0.1}}\n",
                server.port()
            ),
            "{}",
            &[(Capability::Serial, "console")],
        );
        let mut st = state(&cx);
        let port = Host::open(&mut st, "console".into()).await.unwrap();
        let rep = port.rep();
        assert!(server.wait_accepted_async(1, Duration::from_secs(5)).await);
        HostPort::write(&mut st, Resource::new_borrow(rep), b"root\n".to_vec(), 5000)
            .await
            .unwrap();
        assert!(
            server
                .wait_received_async(b"root\n", Duration::from_secs(5))
                .await
        );
        server.push("login: ");
        let got = HostPort::wait_for(&mut st, Resource::new_borrow(rep), "log.n:".into(), 5000)
            .await
            .unwrap();
        assert_eq!(got, "login:");
        let err = HostPort::wait_for(&mut st, Resource::new_borrow(rep), "[".into(), 10)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "invalid");
        let err = HostPort::wait_for(&mut st, Resource::new_borrow(rep), "nope".into(), 10)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "timeout");
        assert!(err.to_string().contains("nope"), "{err}");

        HostPort::drop(&mut st, port).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while server.open_connections() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(server.open_connections(), 0, "dropping the port closes it");
        assert!(dir.path().join("provision-serial.log").exists());
    }

    #[tokio::test]
    async fn gate_comes_first_then_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let cx = context(dir.path(), "{}", "{}", &[(Capability::Serial, "console")]);
        let mut st = state(&cx);
        let err = Host::open(&mut st, "uart".into()).await.unwrap_err();
        assert_eq!(err.kind(), "denied");
        let err = Host::open(&mut st, "console".into()).await.unwrap_err();
        assert_eq!(err.kind(), "not-found");
        assert!(err.to_string().contains("serial_host"), "{err}");

        let cx = context(dir.path(), "{}", "{}", &[]);
        let mut st = state(&cx);
        let err = Host::open(&mut st, "console".into()).await.unwrap_err();
        assert_eq!(err.kind(), "denied");
    }
}
