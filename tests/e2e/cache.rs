//! The compiled-code cache through the CLI: first run compiles, later runs
//! load; corrupt, truncated, forged and foreign entries are misses that get
//! rebuilt; the folder is private; concurrent invocations are safe.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::{RunDir, finish};

fn setup() -> (RunDir, PathBuf) {
    let rd = RunDir::new();
    rd.write("default.yaml", "agent_name: cache-agent\n");
    rd.write(
        "testflinger.json",
        r#"{"job_id":"j-cache","provision_data":{"x":1}}"#,
    );
    let cache = rd.path().join("cache");
    (rd, cache)
}

fn provision(rd: &RunDir, cache: &Path) -> crate::common::Run {
    let mut cmd = rd.command(&[
        "--debug",
        "fake_connector",
        "provision",
        "-c",
        "default.yaml",
        "testflinger.json",
    ]);
    cmd.env("TFDC_CACHE_DIR", cache);
    finish(cmd.output().unwrap())
}

fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn compiles_once_then_loads() {
    let (rd, cache) = setup();
    let first = provision(&rd, &cache);
    assert_eq!(first.code, 0);
    assert!(first.stderr.contains(": compiled"), "{}", first.stderr);
    assert_eq!(entries(&cache).len(), 1);
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the cache folder must be private");
    let second = provision(&rd, &cache);
    assert_eq!(second.code, 0);
    assert!(
        second
            .stderr
            .contains("loaded from the compiled-code cache"),
        "{}",
        second.stderr
    );
}

#[test]
fn damaged_entries_are_rebuilt() {
    let (rd, cache) = setup();
    assert_eq!(provision(&rd, &cache).code, 0);
    let entry = entries(&cache).remove(0);
    let good = std::fs::read(&entry).unwrap();

    // Truncated.
    std::fs::write(&entry, &good[..good.len() / 2]).unwrap();
    let run = provision(&rd, &cache);
    assert_eq!(run.code, 0);
    assert!(run.stderr.contains(": compiled"), "{}", run.stderr);
    assert_eq!(
        std::fs::read(&entry).unwrap(),
        good,
        "the entry was rebuilt"
    );

    // One flipped bit in the middle of the code.
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    std::fs::write(&entry, &flipped).unwrap();
    let run = provision(&rd, &cache);
    assert_eq!(run.code, 0);
    assert!(run.stderr.contains(": compiled"), "{}", run.stderr);
    assert!(run.stdout.contains("provision_data"));

    // Garbage with a valid-looking trailer (e.g. another wasmtime's output).
    let mut foreign = b"\x7fELF not really compiled code".to_vec();
    let crc = crc32(&foreign);
    foreign.extend_from_slice(b"TFDCcw01");
    foreign.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(&entry, &foreign).unwrap();
    let run = provision(&rd, &cache);
    assert_eq!(run.code, 0);
    assert!(run.stderr.contains(": compiled"), "{}", run.stderr);
    let run = provision(&rd, &cache);
    assert!(run.stderr.contains("loaded from the compiled-code cache"));
}

fn crc32(data: &[u8]) -> u32 {
    // Bitwise CRC-32 (IEEE), enough for a test.
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn twenty_concurrent_invocations_across_connectors() {
    let (rd, cache) = setup();
    let kitchen = labsim::fixtures::compat("kitchen_sink_v0_1_0.wasm");
    let mut children = Vec::new();
    for i in 0..20 {
        let dir = rd.path().join(format!("run{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(rd.path().join("default.yaml"), dir.join("default.yaml")).unwrap();
        std::fs::copy(
            rd.path().join("testflinger.json"),
            dir.join("testflinger.json"),
        )
        .unwrap();
        let mut cmd = rd.command(&[]);
        cmd.current_dir(&dir).env("TFDC_CACHE_DIR", &cache);
        if i % 2 == 0 {
            cmd.args([
                "fake_connector",
                "provision",
                "-c",
                "default.yaml",
                "testflinger.json",
            ]);
        } else {
            cmd.args([
                "--connector",
                kitchen.to_str().unwrap(),
                "fake_connector",
                "firmware_update",
                "-c",
                "default.yaml",
                "testflinger.json",
            ]);
        }
        children.push((
            i,
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        ));
    }
    for (i, child) in children {
        let out = child.wait_with_output().unwrap();
        let expected = if i % 2 == 0 { 0 } else { 46 };
        assert_eq!(
            out.status.code(),
            Some(expected),
            "invocation {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if i % 2 == 0 {
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("provision_data"),
                "invocation {i}"
            );
        }
    }
    assert_eq!(entries(&cache).len(), 2, "one entry per component");
}

fn kitchen_firmware(rd: &RunDir, cache: &Path) -> crate::common::Run {
    let kitchen = labsim::fixtures::compat("kitchen_sink_v0_1_0.wasm");
    let mut cmd = rd.command(&[
        "--debug",
        "--connector",
        kitchen.to_str().unwrap(),
        "fake_connector",
        "firmware_update",
        "-c",
        "default.yaml",
        "testflinger.json",
    ]);
    cmd.env("TFDC_CACHE_DIR", cache);
    finish(cmd.output().unwrap())
}

/// Issue 15 item 1 (a): an entry is bound to its component by a keyed
/// MAC over the digest, not by its file name. Another component's valid
/// entry copied over fake_connector's name must be refused and rebuilt,
/// never run with fake_connector's grants.
#[test]
fn another_components_entry_is_refused() {
    let (rd, cache) = setup();
    assert_eq!(provision(&rd, &cache).code, 0);
    let own = entries(&cache).remove(0);
    assert_eq!(kitchen_firmware(&rd, &cache).code, 46);
    let other = entries(&cache)
        .into_iter()
        .find(|p| *p != own)
        .expect("the kitchen sink's entry");
    std::fs::copy(&other, &own).unwrap();
    let run = provision(&rd, &cache);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains(": compiled"), "{}", run.stderr);
    assert!(run.stdout.contains("provision_data"), "{}", run.stdout);
    // A hand-made entry with a recomputed CRC trailer is no better.
    let mut forged = std::fs::read(&own).unwrap();
    forged.truncate(forged.len() - 44);
    let crc = crc32(&forged);
    forged.extend_from_slice(b"TFDCcw01");
    forged.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(&own, &forged).unwrap();
    let run = provision(&rd, &cache);
    assert!(run.stderr.contains(": compiled"), "{}", run.stderr);
}

/// Issue 15 item 1 (c): a folder or entry others can write, an entry
/// reached through a symlink, or a folder owned by someone else is not
/// trusted on a hit.
#[test]
fn exposed_folders_and_symlinked_entries_are_refused() {
    let (rd, cache) = setup();
    assert_eq!(provision(&rd, &cache).code, 0);
    let entry = entries(&cache).remove(0);

    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = provision(&rd, &cache);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains(": compiled"), "{}", run.stderr);
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();

    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
    let run = provision(&rd, &cache);
    assert!(run.stderr.contains(": compiled"), "{}", run.stderr);

    // The entry as a symlink to a good copy elsewhere.
    let aside = rd.path().join("aside.cwasm");
    assert!(
        provision(&rd, &cache)
            .stderr
            .contains("loaded from the compiled-code cache")
    );
    std::fs::rename(&entry, &aside).unwrap();
    std::os::unix::fs::symlink(&aside, &entry).unwrap();
    let run = provision(&rd, &cache);
    assert!(run.stderr.contains(": compiled"), "{}", run.stderr);

    // A folder owned by another user (only checkable as root).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            provision(&rd, &cache)
                .stderr
                .contains("loaded from the compiled-code cache")
        );
        std::os::unix::fs::chown(&cache, Some(65534), Some(65534)).unwrap();
        let run = provision(&rd, &cache);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stderr.contains(": compiled"), "{}", run.stderr);
    }
}
