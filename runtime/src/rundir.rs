//! The agent's run directory (the working directory of every invocation)
//! and the files the agent reads from it: `device-info.json`,
//! `device-connector-error.json`, attachments and artifacts.
//!
//! Every name a connector supplies is resolved here, and only here, so that
//! no `..`, absolute path or symlink can lead outside the folder it belongs
//! to.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::error::StageError;
use crate::stage::Stage;

/// File name of the device info the agent posts with the results.
pub const DEVICE_INFO: &str = "device-info.json";
/// File name of the failure details the agent reads on a non-zero exit.
pub const ERROR_FILE: &str = "device-connector-error.json";

/// A name that was refused because it would leave its folder.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("file name `{0}` is not allowed: {1}")]
    Refused(String, &'static str),
    #[error("file `{0}` is a symbolic link or goes through one; refusing to follow it")]
    Symlink(String),
    #[error("{0}: {1}")]
    Io(String, io::Error),
}

/// The run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }

    /// The process's working directory (where the agent starts us).
    pub fn current() -> io::Result<Self> {
        Ok(RunDir::new(std::env::current_dir()?))
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a fixed runtime-owned file in the run directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Writes `{"device_info": info}`, replacing the file atomically.
    pub fn write_device_info(&self, info: &Map<String, Value>) -> io::Result<()> {
        let body = serde_json::to_vec(&json!({ "device_info": info }))?;
        write_atomic(&self.file(DEVICE_INFO), &body)
    }

    /// Reads the `device_info` object back (empty if absent or unreadable).
    pub fn read_device_info(&self) -> Map<String, Value> {
        fs::read(self.file(DEVICE_INFO))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("device_info").and_then(Value::as_object).cloned())
            .unwrap_or_default()
    }

    /// Sets one key of `device_info`, keeping the others.
    pub fn set_device_info(&self, key: &str, value: Value) -> io::Result<()> {
        let mut info = self.read_device_info();
        info.insert(key.to_string(), value);
        self.write_device_info(&info)
    }

    /// Records a failed stage in `device-connector-error.json` as
    /// `<stage>_exception_info` (plus `test_exception_info` for runtest, the
    /// key the agent looks up for its test phase). The file stays one JSON
    /// object: existing keys are kept, unlike the reference which appends
    /// objects back to back and breaks the agent's parser.
    pub fn record_error(&self, stage: Stage, err: &StageError) -> io::Result<()> {
        let path = self.file(ERROR_FILE);
        let mut doc = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .unwrap_or_default();
        let info = json!({
            "exception_name": err.name,
            "exception_message": err.message,
            "exception_cause": err.cause,
        });
        doc.insert(format!("{}_exception_info", stage.cli_name()), info.clone());
        if stage == Stage::Runtest {
            doc.insert("test_exception_info".into(), info);
        }
        write_atomic(&path, &serde_json::to_vec(&Value::Object(doc))?)
    }

    /// `attachments/<phase>/`.
    pub fn attachments_dir(&self, phase: &str) -> Result<PathBuf, PathError> {
        if !matches!(phase, "provision" | "firmware_update" | "test") {
            return Err(PathError::Refused(
                phase.to_string(),
                "attachment phases are provision, firmware_update and test",
            ));
        }
        Ok(self.root.join("attachments").join(phase))
    }

    /// Names of the regular files under `attachments/<phase>/` (recursively,
    /// with `/` separators), sorted. Symlinks are skipped.
    pub fn list_attachments(&self, phase: &str) -> Result<Vec<String>, PathError> {
        let dir = self.attachments_dir(phase)?;
        let mut out = Vec::new();
        if check_no_symlink(&self.root, &dir).is_err() {
            return Ok(out);
        }
        walk(&dir, "", &mut out).map_err(|e| PathError::Io(dir.display().to_string(), e))?;
        out.sort();
        Ok(out)
    }

    /// Opens `attachments/<phase>/<name>` for reading, refusing escapes,
    /// symlinks and anything but a regular file.
    pub fn open_attachment(&self, phase: &str, name: &str) -> Result<(File, u64), PathError> {
        let dir = self.attachments_dir(phase)?;
        let path = resolve_below(&self.root, &dir, name)?;
        // O_NONBLOCK: opening a FIFO for reading would otherwise block until
        // a writer appears, stalling the whole stage (its timeout included)
        // on the single-threaded executor. It changes nothing for the
        // regular files that are accepted below.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| map_open_error(name, e))?;
        let meta = file.metadata().map_err(|e| PathError::Io(name.into(), e))?;
        if !meta.is_file() {
            return Err(PathError::Refused(name.into(), "not a regular file"));
        }
        Ok((file, meta.len()))
    }

    /// Reads a whole attachment, refusing files over `max` bytes.
    pub fn read_attachment(&self, phase: &str, name: &str, max: u64) -> Result<Vec<u8>, ReadError> {
        let (file, len) = self.open_attachment(phase, name)?;
        if len > max {
            return Err(ReadError::TooBig { len, max });
        }
        let mut buf = Vec::with_capacity(len as usize);
        file.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| PathError::Io(name.into(), e))?;
        if buf.len() as u64 > max {
            return Err(ReadError::TooBig {
                len: buf.len() as u64,
                max,
            });
        }
        Ok(buf)
    }

    /// Resolves `artifacts/<name>` for writing, creating parent folders.
    pub fn artifact_path(&self, name: &str) -> Result<PathBuf, PathError> {
        let dir = self.root.join("artifacts");
        let path = resolve_below(&self.root, &dir, name)?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| PathError::Io(name.into(), e))?;
            // A symlink planted among the parents would redirect the write.
            check_no_symlink(&self.root, parent)?;
        }
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => return Err(PathError::Symlink(name.into())),
            Ok(m) if m.is_dir() => return Err(PathError::Refused(name.into(), "is a folder")),
            _ => {}
        }
        Ok(path)
    }

    /// Writes `data` to `artifacts/<name>` atomically.
    pub fn write_artifact(&self, name: &str, data: &[u8]) -> Result<(), PathError> {
        let path = self.artifact_path(name)?;
        write_atomic(&path, data).map_err(|e| PathError::Io(name.into(), e))
    }
}

/// Failure to read a bounded file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("file is {len} bytes, over the limit of {max} bytes")]
    TooBig { len: u64, max: u64 },
}

fn map_open_error(name: &str, e: io::Error) -> PathError {
    // O_NOFOLLOW on a symlink fails with ELOOP.
    if e.raw_os_error() == Some(libc::ELOOP) {
        PathError::Symlink(name.into())
    } else {
        PathError::Io(name.into(), e)
    }
}

/// Joins a guest-supplied relative `name` below `dir` (itself below `root`)
/// after checking it lexically and checking that no existing component is
/// a symlink.
pub fn resolve_below(root: &Path, dir: &Path, name: &str) -> Result<PathBuf, PathError> {
    if name.is_empty() {
        return Err(PathError::Refused(name.into(), "empty name"));
    }
    if name.contains('\0') {
        return Err(PathError::Refused(name.into(), "contains a NUL byte"));
    }
    if name.len() > 4096 {
        return Err(PathError::Refused(
            "<long name>".into(),
            "longer than 4096 bytes",
        ));
    }
    let rel = Path::new(name);
    for component in rel.components() {
        match component {
            Component::Normal(_) => {}
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(PathError::Refused(
                    name.into(),
                    "`..` would leave the folder",
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Refused(
                    name.into(),
                    "absolute paths are not allowed",
                ));
            }
        }
    }
    let path = dir.join(rel);
    check_no_symlink(root, &path)?;
    Ok(path)
}

/// Fails if any existing component of `path` below `root` is a symlink.
fn check_no_symlink(root: &Path, path: &Path) -> Result<(), PathError> {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut cur = root.to_path_buf();
    for component in rel.components() {
        cur.push(component);
        match fs::symlink_metadata(&cur) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(PathError::Symlink(rel.display().to_string()));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(PathError::Io(rel.display().to_string(), e)),
        }
    }
    Ok(())
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), &rel, out)?;
        } else if kind.is_file() {
            out.push(rel);
        }
    }
    Ok(())
}

/// Writes `data` to `path` through a temporary file in the same folder and
/// a rename, so readers never see a half-written file. No fsync: these
/// files are read right after the process ends, and an fsync costs more
/// than the whole rest of a warm run; see [`write_durable`] for files that
/// must survive a power cut.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_with(path, data, false)
}

/// Like [`write_atomic`], flushed to disk before the rename (the lab file:
/// operator data).
pub fn write_durable(path: &Path, data: &[u8]) -> io::Result<()> {
    write_with(path, data, true)
}

fn write_with(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    if durable {
        tmp.as_file().sync_data()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rundir() -> (tempfile::TempDir, RunDir) {
        let tmp = tempfile::tempdir().unwrap();
        let rd = RunDir::new(tmp.path());
        (tmp, rd)
    }

    #[test]
    fn error_file_stays_one_object_and_merges() {
        let (_t, rd) = rundir();
        fs::write(rd.file(ERROR_FILE), b"{\"x\":1}{\"y\":2}").unwrap();
        rd.record_error(
            Stage::Provision,
            &StageError::failed("ProvisioningError", "boom"),
        )
        .unwrap();
        rd.record_error(
            Stage::Runtest,
            &StageError::failed("E", "t").with_cause("c"),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&fs::read(rd.file(ERROR_FILE)).unwrap()).unwrap();
        assert_eq!(v["provision_exception_info"]["exception_message"], "boom");
        assert_eq!(v["runtest_exception_info"]["exception_cause"], "c");
        assert_eq!(v["test_exception_info"]["exception_name"], "E");
    }

    #[test]
    fn device_info_keys_merge() {
        let (_t, rd) = rundir();
        let mut m = Map::new();
        m.insert("device_ip".into(), "1.2.3.4".into());
        rd.write_device_info(&m).unwrap();
        rd.set_device_info("extra", json!(5)).unwrap();
        let info = rd.read_device_info();
        assert_eq!(info["device_ip"], "1.2.3.4");
        assert_eq!(info["extra"], 5);
    }

    #[test]
    fn escapes_are_refused() {
        let (t, rd) = rundir();
        let att = t.path().join("attachments/provision");
        fs::create_dir_all(att.join("sub")).unwrap();
        fs::write(att.join("sub/ok.img"), b"img").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", att.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", att.join("dirlink")).unwrap();
        assert_eq!(
            rd.read_attachment("provision", "sub/ok.img", 10).unwrap(),
            b"img"
        );
        assert_eq!(
            rd.list_attachments("provision").unwrap(),
            vec!["sub/ok.img"]
        );
        for bad in ["../x", "/etc/passwd", "sub/../../x", "", "a\0b"] {
            assert!(rd.open_attachment("provision", bad).is_err(), "{bad}");
            assert!(rd.artifact_path(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            rd.open_attachment("provision", "link"),
            Err(PathError::Symlink(_))
        ));
        assert!(matches!(
            rd.open_attachment("provision", "dirlink/passwd"),
            Err(PathError::Symlink(_))
        ));
        assert!(rd.open_attachment("../provision", "x").is_err());
        assert!(matches!(
            rd.read_attachment("provision", "sub/ok.img", 2),
            Err(ReadError::TooBig { .. })
        ));
        // A FIFO is refused at once instead of blocking until a writer
        // opens it.
        let fifo = std::ffi::CString::new(att.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: plain libc call with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let rd2 = rd.clone();
        std::thread::spawn(move || {
            let _ = tx.send(rd2.open_attachment("provision", "fifo").map(|_| ()));
        });
        let result = rx.recv_timeout(std::time::Duration::from_secs(5));
        if result.is_err() {
            // Unblock the reader so the thread ends, then fail.
            let _ = fs::OpenOptions::new().write(true).open(att.join("fifo"));
            panic!("opening a FIFO attachment blocked");
        }
        assert!(matches!(
            result.unwrap(),
            Err(PathError::Refused(_, "not a regular file"))
        ));
        fs::create_dir_all(t.path().join("artifacts")).unwrap();
        std::os::unix::fs::symlink("/tmp", t.path().join("artifacts/out")).unwrap();
        assert!(matches!(
            rd.artifact_path("out/x"),
            Err(PathError::Symlink(_))
        ));
        rd.write_artifact("logs/a.txt", b"hi").unwrap();
        assert_eq!(
            fs::read(t.path().join("artifacts/logs/a.txt")).unwrap(),
            b"hi"
        );
    }
}
