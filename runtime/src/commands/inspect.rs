//! `testflinger-device-connectors inspect <component.wasm | type>`: what a
//! component is, what it declares, imports and exports.

use std::fmt::Write as _;

use super::CommandError;
use crate::commands::lab::describe_caps;
use crate::manifest;

/// How this runtime serves a component built against WIT `claimed`: the
/// version its `phases` export really has, and whether it is the latest
/// line or served through compatibility bindings.
fn wit_status(claimed: &str, bytes: &[u8]) -> String {
    use crate::host::wit;
    let real = interface_names(bytes).ok().and_then(|(_, exports)| {
        exports
            .iter()
            .find(|e| e.starts_with("testflinger:connector/phases"))
            .and_then(|e| wit::interface_version(e).map(str::to_string))
    });
    let version = real.clone().unwrap_or_else(|| claimed.to_string());
    let mut text = match wit::served_line(&version) {
        Some(line) if line == wit::LATEST => "the latest version this runtime serves".to_string(),
        Some(line) => format!(
            "served through the {line} compatibility bindings; the latest is {}",
            wit::LATEST
        ),
        None => format!(
            "NOT served by this runtime, which serves {}",
            wit::served_text()
        ),
    };
    match real {
        Some(r) if r != claimed => {
            text.push_str(&format!("; but its phases export is @{r}"));
        }
        None => text.push_str("; it exports no phases interface"),
        _ => {}
    }
    text
}

/// Renders the inspection report of `bytes`.
pub fn report(bytes: &[u8], origin: &str) -> Result<String, CommandError> {
    let digest = crate::engine::digest(bytes);
    let manifest =
        manifest::read(bytes).map_err(|e| CommandError::new(format!("{origin}: {e}")))?;
    let mut out = String::new();
    let _ = writeln!(out, "component:        {origin}");
    let _ = writeln!(out, "digest:           {digest}");
    let _ = writeln!(out, "size:             {} bytes", bytes.len());
    let _ = writeln!(
        out,
        "connector:        {} {}",
        manifest.name, manifest.version
    );
    if let Some(d) = &manifest.description {
        let _ = writeln!(out, "description:      {d}");
    }
    let _ = writeln!(
        out,
        "provision types:  {}",
        manifest.provision_types.join(", ")
    );
    let _ = writeln!(
        out,
        "WIT:              testflinger:connector@{} ({})",
        manifest.wit,
        wit_status(&manifest.wit, bytes)
    );
    if let Some(sdk) = &manifest.sdk {
        let _ = writeln!(out, "SDK:              {sdk}");
    }
    let _ = write!(out, "declares:\n{}", describe_caps(&manifest.declared()));
    if !manifest.optional_config.is_empty() {
        let _ = writeln!(
            out,
            "optional config:  {}",
            manifest.optional_config.join(", ")
        );
    }
    if !manifest.stage_data.is_empty() {
        let _ = writeln!(
            out,
            "stage data:       {}",
            manifest
                .stage_data
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (imports, exports) = interface_names(bytes)?;
    let _ = writeln!(out, "imports:");
    for i in imports {
        let _ = writeln!(out, "    {i}");
    }
    let _ = writeln!(out, "exports:");
    for e in exports {
        let _ = writeln!(out, "    {e}");
    }
    Ok(out)
}

/// Names of the component's top-level imports and exports.
pub fn interface_names(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), CommandError> {
    manifest::interface_names(bytes).map_err(|e| CommandError::new(e.to_string()))
}
