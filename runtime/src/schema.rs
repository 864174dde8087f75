//! The small schema language connectors use in `connector.toml` to
//! publish the shape of the stage data they read, so `check` can validate
//! a job before it runs:
//!
//! ```toml
//! [stage_data.provision_data]
//! url = "string?"              # optional string
//! use_attachment = "string?"
//! media = "sd|usb?"            # one of the listed words
//! create_user = "bool?"
//! disks = "list?"              # list of anything; also "list<string>"
//! "@one_of" = ["url", "use_attachment"]   # at least one must be present
//! "*" = "any"                  # allow keys not listed
//! ```
//!
//! Types: `string`, `bool`, `integer`, `number`, `list`, `list<T>`,
//! `mapping`, `any`, or `a|b|c` (a string among those). A trailing `?`
//! makes the key optional; without `"*"`, unknown keys are reported.

use serde_json::Value;

/// Problems found in one stage's data, as readable lines.
pub fn validate(
    stage_key: &str,
    schema: &toml::Value,
    data: Option<&Value>,
) -> Result<Vec<String>, String> {
    let table = schema
        .as_table()
        .ok_or_else(|| format!("schema of {stage_key} must be a table"))?;
    let mut problems = Vec::new();
    let empty = serde_json::Map::new();
    let obj = match data {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(other) => {
            problems.push(format!(
                "{stage_key} must be a mapping, found {}",
                crate::config::kind_of(other)
            ));
            return Ok(problems);
        }
    };
    let open = table.contains_key("*");
    for (key, spec) in table {
        if key == "*" {
            continue;
        }
        if key == "@one_of" {
            let names: Vec<&str> = spec
                .as_array()
                .ok_or_else(|| format!("{stage_key}.@one_of must be a list of keys"))?
                .iter()
                .filter_map(toml::Value::as_str)
                .collect();
            if !names
                .iter()
                .any(|n| obj.get(*n).is_some_and(|v| !v.is_null()))
            {
                problems.push(format!("{stage_key} needs one of: {}", names.join(", ")));
            }
            continue;
        }
        let spec = spec
            .as_str()
            .ok_or_else(|| format!("schema type of {stage_key}.{key} must be a string"))?;
        let (ty, optional) = match spec.strip_suffix('?') {
            Some(t) => (t, true),
            None => (spec, false),
        };
        match obj.get(key) {
            None | Some(Value::Null) if optional => {}
            None | Some(Value::Null) => {
                problems.push(format!("{stage_key}.{key} is required ({ty})"))
            }
            Some(v) => {
                if let Some(why) = type_problem(ty, v)? {
                    problems.push(format!("{stage_key}.{key} {why}"));
                }
            }
        }
    }
    if !open {
        for key in obj.keys() {
            if !table.contains_key(key) {
                problems.push(format!(
                    "{stage_key}.{key} is not a key this connector reads"
                ));
            }
        }
    }
    Ok(problems)
}

fn type_problem(ty: &str, v: &Value) -> Result<Option<String>, String> {
    let found = crate::config::kind_of(v);
    let ok = match ty {
        "any" => true,
        "string" => v.is_string(),
        "bool" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "list" => v.is_array(),
        "mapping" => v.is_object(),
        t if t.starts_with("list<") && t.ends_with('>') => {
            let inner = &t[5..t.len() - 1];
            let Some(items) = v.as_array() else {
                return Ok(Some(format!("must be a list, found {found}")));
            };
            for (i, item) in items.iter().enumerate() {
                if let Some(why) = type_problem(inner, item)? {
                    return Ok(Some(format!("[{i}] {why}")));
                }
            }
            true
        }
        t if t.contains('|') => {
            let choices: Vec<&str> = t.split('|').collect();
            return Ok(match v.as_str() {
                Some(s) if choices.contains(&s) => None,
                _ => Some(format!(
                    "must be one of {}, found {}",
                    choices.join(", "),
                    short(v)
                )),
            });
        }
        other => return Err(format!("unknown schema type `{other}`")),
    };
    Ok((!ok).then(|| format!("must be {}, found {found}", article(ty))))
}

fn article(ty: &str) -> String {
    match ty {
        "integer" => "an integer".into(),
        "list" => "a list".into(),
        "mapping" => "a mapping".into(),
        other => format!("a {other}"),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    // Characters, not bytes: a byte cut could split a UTF-8 sequence.
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(text: &str) -> toml::Value {
        toml::from_str::<toml::Table>(text)
            .map(toml::Value::Table)
            .unwrap()
    }

    #[test]
    fn validates_types_choices_and_required_keys() {
        let s = schema(
            "url = \"string?\"\nuse_attachment = \"string?\"\nmedia = \"sd|usb?\"\ncreate_user = \"bool?\"\ntags = \"list<string>?\"\n\"@one_of\" = [\"url\", \"use_attachment\"]\n",
        );
        assert!(
            validate("provision_data", &s, Some(&json!({"url": "http://x"})))
                .unwrap()
                .is_empty()
        );
        let p = validate(
            "provision_data",
            &s,
            Some(&json!({"media": "nvme", "create_user": "yes", "tags": ["a", 1], "extra": 1})),
        )
        .unwrap();
        let all = p.join("\n");
        assert!(all.contains("needs one of: url, use_attachment"), "{all}");
        assert!(all.contains("media must be one of sd, usb"), "{all}");
        assert!(all.contains("create_user must be a bool"), "{all}");
        assert!(all.contains("tags [1] must be a string"), "{all}");
        assert!(all.contains("extra is not a key"), "{all}");
        let open = schema("\"*\" = \"any\"\nskip = \"bool\"\n");
        let p = validate("provision_data", &open, Some(&json!({"zz": 1}))).unwrap();
        assert_eq!(p, vec!["provision_data.skip is required (bool)"]);
        assert!(validate("x", &schema("a = \"wat\"\n"), Some(&json!({"a": 1}))).is_err());
    }

    /// A long non-ASCII value is shortened on a character boundary (a byte
    /// cut panicked; found by the `schema` fuzz target).
    #[test]
    fn long_values_are_shortened_on_char_boundaries() {
        let p = validate(
            "provision_data",
            &schema("media = \"sd|usb\"\n"),
            Some(&json!({"media": "é".repeat(50)})),
        )
        .unwrap();
        assert_eq!(p.len(), 1);
        assert!(
            p[0].ends_with(&format!("\"{}...", "é".repeat(39))),
            "{}",
            p[0]
        );
    }
}
