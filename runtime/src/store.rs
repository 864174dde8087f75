//! The content-addressed component store: `<store>/sha256/<hex>`.
//!
//! Files are written once, atomically, and never overwritten: a file's name
//! is the digest of its bytes. Downloads are hashed while they stream into
//! a temporary file and only land in the store when the digest matches.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};

/// Why the store could not provide a component.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "expected {expected}, got {got}: {what} does not have the pinned digest; re-pin it with `testflinger-device-connectors lab update` if the change is intended"
    )]
    Mismatch {
        expected: String,
        got: String,
        what: String,
    },
    #[error("cannot download {url}: {message}")]
    Download { url: String, message: String },
    #[error("store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A store folder.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    /// Where the component with `digest` lives.
    pub fn path_for(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root.join("sha256").join(hex)
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.root.clone(),
            source,
        }
    }

    /// Reads the component with `digest`, verifying it. `Ok(None)` if absent.
    pub fn read(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path_for(digest);
        match std::fs::read(&path) {
            Ok(bytes) => {
                verify(&bytes, digest, &path.display().to_string())?;
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Adds `bytes`; returns their digest. An existing file with that
    /// name is left alone.
    pub fn add(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let digest = crate::engine::digest(bytes);
        let dest = self.path_for(&digest);
        if dest.exists() {
            return Ok(digest);
        }
        let dir = dest.parent().expect("store paths have a parent");
        std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| self.io(e))?;
        tmp.write_all(bytes).map_err(|e| self.io(e))?;
        persist_noclobber(tmp, &dest).map_err(|e| self.io(e))?;
        Ok(digest)
    }

    /// Downloads `url` into the store, hashing while streaming, and
    /// returns its digest. With `expected`, a different digest is refused
    /// and nothing is stored.
    pub async fn download(
        &self,
        client: &reqwest::Client,
        url: &str,
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let derr = |message: String| StoreError::Download {
            url: url.to_string(),
            message,
        };
        let tmp_dir = self.root.join("tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(|e| self.io(e))?;
        let response = client
            .get(url)
            .send()
            .await
            .map_err(|e| derr(crate::error::chain(&e)))?;
        if !response.status().is_success() {
            return Err(derr(format!("HTTP status {}", response.status())));
        }
        let announced = response.content_length();
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(|e| self.io(e))?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| derr(crate::error::chain(&e)))?;
            hasher.update(&chunk);
            len += chunk.len() as u64;
            tmp.write_all(&chunk).map_err(|e| self.io(e))?;
        }
        if announced.is_some_and(|a| a != len) {
            return Err(derr(format!(
                "truncated: got {len} of {} bytes",
                announced.unwrap_or(0)
            )));
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if let Some(expected) = expected
            && expected != got
        {
            return Err(StoreError::Mismatch {
                expected: expected.to_string(),
                got,
                what: url.to_string(),
            });
        }
        let dest = self.path_for(&got);
        std::fs::create_dir_all(dest.parent().unwrap()).map_err(|e| self.io(e))?;
        if !dest.exists() {
            persist_noclobber(tmp, &dest).map_err(|e| self.io(e))?;
        }
        Ok(got)
    }

    /// Every digest in the store.
    pub fn digests(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("sha256");
        let mut out = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(rd) => {
                for e in rd {
                    let e = e.map_err(|e| self.io(e))?;
                    out.push(format!("sha256:{}", e.file_name().to_string_lossy()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io(e)),
        }
        out.sort();
        Ok(out)
    }
}

/// Fails unless `bytes` hash to `expected`.
pub fn verify(bytes: &[u8], expected: &str, what: &str) -> Result<(), StoreError> {
    let got = crate::engine::digest(bytes);
    if got != expected {
        return Err(StoreError::Mismatch {
            expected: expected.to_string(),
            got,
            what: what.to_string(),
        });
    }
    Ok(())
}

fn persist_noclobber(tmp: tempfile::NamedTempFile, dest: &Path) -> std::io::Result<()> {
    tmp.as_file().sync_data()?;
    match tmp.persist_noclobber(dest) {
        Ok(_) => Ok(()),
        // Someone stored the same bytes meanwhile: same name, same content.
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_read_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let d = store.add(b"component").unwrap();
        assert_eq!(store.read(&d).unwrap().unwrap(), b"component");
        assert_eq!(store.add(b"component").unwrap(), d);
        assert_eq!(store.digests().unwrap(), vec![d.clone()]);
        // A file whose content no longer matches its name is refused.
        std::fs::write(store.path_for(&d), b"tampered").unwrap();
        let err = store.read(&d).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("expected {d}, got sha256:")),
            "{err}"
        );
        assert!(
            store
                .read(&crate::engine::digest(b"other"))
                .unwrap()
                .is_none()
        );
    }
}
