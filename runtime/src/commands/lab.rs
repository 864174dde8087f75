//! `testflinger-device-connectors lab ...`: pin, list, verify, update,
//! roll back and remove connectors in the lab file.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use super::{CommandError, Fetched, fetch};
use crate::capability::{Capability, CapabilitySet};
use crate::lab::{self, LoadedLab, Pin, extra_caps, grants_from, parse_grants};
use crate::manifest;
use crate::store::Store;

fn load_or_new(path: &Path) -> Result<LoadedLab, CommandError> {
    if path.exists() {
        LoadedLab::load(path).map_err(|e| CommandError::new(e.to_string()))
    } else {
        Ok(LoadedLab::new_at(path))
    }
}

fn load_existing(path: &Path) -> Result<LoadedLab, CommandError> {
    LoadedLab::load(path).map_err(|e| CommandError::new(e.to_string()))
}

/// The pin of `provision_type`, or an error saying it is not pinned.
fn pinned(lab: &LoadedLab, provision_type: &str, hint: &str) -> Result<Pin, CommandError> {
    lab.file
        .connectors
        .get(provision_type)
        .cloned()
        .ok_or_else(|| {
            CommandError::new(format!(
                "{provision_type} is not pinned in {}{hint}",
                lab.path.display()
            ))
        })
}

fn check_fetched(f: &Fetched, provision_type: &str) -> Result<(), CommandError> {
    if crate::host::wit::served_line(&f.manifest.wit).is_none() {
        return Err(CommandError::new(format!(
            "{} {} was built against WIT testflinger:connector@{}; this runtime serves testflinger:connector {}",
            f.manifest.name,
            f.manifest.version,
            f.manifest.wit,
            crate::host::wit::served_text()
        )));
    }
    if !f
        .manifest
        .provision_types
        .iter()
        .any(|t| t == provision_type)
    {
        return Err(CommandError::new(format!(
            "{} {} serves {:?}, not {provision_type}",
            f.manifest.name, f.manifest.version, f.manifest.provision_types
        )));
    }
    Ok(())
}

fn pin_from(f: &Fetched, grants: lab::Grants) -> Pin {
    Pin {
        name: f.manifest.name.clone(),
        version: f.manifest.version.clone(),
        source: f.source.clone(),
        sha256: f.digest.clone(),
        wit: f.manifest.wit.clone(),
        grants,
        limits: None,
        previous: None,
    }
}

/// Renders a capability set as `family: [a, b]` lines.
pub fn describe_caps(caps: &CapabilitySet) -> String {
    let mut out = String::new();
    for (cap, names) in caps {
        if !names.is_empty() {
            let _ = writeln!(
                out,
                "    {}: [{}]",
                cap.key(),
                names.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    if out.is_empty() {
        out.push_str("    (none)\n");
    }
    out
}

/// `lab add <type> <source>`.
pub async fn add(
    lab_path: &Path,
    provision_type: &str,
    source: &str,
    no_grants: bool,
) -> Result<String, CommandError> {
    let mut lab = load_or_new(lab_path)?;
    if lab.file.connectors.contains_key(provision_type) {
        return Err(CommandError::new(format!(
            "{provision_type} is already pinned in {} (line {}); use `lab update {provision_type} <source>`",
            lab_path.display(),
            lab.line_of(provision_type)
        )));
    }
    let f = fetch(source, provision_type, &Store::new(lab.store_dir())).await?;
    check_fetched(&f, provision_type)?;
    let declared = f.manifest.declared();
    let grants = if no_grants {
        lab::Grants::new()
    } else {
        grants_from(&declared)
    };
    let mut out = format!(
        "pinned {provision_type} -> {} {} ({})\n  source: {}\n  declares:\n{}",
        f.manifest.name,
        f.manifest.version,
        f.digest,
        f.source,
        describe_caps(&declared)
    );
    if no_grants {
        out.push_str("  grants: nothing (--no-grants); edit `grants:` in the lab file to allow what it needs\n");
    } else {
        out.push_str("  grants: everything it declares (review them in the lab file)\n");
    }
    lab.file
        .connectors
        .insert(provision_type.to_string(), pin_from(&f, grants));
    lab.save().map_err(|e| CommandError::new(e.to_string()))?;
    let _ = writeln!(out, "  written to {}", lab_path.display());
    Ok(out)
}

/// Capability names, one per line of a diff.
pub type CapList = Vec<(Capability, String)>;

/// The capability difference between what `old` declared and what `new`
/// declares, as printable lines.
pub fn caps_diff(old: &CapabilitySet, new: &CapabilitySet) -> (CapList, CapList) {
    (extra_caps(new, old), extra_caps(old, new))
}

/// What the pinned component declares (read back from the store, its
/// source, or the binary), if it can be found.
fn pinned_declared(lab: &LoadedLab, pin: &Pin) -> Option<CapabilitySet> {
    let bytes = if pin.source == "embedded" {
        crate::connectors::embedded_named(&pin.name).map(|e| e.bytes.to_vec())
    } else {
        Store::new(lab.store_dir())
            .read(&pin.sha256)
            .ok()
            .flatten()
            .or_else(|| {
                lab.file_source(&pin.source)
                    .and_then(|p| std::fs::read(p).ok())
            })
    }?;
    manifest::read(&bytes).ok().map(|m| m.declared())
}

fn render_diff(added: &[(Capability, String)], removed: &[(Capability, String)]) -> String {
    let mut out = String::new();
    if added.is_empty() && removed.is_empty() {
        out.push_str("  declared capabilities: unchanged\n");
    }
    for (cap, n) in added {
        let _ = writeln!(
            out,
            "  + {}: {n}   (NEW: the new version asks for this)",
            cap.key()
        );
    }
    for (cap, n) in removed {
        let _ = writeln!(out, "  - {}: {n}   (no longer declared)", cap.key());
    }
    out
}

/// `lab diff <type> <source>`: what would change, without writing.
pub async fn diff(
    lab_path: &Path,
    provision_type: &str,
    source: &str,
) -> Result<String, CommandError> {
    let lab = load_existing(lab_path)?;
    let pin = &pinned(&lab, provision_type, "")?;
    let f = fetch(source, provision_type, &Store::new(lab.store_dir())).await?;
    let old = pinned_declared(&lab, pin).unwrap_or_default();
    let (added, removed) = caps_diff(&old, &f.manifest.declared());
    Ok(format!(
        "{provision_type}: {} {} ({}) -> {} {} ({})\n{}",
        pin.name,
        pin.version,
        pin.sha256,
        f.manifest.name,
        f.manifest.version,
        f.digest,
        render_diff(&added, &removed)
    ))
}

/// `lab update <type> <source>`: re-pins, keeping the old pin for
/// rollback. Capabilities the new version adds are shown and only granted
/// with `grant_new`.
pub async fn update(
    lab_path: &Path,
    provision_type: &str,
    source: &str,
    grant_new: bool,
) -> Result<String, CommandError> {
    let mut lab = load_existing(lab_path)?;
    let old = pinned(&lab, provision_type, "; use `lab add`")?;
    let f = fetch(source, provision_type, &Store::new(lab.store_dir())).await?;
    check_fetched(&f, provision_type)?;
    let new_declared = f.manifest.declared();
    let old_declared = pinned_declared(&lab, &old).unwrap_or_default();
    let (added, removed) = caps_diff(&old_declared, &new_declared);
    let old_grants = parse_grants(&old.grants).map_err(CommandError::new)?;
    // Keep what was granted and is still declared; new asks need consent.
    let mut caps = CapabilitySet::new();
    for (cap, names) in &old_grants.caps {
        let keep: BTreeSet<String> = names
            .iter()
            .filter(|n| new_declared.get(cap).is_some_and(|d| d.contains(*n)))
            .cloned()
            .collect();
        caps.insert(*cap, keep);
    }
    if grant_new {
        for (cap, n) in &added {
            caps.entry(*cap).or_default().insert(n.clone());
        }
    }
    let mut grants = grants_from(&caps);
    if !old_grants.urls.is_empty() {
        grants.insert(
            "urls".into(),
            old.grants.get("urls").cloned().unwrap_or_default(),
        );
    }
    let mut pin = pin_from(&f, grants);
    pin.limits = old.limits.clone();
    let mut previous = old.clone();
    previous.previous = None;
    pin.previous = Some(Box::new(previous));
    let mut out = format!(
        "{provision_type}: {} {} ({}) -> {} {} ({})\n{}",
        old.name,
        old.version,
        old.sha256,
        f.manifest.name,
        f.manifest.version,
        f.digest,
        render_diff(&added, &removed)
    );
    if !added.is_empty() && !grant_new {
        out.push_str(
            "  the new capabilities are NOT granted; re-run with --grant-new to grant them\n",
        );
    }
    lab.file.connectors.insert(provision_type.to_string(), pin);
    lab.save().map_err(|e| CommandError::new(e.to_string()))?;
    let _ = writeln!(
        out,
        "  written to {} (roll back with `lab rollback {provision_type}`)",
        lab_path.display()
    );
    Ok(out)
}

/// `lab rollback <type>`: swaps the pin with the one before the last update.
pub fn rollback(lab_path: &Path, provision_type: &str) -> Result<String, CommandError> {
    let mut lab = load_existing(lab_path)?;
    let current = pinned(&lab, provision_type, "")?;
    let Some(previous) = current.previous.clone() else {
        return Err(CommandError::new(format!(
            "{provision_type} has no previous pin to roll back to"
        )));
    };
    let mut restored = *previous;
    let mut undone = current.clone();
    undone.previous = None;
    restored.previous = Some(Box::new(undone));
    let out = format!(
        "{provision_type}: rolled back {} {} -> {} {} ({})\n",
        current.name, current.version, restored.name, restored.version, restored.sha256
    );
    lab.file
        .connectors
        .insert(provision_type.to_string(), restored);
    lab.save().map_err(|e| CommandError::new(e.to_string()))?;
    Ok(out)
}

/// `lab remove <type>`.
pub fn remove(lab_path: &Path, provision_type: &str) -> Result<String, CommandError> {
    let mut lab = load_existing(lab_path)?;
    let pin = pinned(&lab, provision_type, "")?;
    lab.file.connectors.remove(provision_type);
    lab.save().map_err(|e| CommandError::new(e.to_string()))?;
    Ok(format!(
        "removed {provision_type} ({} {}); {}\n",
        pin.name,
        pin.version,
        if lab.file.allow_embedded && crate::connectors::embedded_for(provision_type).is_some() {
            "the embedded connector serves it again"
        } else {
            "it has no connector now"
        }
    ))
}

/// `lab list`: every provision type and where its connector comes from.
pub fn list(lab: Option<&LoadedLab>) -> String {
    let mut out = format!(
        "{:<18} {:<16} {:<9} {:<19} {}\n",
        "TYPE", "CONNECTOR", "VERSION", "DIGEST", "FROM"
    );
    for t in crate::connectors::known_types(lab) {
        let row = if let Some(pin) = lab.and_then(|l| l.file.connectors.get(&t)) {
            let l = lab.expect("pin comes from a lab");
            let from = if pin.source == "embedded" {
                "embedded (pinned)".to_string()
            } else if Store::new(l.store_dir()).path_for(&pin.sha256).exists() {
                format!("store {}", l.store_dir().display())
            } else {
                pin.source.clone()
            };
            Some((
                pin.name.clone(),
                pin.version.clone(),
                pin.sha256.clone(),
                format!("lab file {}:{}, {from}", l.path.display(), l.line_of(&t)),
            ))
        } else if lab.is_none_or(|l| l.file.allow_embedded)
            && let Some(e) = crate::connectors::embedded_for(&t)
        {
            Some((
                e.name.into(),
                e.version.into(),
                e.digest.into(),
                "embedded".into(),
            ))
        } else {
            None
        };
        match row {
            Some((name, version, digest, from)) => {
                let _ = writeln!(
                    out,
                    "{t:<18} {name:<16} {version:<9} {:<19} {from}",
                    &digest[..digest.len().min(19)]
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{t:<18} {:<16} {:<9} {:<19} not available",
                    "-", "-", "-"
                );
            }
        }
    }
    out
}

/// `lab verify`: re-hashes every pinned component. Returns the report and
/// whether everything matched.
pub fn verify(lab: &LoadedLab) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    let store = Store::new(lab.store_dir());
    for (t, pin) in &lab.file.connectors {
        let line = lab.line_of(t);
        let mut problems = Vec::new();
        if pin.source == "embedded" {
            match crate::connectors::embedded_named(&pin.name) {
                Some(e) if e.digest == pin.sha256 => {}
                Some(e) => problems.push(format!(
                    "expected {}, got {} (embedded {})",
                    pin.sha256, e.digest, pin.name
                )),
                None => problems.push(format!("no connector named {} is embedded", pin.name)),
            }
        } else {
            let mut found = false;
            match store.read(&pin.sha256) {
                Ok(Some(_)) => found = true,
                Ok(None) => {}
                Err(e) => problems.push(e.to_string()),
            }
            if let Some(path) = lab.file_source(&pin.source) {
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        if let Err(e) =
                            crate::store::verify(&bytes, &pin.sha256, &path.display().to_string())
                        {
                            problems.push(e.to_string());
                        }
                    }
                    Err(e) if !found => problems.push(format!("{}: {e}", path.display())),
                    Err(_) => {}
                }
            } else if !found {
                problems.push(format!(
                    "not in the store yet; it will be downloaded from {} on first use",
                    pin.source
                ));
            }
        }
        if problems.is_empty() {
            let _ = writeln!(
                out,
                "ok     {t} ({} {}, {})",
                pin.name, pin.version, pin.sha256
            );
        } else {
            ok = false;
            for p in problems {
                let _ = writeln!(out, "DRIFT  {t} (lab file line {line}): {p}");
            }
        }
    }
    if lab.file.connectors.is_empty() {
        out.push_str("no connectors are pinned\n");
    }
    (out, ok)
}
