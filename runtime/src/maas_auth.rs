//! Credentials of the MAAS region API and the OAuth 1.0a `PLAINTEXT`
//! signature MAAS expects on every API request.
//!
//! The lab puts the API key in the device config (`maas_api_key`, in the
//! `<consumer_key>:<token_key>:<token_secret>` form `maas apikey` prints);
//! the connector never sees it (the guest view drops keys containing
//! `api_key`). The host adds the `Authorization` header to each request
//! sent to the `maas` endpoint.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Device-config key holding the API key.
pub const API_KEY_KEY: &str = "maas_api_key";
/// Device-config key holding the API base URL (`http://<maas>:5240/MAAS`).
pub const URL_KEY: &str = "maas_url";

/// Why the API key cannot be used. Messages never contain the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "device config key `maas_api_key` must be the MAAS API key in the form `<consumer_key>:<token_key>:<token_secret>` (what `maas apikey --username <user>` prints): {problem}"
)]
pub struct CredentialsError {
    /// What is wrong, without quoting the key.
    pub problem: String,
}

/// A MAAS API key, split into its three parts.
#[derive(Clone, PartialEq, Eq)]
pub struct MaasCredentials {
    consumer_key: String,
    token_key: String,
    token_secret: String,
}

impl fmt::Debug for MaasCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaasCredentials")
            .field("consumer_key", &self.consumer_key)
            .field("token_key", &self.token_key)
            .field("token_secret", &"<redacted>")
            .finish()
    }
}

impl MaasCredentials {
    /// Parses `consumer_key:token_key:token_secret` (surrounding
    /// whitespace ignored). Each part must be non-empty and made of the
    /// characters OAuth leaves unescaped (`A-Z a-z 0-9 - . _ ~`), which is
    /// what MAAS generates; anything else would need escaping in the header
    /// and is almost certainly a copy-paste mistake.
    pub fn parse(text: &str) -> Result<Self, CredentialsError> {
        let parts: Vec<&str> = text.trim().split(':').collect();
        if parts.len() != 3 {
            return Err(CredentialsError {
                problem: format!(
                    "it has {} part(s) separated by `:`, expected 3",
                    parts.len()
                ),
            });
        }
        let names = ["consumer key", "token key", "token secret"];
        for (part, name) in parts.iter().zip(names) {
            if part.is_empty() {
                return Err(CredentialsError {
                    problem: format!("the {name} is empty"),
                });
            }
            if let Some(bad) = part.chars().find(|c| !is_unreserved(*c)) {
                return Err(CredentialsError {
                    problem: format!(
                        "the {name} contains the character {:?}, which MAAS keys never contain",
                        if bad.is_ascii_graphic() { bad } else { '?' }
                    ),
                });
            }
        }
        Ok(MaasCredentials {
            consumer_key: parts[0].to_string(),
            token_key: parts[1].to_string(),
            token_secret: parts[2].to_string(),
        })
    }

    /// The `Authorization` header value for one request, with `nonce` and
    /// `timestamp` (seconds since the epoch). MAAS keys have no consumer
    /// secret, so the PLAINTEXT signature is `&<token_secret>`.
    pub fn authorization(&self, nonce: &str, timestamp: u64) -> String {
        format!(
            "OAuth oauth_version=\"1.0\", oauth_signature_method=\"PLAINTEXT\", oauth_consumer_key=\"{}\", oauth_token=\"{}\", oauth_signature=\"&{}\", oauth_nonce=\"{nonce}\", oauth_timestamp=\"{timestamp}\"",
            self.consumer_key, self.token_key, self.token_secret
        )
    }

    /// The `Authorization` header value for a request sent now, with a
    /// fresh random nonce (MAAS refuses a nonce it has seen before).
    pub fn sign_now(&self) -> String {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let nonce = format!("{:032x}", rand::random::<u128>());
        self.authorization(&nonce, timestamp)
    }
}

fn is_unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_parts() {
        let c = MaasCredentials::parse("  ck1:tk2:ts3\n").unwrap();
        assert_eq!(
            c.authorization("n0nce", 1700000000),
            "OAuth oauth_version=\"1.0\", oauth_signature_method=\"PLAINTEXT\", oauth_consumer_key=\"ck1\", oauth_token=\"tk2\", oauth_signature=\"&ts3\", oauth_nonce=\"n0nce\", oauth_timestamp=\"1700000000\""
        );
    }

    #[test]
    fn malformed_keys_are_explained_without_quoting_them() {
        for (text, why) in [
            ("onlyone", "1 part"),
            ("a:b", "2 part"),
            ("a:b:c:d", "4 part"),
            ("a::c", "token key is empty"),
            (":b:c", "consumer key is empty"),
            ("a:b:", "token secret is empty"),
            ("a:b:s\"cret", "token secret contains"),
            ("a b:c:d", "consumer key contains"),
        ] {
            let err = MaasCredentials::parse(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains("maas_api_key"), "{err}");
            assert!(!err.contains(text), "the key leaked into {err}");
        }
    }

    #[test]
    fn every_signature_has_a_fresh_nonce_and_the_current_time() {
        let c = MaasCredentials::parse("ck:tk:SECRETVALUE").unwrap();
        let field = |header: &str, name: &str| -> String {
            let start = header.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            let len = header[start..].find('"').unwrap();
            header[start..start + len].to_string()
        };
        let a = c.sign_now();
        let b = c.sign_now();
        assert_ne!(field(&a, "oauth_nonce"), field(&b, "oauth_nonce"));
        assert_eq!(field(&a, "oauth_nonce").len(), 32);
        assert_eq!(field(&a, "oauth_signature"), "&SECRETVALUE");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let ts: u64 = field(&a, "oauth_timestamp").parse().unwrap();
        assert!(ts <= now && now - ts < 5, "{ts} vs {now}");
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let c = MaasCredentials::parse("ck:tk:SECRETVALUE").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("SECRETVALUE"), "{shown}");
        assert!(shown.contains("ck"), "{shown}");
    }
}
