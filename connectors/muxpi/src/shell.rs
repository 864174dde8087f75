//! Shell words: quoting paths into control-host commands, and reading the
//! mux CLI out of `control_switch_local_cmd`.

/// Quotes `word` for a POSIX shell the way Python's `shlex.quote` does:
/// words made only of letters, digits and `@%+=:,./_-` stay bare (so
/// commands read like the reference's), anything else is single-quoted.
pub fn quote(word: &str) -> String {
    if word.is_empty() {
        return "''".to_string();
    }
    let safe = word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r#"'"'"'"#))
    }
}

/// The words that name a mux in a mux CLI command line.
const MUX_WORDS: [&str; 2] = ["sdwire", "typecmux"];

/// Splits a configured command into shell words, or says why it cannot.
pub fn words(key: &str, command: &str) -> Result<Vec<String>, String> {
    shlex::split(command).ok_or_else(|| {
        format!("{key} `{command}` cannot be split into shell words (unbalanced quotes?)")
    })
}

/// Whether `control_switch_local_cmd` drives a mux CLI: one of its words
/// is `sdwire` or `typecmux`.
pub fn uses_mux_cli(local_cmd: &str) -> Result<bool, String> {
    Ok(words("control_switch_local_cmd", local_cmd)?
        .iter()
        .any(|w| MUX_WORDS.contains(&w.as_str())))
}

/// The mux CLI prefix of `control_switch_local_cmd`: every word before the
/// first `sdwire`/`typecmux` that has at least one word before it, each
/// shell-quoted, joined by spaces (`sudo muxctl sdwire set TS` gives
/// `sudo muxctl`). `None` when there is no such word.
pub fn mux_prefix(local_cmd: &str) -> Result<Option<String>, String> {
    let words = words("control_switch_local_cmd", local_cmd)?;
    Ok(words
        .iter()
        .enumerate()
        .find(|(i, w)| *i > 0 && MUX_WORDS.contains(&w.as_str()))
        .map(|(i, _)| {
            words[..i]
                .iter()
                .map(|w| quote(w))
                .collect::<Vec<_>>()
                .join(" ")
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_python_shlex() {
        assert_eq!(quote("/mnt/agent-1/writable"), "/mnt/agent-1/writable");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("my disk"), "'my disk'");
        assert_eq!(quote("it's"), r#"'it'"'"'s'"#);
        assert_eq!(quote("a*b"), "'a*b'");
        assert_eq!(quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn finds_the_mux_cli_prefix() {
        assert_eq!(
            mux_prefix("sudo muxctl sdwire set TS").unwrap().as_deref(),
            Some("sudo muxctl")
        );
        assert_eq!(
            mux_prefix("sudo -n muxctl typecmux set TS")
                .unwrap()
                .as_deref(),
            Some("sudo -n muxctl")
        );
        // Quoted words are re-quoted.
        assert_eq!(
            mux_prefix("'/opt/mux tools/muxctl' sdwire set TS")
                .unwrap()
                .as_deref(),
            Some("'/opt/mux tools/muxctl'")
        );
        // A mux word in first position does not count; a later one does.
        assert_eq!(mux_prefix("sdwire set TS").unwrap(), None);
        assert_eq!(
            mux_prefix("sdwire muxctl typecmux set TS")
                .unwrap()
                .as_deref(),
            Some("sdwire muxctl")
        );
        assert_eq!(mux_prefix("stm -ts").unwrap(), None);
        assert!(mux_prefix("muxctl 'sdwire").is_err());
    }

    #[test]
    fn detects_mux_cli_mode() {
        assert!(uses_mux_cli("sudo muxctl sdwire set TS").unwrap());
        assert!(uses_mux_cli("sdwire set TS").unwrap());
        assert!(!uses_mux_cli("stm -ts").unwrap());
        assert!(!uses_mux_cli("").unwrap());
        // A word that only contains the mux name is not the mux word.
        assert!(!uses_mux_cli("sdwire-ctl -ts").unwrap());
    }
}
