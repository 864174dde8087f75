//! Operator commands besides running stages: managing the lab file
//! ([`lab`]), looking inside a component ([`inspect`]), checking a
//! connector against a device before any job runs ([`check`]), and the
//! compiled-code cache.

pub mod check;
pub mod inspect;
pub mod lab;

use std::borrow::Cow;
use std::path::Path;

use crate::manifest::{self, Manifest};

/// A failed operator command: the message is printed as is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CommandError(pub String);

impl CommandError {
    pub fn new(msg: impl Into<String>) -> Self {
        CommandError(msg.into())
    }
}

/// A component obtained from a command-line source.
pub struct Fetched {
    pub bytes: Cow<'static, [u8]>,
    pub digest: String,
    pub manifest: Manifest,
    /// How to write the source in the lab file.
    pub source: String,
}

/// Reads a component from `source`: a path, an `http(s)://` URL
/// (downloaded into `store`, hashed while streaming), or `embedded`
/// (the embedded connector serving `provision_type`).
pub async fn fetch(
    source: &str,
    provision_type: &str,
    store: &crate::store::Store,
) -> Result<Fetched, CommandError> {
    let (bytes, digest, source_text): (Cow<'static, [u8]>, String, String) = if source == "embedded"
    {
        let e = crate::connectors::embedded_for(provision_type).ok_or_else(|| {
            CommandError::new(format!("no embedded connector serves {provision_type}"))
        })?;
        (
            Cow::Borrowed(e.bytes),
            e.digest.to_string(),
            "embedded".into(),
        )
    } else if source.starts_with("https://") || source.starts_with("http://") {
        let client = crate::http::build_client(&[]).map_err(CommandError::new)?;
        let digest = store
            .download(&client, source, None)
            .await
            .map_err(|e| CommandError::new(e.to_string()))?;
        let bytes = store
            .read(&digest)
            .map_err(|e| CommandError::new(e.to_string()))?
            .ok_or_else(|| CommandError::new("the download vanished from the store"))?;
        (Cow::Owned(bytes), digest, source.to_string())
    } else {
        let path = Path::new(source.strip_prefix("file:").unwrap_or(source));
        let bytes = std::fs::read(path)
            .map_err(|e| CommandError::new(format!("cannot read {}: {e}", path.display())))?;
        let digest = store
            .add(&bytes)
            .map_err(|e| CommandError::new(e.to_string()))?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        (Cow::Owned(bytes), digest, format!("file:{}", abs.display()))
    };
    let manifest =
        manifest::read(&bytes).map_err(|e| CommandError::new(format!("{source}: {e}")))?;
    Ok(Fetched {
        bytes,
        digest,
        manifest,
        source: source_text,
    })
}

/// Runs `fut` on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("an async runtime")
        .block_on(fut)
}
