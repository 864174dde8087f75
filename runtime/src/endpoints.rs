//! Named HTTP endpoints: fixed addresses a connector reaches with
//! `http.call(<name>, ..)`, each a capability (`http: [<name>]`).
//!
//! Three are built in: [`CONTROL_HOST`] (`http://<control_host>:8000`),
//! [`MAAS`] (`maas_url`, signed with `maas_api_key`) and
//! [`TESTFLINGER_SERVER`] (`testflinger_server`, the server the agent
//! serves, which `multi` books child jobs on). A lab adds its own
//! (a mirror, a preseed repository ...) as a name and a base URL, nothing
//! else, under `endpoints:` in the lab file or `connector_runtime.endpoints`
//! in a device config; the device config's entry wins for its device. A
//! connector never sees the base URL, and the host keeps every request
//! below it ([`crate::capability::endpoint_url`]).

use std::collections::BTreeMap;

/// The control host's REST API.
pub const CONTROL_HOST: &str = "control-host";
/// The MAAS region API.
pub const MAAS: &str = "maas";
/// The Testflinger server (device-config key [`TESTFLINGER_SERVER_KEY`]).
pub const TESTFLINGER_SERVER: &str = "testflinger-server";
/// The device-config key holding the Testflinger server's URL.
pub const TESTFLINGER_SERVER_KEY: &str = "testflinger_server";
/// The endpoints the runtime defines itself.
pub const BUILT_IN: [&str; 3] = [CONTROL_HOST, MAAS, TESTFLINGER_SERVER];
/// The `http` capability name of URLs the job provides: not an endpoint,
/// so no endpoint may take the name.
pub const JOB_URLS: &str = "job-urls";

/// Lab-defined endpoints: name → base URL.
pub type Endpoints = BTreeMap<String, String>;

/// Checks one lab-defined endpoint; the problem, naming what to fix.
pub fn check(name: &str, base: &str) -> Result<(), String> {
    if BUILT_IN.contains(&name) || name == JOB_URLS {
        return Err(format!(
            "`{name}` is reserved ({} are built in, `{JOB_URLS}` names the job's URLs); choose another name",
            BUILT_IN.join(", ")
        ));
    }
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "bad endpoint name `{name}`: names are 1 to 64 letters, digits, `-`, `_` and `.`, as in grants"
        ));
    }
    check_base_url(base).map_err(|problem| {
        format!(
            "endpoint `{name}`: base URL `{}` {problem}; it must look like http://mirror.lab:8080/ubuntu",
            crate::error::redact_url(base)
        )
    })
}

/// Checks every entry of `endpoints`.
pub fn check_all(endpoints: &Endpoints) -> Result<(), String> {
    endpoints
        .iter()
        .try_for_each(|(name, base)| check(name, base))
}

/// Checks that `base` is an absolute http(s) URL with a host and without
/// query or fragment; the problem otherwise.
pub fn check_base_url(base: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(base).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("has scheme `{}`, not http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(())
}

/// The endpoints of one invocation: the lab file's, with the device
/// config's on top. Base URLs lose a trailing `/` (paths start with one).
pub fn merged(lab: &Endpoints, device: &Endpoints) -> Endpoints {
    lab.iter()
        .chain(device)
        .map(|(name, base)| (name.clone(), base.trim().trim_end_matches('/').to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_base_urls_are_checked() {
        assert!(check("mirror", "http://mirror.lab:8080/ubuntu").is_ok());
        assert!(check("preseed.v2", "https://10.0.0.1/").is_ok());
        for reserved in ["control-host", "maas", "testflinger-server", "job-urls"] {
            let err = check(reserved, "http://x/").unwrap_err();
            assert!(err.contains("reserved"), "{err}");
        }
        assert!(
            check("a b", "http://x/")
                .unwrap_err()
                .contains("bad endpoint name")
        );
        assert!(check("", "http://x/").is_err());
        for (base, needle) in [
            ("mirror.lab/ubuntu", "is not a URL"),
            ("ftp://mirror.lab/", "scheme `ftp`"),
            ("http://mirror.lab/?x=1", "query or fragment"),
            ("http://mirror.lab/#top", "query or fragment"),
        ] {
            let err = check("mirror", base).unwrap_err();
            assert!(
                err.contains(needle) && err.contains("endpoint `mirror`"),
                "{err}"
            );
        }
        // A credential in a base URL stays out of the message.
        let err = check("m", "ftp://user:SECRET@h/").unwrap_err();
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn the_device_config_wins() {
        let lab = Endpoints::from([
            ("mirror".into(), "http://lab-wide/".into()),
            ("seed".into(), "http://seed".into()),
        ]);
        let device = Endpoints::from([("mirror".into(), "http://this-device/x/".into())]);
        let m = merged(&lab, &device);
        assert_eq!(m["mirror"], "http://this-device/x");
        assert_eq!(m["seed"], "http://seed");
    }
}
