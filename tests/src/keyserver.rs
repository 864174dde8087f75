//! A stand-in for Launchpad (`/~<user>/+sshkeys`) and GitHub
//! (`/<user>.keys`) serving SSH public keys as text, one per line, over
//! HTTPS by default. Unknown users get 404; a user can be made to fail
//! with HTTP 500 a number of times first, to exercise retries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::web::{Reply, Request, WebServer};

/// Sample public keys (their private halves were never kept).
pub const ALICE_ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBdRN9kYK2U60WZ484Ru2OW08/CacxZed4nNrs9EVTET alice@laptop";
pub const ALICE_RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDaIppGn5C8r4YPdiLz61+S3xqFIFEQHO0+tkJMAqKAffDN/t3Shy2yj7E4B4sy7xI+4v5oCQw6eXLsbVWGJDsVlrVud5b9SIRnYafkYgOj28UuztfG9kc99PRu4ME1qUd5IcGgQ/Yu4BdAQ7ibQrcDgDKAX7JDpq3eckDqStM4/ku2Q7WL8qf/k6j0JKuYNYO4YghpkV3k3gi0zk2O/HZXi5y+FzmbfOxfJOIsY7fxztPQpEWVSz1VUC35owTDnQ6852v4NDWseUgFntZJl0SBlGWXTH0yZkljotZbtDXwoUtXNO6PPfYwQx0ptXYrUVJQf5H0kZh89b2ISWeOkWNV alice@desk";
pub const BOB_ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBDdu3kOVmSm4C93KWkYW6yCTAhId5DEP4AuM/TBM1z1hrhUWI1RFeP7FI/gklm06XcyqKS7YNY4KIEgEq1SO/wA= bob@github/1";

/// Who has which keys, and who fails first.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// Launchpad user → key list text.
    pub launchpad: HashMap<String, String>,
    /// GitHub user → key list text.
    pub github: HashMap<String, String>,
    /// User (either service) → number of HTTP 500 answers before the real one.
    pub failures: HashMap<String, usize>,
}

impl Keys {
    /// Adds a Launchpad user with the key list `keys`.
    pub fn launchpad(mut self, user: &str, keys: &str) -> Self {
        self.launchpad.insert(user.into(), keys.into());
        self
    }

    /// Adds a GitHub user with the key list `keys`.
    pub fn github(mut self, user: &str, keys: &str) -> Self {
        self.github.insert(user.into(), keys.into());
        self
    }

    /// Makes the first `times` requests for `user` fail with HTTP 500.
    pub fn failing(mut self, user: &str, times: usize) -> Self {
        self.failures.insert(user.into(), times);
        self
    }
}

/// A running key server; stops when dropped.
pub struct KeyServer {
    web: WebServer,
}

impl KeyServer {
    /// Starts an HTTPS key server on 127.0.0.1 (certificate from
    /// [`crate::tls`]).
    pub fn start(keys: Keys) -> anyhow::Result<Self> {
        Ok(KeyServer {
            web: WebServer::start_tls("127.0.0.1", handler(keys))?,
        })
    }

    /// Starts a plain-HTTP key server on 127.0.0.1.
    pub fn start_http(keys: Keys) -> anyhow::Result<Self> {
        Self::start_http_on("127.0.0.1", keys)
    }

    /// Starts an HTTPS key server on the loopback address `ip`.
    pub fn start_on(ip: &str, keys: Keys) -> anyhow::Result<Self> {
        Ok(KeyServer {
            web: WebServer::start_tls(ip, handler(keys))?,
        })
    }

    /// Starts a plain-HTTP key server on the loopback address `ip`.
    pub fn start_http_on(ip: &str, keys: Keys) -> anyhow::Result<Self> {
        Ok(KeyServer {
            web: WebServer::start(ip, handler(keys))?,
        })
    }

    /// URL template for `connector_runtime.launchpad_keys_url`.
    pub fn launchpad_url(&self) -> String {
        format!("{}/~{{user}}/+sshkeys", self.web.url())
    }

    /// URL template for `connector_runtime.github_keys_url`.
    pub fn github_url(&self) -> String {
        format!("{}/{{user}}.keys", self.web.url())
    }

    /// Paths requested so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.web.requests().into_iter().map(|r| r.path).collect()
    }
}

fn handler(keys: Keys) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    let failures = Arc::new(Mutex::new(keys.failures.clone()));
    move |req: &Request| {
        let path = req.path_only();
        let (table, user) = if let Some(user) = path
            .strip_prefix("/~")
            .and_then(|p| p.strip_suffix("/+sshkeys"))
        {
            (&keys.launchpad, user)
        } else if let Some(user) = path.strip_prefix('/').and_then(|p| p.strip_suffix(".keys")) {
            (&keys.github, user)
        } else {
            return Reply::status(404);
        };
        if let Some(left) = failures.lock().unwrap().get_mut(user)
            && *left > 0
        {
            *left -= 1;
            return Reply::status_text(500, "simulated failure");
        }
        match table.get(user) {
            Some(text) => Reply::text(text.clone()),
            None => Reply::status_text(404, "Not Found"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: &str, path: &str) -> String {
        crate::web::raw_get(addr, path)
    }

    #[test]
    fn serves_both_layouts_and_fails_on_request() {
        let server = KeyServer::start_http(
            Keys::default()
                .launchpad("alice", ALICE_ED25519)
                .github("bob", BOB_ECDSA)
                .failing("bob", 1),
        )
        .unwrap();
        let addr = server.web.addr().to_string();
        assert!(get(&addr, "/~alice/+sshkeys").ends_with(ALICE_ED25519));
        assert!(get(&addr, "/bob.keys").starts_with("HTTP/1.1 500"));
        assert!(get(&addr, "/bob.keys").ends_with(BOB_ECDSA));
        assert!(get(&addr, "/~bob/+sshkeys").starts_with("HTTP/1.1 404"));
        assert!(get(&addr, "/nobody.keys").starts_with("HTTP/1.1 404"));
        assert_eq!(server.paths().len(), 5);
        assert!(server.launchpad_url().ends_with("/~{user}/+sshkeys"));
    }

    #[test]
    fn tls_server_presents_the_test_certificate() {
        let server = KeyServer::start(Keys::default()).unwrap();
        assert!(server.github_url().starts_with("https://127.0.0.1:"));
        // A plain-text request to a TLS port gets no HTTP answer.
        let out = get(&server.web.addr().to_string(), "/x.keys");
        assert!(!out.starts_with("HTTP/1.1"), "{out:?}");
    }
}
