//! `serial`: the device's console (see [`crate::serial`]).

use wasmtime::component::{Resource, ResourceTable};

use super::HostError;
use super::outward::Outward;
use crate::capability::{Ask, Capability, funcs};
use crate::host::wit::latest::serial::{Host, HostPort};
use crate::serial::{SerialError, SerialHub, SerialPort};

/// Bytes a single `write` may send.
const MAX_WRITE_BYTES: usize = 1 << 20;

impl From<SerialError> for HostError {
    fn from(e: SerialError) -> Self {
        let text = e.to_string();
        match e {
            SerialError::NotConfigured | SerialError::NoSuchPort { .. } => {
                HostError::not_found(text)
            }
            SerialError::InvalidPattern { .. } => HostError::invalid(text),
            SerialError::Timeout { .. } | SerialError::NotConnected { .. } => {
                HostError::timeout(text)
            }
            SerialError::Io { .. } => HostError::io(text),
            SerialError::TooManyPorts { .. } => HostError::limit(text),
            SerialError::BadConfig(_) | SerialError::NoRuntime(_) => HostError::other(text),
        }
    }
}

/// The host side of a `port` resource.
pub struct PortHandle {
    /// The console name the port was opened for.
    pub name: String,
    /// The open console; dropping it ends its share of the capture.
    pub port: SerialPort,
}

/// What `serial` needs: the gate, the stage's consoles, the return-size
/// limit, and the resource table holding open ports.
pub struct SerialView<'a> {
    pub outward: Outward<'a>,
    pub serial: &'a SerialHub,
    /// `limits.max_return_bytes`.
    pub max_return_bytes: u64,
    pub table: &'a mut ResourceTable,
}

/// The [`wasmtime::component::HasData`] of `serial`.
pub struct HasSerial;

impl wasmtime::component::HasData for HasSerial {
    type Data<'a> = SerialView<'a>;
}

impl HostPort for SerialView<'_> {
    async fn wait_for(
        &mut self,
        this: Resource<PortHandle>,
        pattern: String,
        timeout: u64,
    ) -> Result<String, HostError> {
        let max = self.max_return_bytes;
        let handle = self.table.get(&this)?;
        let name = handle.name.as_str();
        self.outward
            .call(
                &funcs::SERIAL_WAIT_FOR,
                &[Ask::Name(Capability::Serial, name)],
                name,
                Some(timeout),
                |deadline| async move {
                    let text = handle.port.wait_for(&pattern, deadline).await?;
                    if text.len() as u64 > max {
                        return Err(HostError::limit(format!(
                            "serial match on `{name}` is {} bytes, over limits.max_return_bytes ({max}); use a narrower pattern",
                            text.len()
                        )));
                    }
                    Ok(text)
                },
            )
            .await
    }

    async fn write(
        &mut self,
        this: Resource<PortHandle>,
        data: Vec<u8>,
        timeout: u64,
    ) -> Result<(), HostError> {
        let handle = self.table.get(&this)?;
        let name = handle.name.as_str();
        self.outward
            .call(
                &funcs::SERIAL_WRITE,
                &[Ask::Name(Capability::Serial, name)],
                name,
                Some(timeout),
                |deadline| async move {
                    if data.len() > MAX_WRITE_BYTES {
                        return Err(HostError::invalid(format!(
                            "serial write of {} bytes is over the limit of {MAX_WRITE_BYTES} bytes per call",
                            data.len()
                        )));
                    }
                    Ok(handle.port.write(&data, deadline).await?)
                },
            )
            .await
    }

    async fn drop(&mut self, this: Resource<PortHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl Host for SerialView<'_> {
    async fn open(&mut self, name: String) -> Result<Resource<PortHandle>, HostError> {
        let hub = self.serial;
        let port = self
            .outward
            .call(
                &funcs::SERIAL_OPEN,
                &[Ask::Name(Capability::Serial, &name)],
                &name,
                None,
                |_| async { hub.open(&name) },
            )
            .await?;
        Ok(self.table.push(PortHandle { name, port })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::context::{context, state};
    use labsim::serial::SerialServer;
    use std::time::Duration;

    /// Each kind of console failure reaches the connector as the WIT
    /// error kind it is documented as.
    #[test]
    fn serial_errors_map_to_wit_kinds() {
        let kind = |e: SerialError| HostError::from(e).kind();
        assert_eq!(kind(SerialError::NotConfigured), "not-found");
        assert_eq!(
            kind(SerialError::NoSuchPort {
                name: "uart".into()
            }),
            "not-found"
        );
        let invalid = SerialError::InvalidPattern {
            pattern: "(".into(),
            message: "unclosed".into(),
        };
        assert_eq!(kind(invalid), "invalid");
        assert_eq!(kind(SerialError::TooManyPorts { open: 4, max: 4 }), "limit");
        let io = SerialError::Io {
            addr: "h:1".into(),
            message: "reset".into(),
        };
        assert_eq!(kind(io), "io");
        assert_eq!(kind(SerialError::BadConfig("port".into())), "other");
    }

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
        let port = Host::open(&mut st.serial(), "console".into())
            .await
            .unwrap();
        let rep = port.rep();
        assert!(server.wait_accepted_async(1, Duration::from_secs(5)).await);
        HostPort::write(
            &mut st.serial(),
            Resource::new_borrow(rep),
            b"root\n".to_vec(),
            5000,
        )
        .await
        .unwrap();
        assert!(
            server
                .wait_received_async(b"root\n", Duration::from_secs(5))
                .await
        );
        server.push("login: ");
        let got = HostPort::wait_for(
            &mut st.serial(),
            Resource::new_borrow(rep),
            "log.n:".into(),
            5000,
        )
        .await
        .unwrap();
        assert_eq!(got, "login:");
        let err = HostPort::wait_for(&mut st.serial(), Resource::new_borrow(rep), "[".into(), 10)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "invalid");
        let err = HostPort::wait_for(
            &mut st.serial(),
            Resource::new_borrow(rep),
            "nope".into(),
            10,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), "timeout");
        assert!(err.to_string().contains("nope"), "{err}");

        HostPort::drop(&mut st.serial(), port).await.unwrap();
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
        let err = Host::open(&mut st.serial(), "uart".into())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "denied");
        let err = Host::open(&mut st.serial(), "console".into())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "not-found");
        assert!(err.to_string().contains("serial_host"), "{err}");

        let cx = context(dir.path(), "{}", "{}", &[]);
        let mut st = state(&cx);
        let err = Host::open(&mut st.serial(), "console".into())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "denied");
    }
}
