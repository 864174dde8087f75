//! The deprecated templating of `test_cmds` (reference §3.4 step 6).
//!
//! When a command contains `{{`, the reference runs it through Python's
//! `str.format` with the device config's top-level keys as arguments, after
//! a first pass that escapes every field whose base name is not a config key
//! (so `{unknown}` survives verbatim), turns `{}` into a literal `{}`, and
//! lets `{{x}}` collapse to `{x}`. This module reproduces both passes over
//! the config's JSON values, including conversions (`!r`, `!s`, `!a`),
//! index chains (`{env[DEVICE_IP]}`, `{list[0]}`) and format specs for
//! strings and integers, with the same errors Python raises (their class
//! name becomes the `exception_name`).
//!
//! Deliberate differences, all on inputs nobody templates in practice:
//! attribute access (`{device_ip.upper}`) is an error instead of printing a
//! bound method's repr, and a non-empty format spec on a float value (or a
//! float presentation type like `:e` on an integer) is refused.

use serde_json::{Map, Number, Value};

/// Why a templated command could not be expanded. `kind` is the name of
/// the Python exception the reference raises in the same situation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// `ValueError`, `KeyError`, `IndexError`, `TypeError` or
    /// `AttributeError`.
    pub kind: &'static str,
    /// Python's message for the error.
    pub message: String,
}

fn err(kind: &'static str, message: impl Into<String>) -> TemplateError {
    TemplateError {
        kind,
        message: message.into(),
    }
}

fn value_error(message: impl Into<String>) -> TemplateError {
    err("ValueError", message)
}

/// Whether `command` triggers the deprecated templating.
pub fn is_templated(command: &str) -> bool {
    command.contains("{{")
}

/// Expands `text` the way the reference's `_process_cmds_template_vars`
/// does, with `keys` (the device config's top-level keys) as arguments.
pub fn expand(text: &str, keys: &Map<String, Value>) -> Result<String, TemplateError> {
    // Pass 1: keep fields naming a config key, escape everything else.
    let mut escaped = String::with_capacity(text.len() + 16);
    for piece in parse(text)? {
        escaped.push_str(&piece.literal.replace('{', "{{").replace('}', "}}"));
        let Some(field) = piece.field else { continue };
        if field.name.is_empty() {
            // `{}`, `{!r}`, `{:>5}` all become a literal `{}`.
            escaped.push_str("{{}}");
            continue;
        }
        let mut inner = field.name.clone();
        if let Some(c) = field.conversion {
            inner.push('!');
            inner.push(c);
        }
        if !field.spec.is_empty() {
            inner.push(':');
            inner.push_str(&field.spec);
        }
        let base = field.name.split('[').next().unwrap_or("");
        let base = base.split('.').next().unwrap_or("");
        if keys.contains_key(base) {
            escaped.push('{');
            escaped.push_str(&inner);
            escaped.push('}');
        } else {
            escaped.push_str("{{");
            escaped.push_str(&inner);
            escaped.push_str("}}");
        }
    }
    // Pass 2: Python's `string.Formatter.vformat` with no positional
    // arguments and a recursion depth of 2.
    vformat(&escaped, keys, 2)
}

/// One piece of a format string: literal text, then maybe a field.
#[derive(Debug, PartialEq)]
struct Piece {
    literal: String,
    field: Option<Field>,
}

#[derive(Debug, PartialEq)]
struct Field {
    name: String,
    conversion: Option<char>,
    spec: String,
}

/// Splits a format string like CPython's `MarkupIterator`.
fn parse(text: &str) -> Result<Vec<Piece>, TemplateError> {
    let s: Vec<char> = text.chars().collect();
    let n = s.len();
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < n {
        let start = pos;
        let mut last = '\0';
        let mut markup = false;
        while pos < n {
            last = s[pos];
            pos += 1;
            if last == '{' || last == '}' {
                markup = true;
                break;
            }
        }
        let at_end = pos >= n;
        let mut len = pos - start;
        if last == '}' && (at_end || s[pos] != '}') {
            return Err(value_error("Single '}' encountered in format string"));
        }
        if at_end && last == '{' {
            return Err(value_error("Single '{' encountered in format string"));
        }
        if !at_end {
            if s[pos] == last {
                // A doubled brace: one of them is literal text.
                pos += 1;
                markup = false;
            } else {
                len -= 1;
            }
        }
        let literal: String = s[start..start + len].iter().collect();
        if !markup {
            out.push(Piece {
                literal,
                field: None,
            });
            continue;
        }
        let field = parse_field(&s, &mut pos)?;
        out.push(Piece {
            literal,
            field: Some(field),
        });
    }
    Ok(out)
}

/// Parses `name[!c][:spec]}` after an opening brace (CPython's
/// `parse_field`).
fn parse_field(s: &[char], pos: &mut usize) -> Result<Field, TemplateError> {
    let n = s.len();
    let name_start = *pos;
    let mut c = '\0';
    let mut stopped = false;
    while *pos < n {
        c = s[*pos];
        *pos += 1;
        match c {
            '{' => return Err(value_error("unexpected '{' in field name")),
            '[' => {
                while *pos < n && s[*pos] != ']' {
                    *pos += 1;
                }
            }
            '}' | ':' | '!' => {
                stopped = true;
                break;
            }
            _ => {}
        }
    }
    let name_end = if stopped { *pos - 1 } else { *pos };
    let name: String = s[name_start..name_end].iter().collect();
    if !stopped {
        return Err(value_error("expected '}' before end of string"));
    }
    let mut conversion = None;
    if c == '}' {
        return Ok(Field {
            name,
            conversion,
            spec: String::new(),
        });
    }
    if c == '!' {
        if *pos >= n {
            return Err(value_error(
                "end of string while looking for conversion specifier",
            ));
        }
        conversion = Some(s[*pos]);
        *pos += 1;
        if *pos < n {
            let next = s[*pos];
            *pos += 1;
            if next == '}' {
                return Ok(Field {
                    name,
                    conversion,
                    spec: String::new(),
                });
            }
            if next != ':' {
                return Err(value_error("expected ':' after conversion specifier"));
            }
        }
    }
    let spec_start = *pos;
    let mut depth = 1;
    while *pos < n {
        let ch = s[*pos];
        *pos += 1;
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(Field {
                        name,
                        conversion,
                        spec: s[spec_start..*pos - 1].iter().collect(),
                    });
                }
            }
            _ => {}
        }
    }
    Err(value_error("unmatched '{' in format spec"))
}

fn vformat(text: &str, keys: &Map<String, Value>, depth: i32) -> Result<String, TemplateError> {
    if depth < 0 {
        return Err(value_error("Max string recursion exceeded"));
    }
    let mut out = String::with_capacity(text.len());
    for piece in parse(text)? {
        out.push_str(&piece.literal);
        let Some(field) = piece.field else { continue };
        if field.name.is_empty() {
            // Automatic numbering, and there are no positional arguments.
            return Err(err(
                "IndexError",
                "Replacement index 0 out of range for positional args tuple",
            ));
        }
        let value = lookup(&field.name, keys)?;
        let value = match field.conversion {
            None => value,
            Some('s') => Value::String(py_str(&value)),
            Some('r') => Value::String(py_repr(&value)),
            Some('a') => Value::String(py_ascii(&py_repr(&value))),
            Some(other) => {
                return Err(value_error(format!("Unknown conversion specifier {other}")));
            }
        };
        let spec = vformat(&field.spec, keys, depth - 1)?;
        out.push_str(&format_value(&value, &spec)?);
    }
    Ok(out)
}

/// Resolves `base[index].attr...` against the config keys (Python's
/// `Formatter.get_field`).
fn lookup(name: &str, keys: &Map<String, Value>) -> Result<Value, TemplateError> {
    let split = name.find(['.', '[']).unwrap_or(name.len());
    let (first, mut rest) = name.split_at(split);
    if !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(
            "IndexError",
            format!("Replacement index {first} out of range for positional args tuple"),
        ));
    }
    let mut value = keys
        .get(first)
        .cloned()
        .ok_or_else(|| err("KeyError", format!("'{first}'")))?;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let attr = &after[..end];
            if attr.is_empty() {
                return Err(value_error("Empty attribute in format string"));
            }
            return Err(err(
                "AttributeError",
                format!(
                    "'{}' object has no attribute '{attr}' (attribute access is not supported in test_cmds templates)",
                    py_type(&value)
                ),
            ));
        } else if let Some(after) = rest.strip_prefix('[') {
            let Some(end) = after.find(']') else {
                return Err(value_error("Missing ']' in format string"));
            };
            let index = &after[..end];
            if index.is_empty() {
                return Err(value_error("Empty attribute in format string"));
            }
            rest = &after[end + 1..];
            // What follows `]` is checked on the next round, after the
            // lookup, as Python does.
            value = index_value(&value, index)?;
        } else {
            return Err(value_error(
                "Only '.' or '[' may follow ']' in format field specifier",
            ));
        }
    }
    Ok(value)
}

fn index_value(value: &Value, index: &str) -> Result<Value, TemplateError> {
    let numeric: Option<usize> = if index.bytes().all(|b| b.is_ascii_digit()) {
        // Python turns an all-digit index into an int; huge ones are out
        // of range anyway.
        Some(index.parse().unwrap_or(usize::MAX))
    } else {
        None
    };
    match (value, numeric) {
        (Value::Object(map), None) => map
            .get(index)
            .cloned()
            .ok_or_else(|| err("KeyError", format!("'{index}'"))),
        (Value::Object(_), Some(_)) => Err(err("KeyError", index.to_string())),
        (Value::Array(items), Some(i)) => items
            .get(i)
            .cloned()
            .ok_or_else(|| err("IndexError", "list index out of range")),
        (Value::Array(_), None) => Err(err(
            "TypeError",
            "list indices must be integers or slices, not str",
        )),
        (Value::String(s), Some(i)) => s
            .chars()
            .nth(i)
            .map(|c| Value::String(c.to_string()))
            .ok_or_else(|| err("IndexError", "string index out of range")),
        (Value::String(_), None) => Err(err(
            "TypeError",
            "string indices must be integers, not 'str'",
        )),
        (other, _) => Err(err(
            "TypeError",
            format!("'{}' object is not subscriptable", py_type(other)),
        )),
    }
}

/// Python's type name of a JSON value.
fn py_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// Python's `str()` of a JSON value.
pub fn py_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python's `repr()` of a JSON value.
pub fn py_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => py_number(n),
        Value::String(s) => py_repr_str(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(py_repr).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", py_repr_str(k), py_repr(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

fn py_number(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        py_float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Python's `repr()` of a float: the shortest round-trip digits, in
/// positional notation when the exponent is in [-4, 16), else scientific.
pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    // `{:e}` gives the shortest round-trip digits, e.g. `-1.25e-10`.
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        let text = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{text}")
    } else {
        let (first, more) = digits.split_at(1);
        let mantissa = if more.is_empty() {
            first.to_string()
        } else {
            format!("{first}.{more}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs())
    }
}

/// Whether Python's `str.isprintable()` would say no (close
/// approximation: controls, separators other than space, format chars).
fn non_printable(c: char) -> bool {
    c.is_control()
        || (c.is_whitespace() && c != ' ')
        || matches!(c, '\u{00ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}')
}

/// Python's `repr()` of a string.
pub fn py_repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if non_printable(c) => out.push_str(&escape_code(c)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn escape_code(c: char) -> String {
    let code = c as u32;
    if code <= 0xff {
        format!("\\x{code:02x}")
    } else if code <= 0xffff {
        format!("\\u{code:04x}")
    } else {
        format!("\\U{code:08x}")
    }
}

/// Python's `ascii()` given the `repr()`: non-ASCII characters escaped.
fn py_ascii(repr: &str) -> String {
    repr.chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                escape_code(c)
            }
        })
        .collect()
}

/// A parsed format spec (Python's format specification mini-language).
#[derive(Debug, Default)]
struct Spec {
    fill: char,
    align: Option<char>,
    sign: Option<char>,
    no_neg_zero: bool,
    alternate: bool,
    width: usize,
    grouping: Option<char>,
    precision: Option<usize>,
    kind: Option<char>,
}

/// Parses `spec` for a value whose default alignment and presentation
/// type are `default_align` and `default_kind` (`<`/`s` for strings,
/// `>`/`d` for integers).
fn parse_spec(
    spec: &str,
    default_align: char,
    default_kind: char,
    type_name: &str,
) -> Result<Spec, TemplateError> {
    let s: Vec<char> = spec.chars().collect();
    let n = s.len();
    let mut pos = 0;
    let is_align = |c: char| matches!(c, '<' | '>' | '=' | '^');
    let mut out = Spec {
        fill: ' ',
        ..Spec::default()
    };
    let mut fill_given = false;
    if n >= 2 && is_align(s[1]) {
        out.fill = s[0];
        out.align = Some(s[1]);
        fill_given = true;
        pos = 2;
    } else if n >= 1 && is_align(s[0]) {
        out.align = Some(s[0]);
        pos = 1;
    }
    if pos < n && matches!(s[pos], '+' | '-' | ' ') {
        out.sign = Some(s[pos]);
        pos += 1;
    }
    if pos < n && s[pos] == 'z' {
        out.no_neg_zero = true;
        pos += 1;
    }
    if pos < n && s[pos] == '#' {
        out.alternate = true;
        pos += 1;
    }
    if !fill_given && pos < n && s[pos] == '0' {
        out.fill = '0';
        if out.align.is_none() && default_align == '>' {
            out.align = Some('=');
        }
        pos += 1;
    }
    let digits = |pos: &mut usize| -> Option<usize> {
        let start = *pos;
        while *pos < n && s[*pos].is_ascii_digit() {
            *pos += 1;
        }
        (*pos > start).then(|| {
            s[start..*pos]
                .iter()
                .collect::<String>()
                .parse()
                .unwrap_or(usize::MAX)
        })
    };
    out.width = digits(&mut pos).unwrap_or(0);
    if pos < n && s[pos] == ',' {
        out.grouping = Some(',');
        pos += 1;
    }
    if pos < n && s[pos] == '_' {
        if out.grouping.is_some() {
            return Err(value_error("Cannot specify both ',' and '_'."));
        }
        out.grouping = Some('_');
        pos += 1;
    }
    if pos < n && s[pos] == ',' && out.grouping == Some('_') {
        return Err(value_error("Cannot specify both ',' and '_'."));
    }
    if pos < n && s[pos] == '.' {
        pos += 1;
        out.precision = digits(&mut pos);
        if out.precision.is_none() {
            return Err(value_error("Format specifier missing precision"));
        }
    }
    if n - pos > 1 {
        return Err(value_error(format!(
            "Invalid format specifier '{}' for object of type '{type_name}'",
            s.iter().collect::<String>()
        )));
    }
    if n - pos == 1 {
        out.kind = Some(s[pos]);
    }
    if let Some(sep) = out.grouping {
        let kind = out.kind.unwrap_or(default_kind);
        let allowed = matches!(kind, 'd' | 'e' | 'f' | 'g' | 'E' | 'G' | '%' | 'F')
            || (sep == '_' && matches!(kind, 'b' | 'o' | 'x' | 'X'));
        if !allowed {
            return Err(value_error(format!(
                "Cannot specify '{sep}' with '{kind}'."
            )));
        }
    }
    Ok(out)
}

/// Python's `format(value, spec)`.
fn format_value(value: &Value, spec: &str) -> Result<String, TemplateError> {
    if spec.is_empty() {
        return Ok(py_str(value));
    }
    match value {
        Value::String(s) => format_str(s, spec),
        Value::Bool(b) => format_int(i128::from(*b), spec, "bool"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                format_int(i128::from(i), spec, "int")
            } else if let Some(u) = n.as_u64() {
                format_int(i128::from(u), spec, "int")
            } else {
                Err(value_error(format!(
                    "format spec '{spec}' on a float value is not supported in test_cmds templates"
                )))
            }
        }
        other => Err(err(
            "TypeError",
            format!(
                "unsupported format string passed to {}.__format__",
                py_type(other)
            ),
        )),
    }
}

fn format_str(s: &str, spec: &str) -> Result<String, TemplateError> {
    let spec = parse_spec(spec, '<', 's', "str")?;
    match spec.kind {
        None | Some('s') => {}
        Some(other) => {
            return Err(value_error(format!(
                "Unknown format code '{other}' for object of type 'str'"
            )));
        }
    }
    if spec.sign.is_some() {
        return Err(value_error("Sign not allowed in string format specifier"));
    }
    if spec.no_neg_zero {
        return Err(value_error(
            "Negative zero coercion (z) not allowed in string format specifier",
        ));
    }
    if spec.alternate {
        return Err(value_error(
            "Alternate form (#) not allowed in string format specifier",
        ));
    }
    if spec.align == Some('=') {
        return Err(value_error(
            "'=' alignment not allowed in string format specifier",
        ));
    }
    let text: String = match spec.precision {
        Some(p) => s.chars().take(p).collect(),
        None => s.to_string(),
    };
    Ok(pad(&text, spec.width, spec.fill, spec.align.unwrap_or('<')))
}

/// Pads `text` to `width` characters with `fill`, aligned `<`, `>` or `^`.
fn pad(text: &str, width: usize, fill: char, align: char) -> String {
    let len = text.chars().count();
    if width <= len {
        return text.to_string();
    }
    let total = width - len;
    let left = match align {
        '>' => total,
        '^' => total / 2,
        _ => 0,
    };
    let mut out = String::with_capacity(width);
    out.extend(std::iter::repeat_n(fill, left));
    out.push_str(text);
    out.extend(std::iter::repeat_n(fill, total - left));
    out
}

fn format_int(n: i128, spec: &str, type_name: &str) -> Result<String, TemplateError> {
    let spec = parse_spec(spec, '>', 'd', type_name)?;
    let kind = spec.kind.unwrap_or('d');
    let (radix, prefix) = match kind {
        'd' | 'n' => (10, ""),
        'b' => (2, "0b"),
        'o' => (8, "0o"),
        'x' => (16, "0x"),
        'X' => (16, "0X"),
        'c' | 'e' | 'E' | 'f' | 'F' | 'g' | 'G' | '%' => {
            return Err(value_error(format!(
                "format code '{kind}' is not supported in test_cmds templates"
            )));
        }
        other => {
            return Err(value_error(format!(
                "Unknown format code '{other}' for object of type '{type_name}'"
            )));
        }
    };
    if spec.precision.is_some() {
        return Err(value_error(
            "Precision not allowed in integer format specifier",
        ));
    }
    if spec.no_neg_zero {
        return Err(value_error(
            "Negative zero coercion (z) not allowed in integer format specifier",
        ));
    }
    let sign = if n < 0 {
        "-"
    } else {
        match spec.sign {
            Some('+') => "+",
            Some(' ') => " ",
            _ => "",
        }
    };
    let prefix = if spec.alternate { prefix } else { "" };
    let mut digits = to_radix(n.unsigned_abs(), radix);
    if kind == 'X' {
        digits.make_ascii_uppercase();
    }
    let align = spec.align.unwrap_or('>');
    let lead = sign.len() + prefix.len();
    // Zero padding with '=' goes through the grouping, so the padding
    // zeros are grouped too (Python: `format(3001, "08,")` = `0,003,001`).
    let min_digits = if spec.fill == '0' && align == '=' {
        spec.width.saturating_sub(lead)
    } else {
        0
    };
    let group = match (spec.grouping, radix) {
        (None, _) => None,
        (Some(sep), 10) => Some((sep, 3)),
        (Some(sep), _) => Some((sep, 4)),
    };
    let body = group_digits(&digits, group, min_digits);
    let len = lead + body.chars().count();
    let padding = spec.width.saturating_sub(len);
    let fill = |k: usize| std::iter::repeat_n(spec.fill, k).collect::<String>();
    Ok(match align {
        '<' => format!("{sign}{prefix}{body}{}", fill(padding)),
        '^' => format!(
            "{}{sign}{prefix}{body}{}",
            fill(padding / 2),
            fill(padding - padding / 2)
        ),
        '=' => format!("{sign}{prefix}{}{body}", fill(padding)),
        _ => format!("{}{sign}{prefix}{body}", fill(padding)),
    })
}

fn to_radix(mut n: u128, radix: u32) -> String {
    if n == 0 {
        return "0".into();
    }
    let mut out = Vec::new();
    while n > 0 {
        let d = (n % u128::from(radix)) as u32;
        out.push(char::from_digit(d, radix).unwrap_or('?'));
        n /= u128::from(radix);
    }
    out.iter().rev().collect()
}

/// Inserts separators every `size` digits from the right and pads with
/// zeros until at least `min_width` characters, never starting with a
/// separator (CPython's `_PyUnicode_InsertThousandsGrouping`).
fn group_digits(digits: &str, group: Option<(char, usize)>, min_width: usize) -> String {
    let mut rev: Vec<char> = Vec::new();
    let mut source = digits.chars().rev();
    let mut remaining = digits.len();
    let mut in_group = 0;
    while remaining > 0 || rev.len() < min_width {
        if let Some((sep, size)) = group
            && in_group == size
        {
            rev.push(sep);
            in_group = 0;
        }
        rev.push(source.next().unwrap_or('0'));
        remaining = remaining.saturating_sub(1);
        in_group += 1;
    }
    rev.iter().rev().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Map<String, Value> {
        let v = json!({
            "device_ip": "10.0.0.5", "port": 3001, "neg": -42, "big": 1234567,
            "flag": true, "off": false, "none": null, "lst": ["a", 1, null, true],
            "env": {"A": "x", "B": 2}, "f": 1.5, "quote": "it's", "fl2": 1e16,
            "fl3": 0.00001, "uni": "h\u{e9}\n"
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    /// Expected results were produced by the reference's formatter class
    /// under CPython 3.11 with the same config.
    #[test]
    fn matches_python_results() {
        let c = config();
        let cases: &[(&str, &str)] = &[
            // The upstream tests.
            ("test {{item}}", "test {item}"),
            // Known, unknown, empty fields and escapes.
            ("ssh {device_ip} {{x}}", "ssh 10.0.0.5 {x}"),
            ("{{ {device_ip} }}", "{ 10.0.0.5 }"),
            ("a {} b {{}}", "a {} b {}"),
            ("{:>5} {{", "{} {"),
            ("{!r} {{", "{} {"),
            ("{unknown} {{", "{unknown} {"),
            ("{unknown!r:>3} {{", "{unknown!r:>3} {"),
            ("{0} {{", "{0} {"),
            ("{ device_ip } {{", "{ device_ip } {"),
            ("awk '{print $1}' {{x}}", "awk '{print $1}' {x}"),
            (
                "for i in 1 2; do echo {{$i}}; done",
                "for i in 1 2; do echo {$i}; done",
            ),
            ("{unknown:{device_ip}} {{", "{unknown:10.0.0.5} {"),
            // Conversions.
            ("{device_ip!r} {{", "'10.0.0.5' {"),
            ("{device_ip!s:>12} {{", "    10.0.0.5 {"),
            ("{device_ip!a} {{", "'10.0.0.5' {"),
            ("{uni!r} {{", "'h\u{e9}\\n' {"),
            ("{uni!a} {{", "'h\\xe9\\n' {"),
            ("{quote!r} {{", "\"it's\" {"),
            ("{device_ip!r:>14} {{", "    '10.0.0.5' {"),
            ("{off!r} {{", "False {"),
            ("{none!r} {{", "None {"),
            ("{big!r} {{", "1234567 {"),
            ("{lst!r} {{", "['a', 1, None, True] {"),
            ("{env!s:>30} {{", "            {'A': 'x', 'B': 2} {"),
            ("{lst[3]!r} {{", "True {"),
            ("{env[B]!a} {{", "2 {"),
            // String specs.
            ("{device_ip:^12}| {{", "  10.0.0.5  | {"),
            ("{device_ip:*^13}| {{", "**10.0.0.5***| {"),
            ("{device_ip:.4} {{", "10.0 {"),
            ("{device_ip:12.4}| {{", "10.0        | {"),
            ("{device_ip:05} {{", "10.0.0.5 {"),
            ("{device_ip:012}| {{", "10.0.0.50000| {"),
            ("{device_ip:0>12}| {{", "000010.0.0.5| {"),
            ("{device_ip:<} {{", "10.0.0.5 {"),
            ("{device_ip:s} {{", "10.0.0.5 {"),
            ("{device_ip:>0} {{", "10.0.0.5 {"),
            ("{device_ip:.0}| {{", "| {"),
            ("{device_ip:10.2s}| {{", "10        | {"),
            // Integer specs.
            ("{port} {{", "3001 {"),
            ("{port:>8}| {{", "    3001| {"),
            ("{port:08} {{", "00003001 {"),
            ("{port:08,} {{", "0,003,001 {"),
            ("{big:,} {{", "1,234,567 {"),
            ("{big:_} {{", "1_234_567 {"),
            ("{big:010,} {{", "01,234,567 {"),
            ("{big:09,} {{", "1,234,567 {"),
            ("{big:08,} {{", "1,234,567 {"),
            ("{big:x} {{", "12d687 {"),
            ("{big:#x} {{", "0x12d687 {"),
            ("{big:#010x} {{", "0x0012d687 {"),
            ("{big:_b} {{", "1_0010_1101_0110_1000_0111 {"),
            ("{neg:08} {{", "-0000042 {"),
            ("{neg:=+8} {{", "-     42 {"),
            ("{neg: } {{", "-42 {"),
            ("{port: } {{", " 3001 {"),
            ("{port:+} {{", "+3001 {"),
            ("{port:<8}| {{", "3001    | {"),
            ("{port:^8}| {{", "  3001  | {"),
            ("{neg:,} {{", "-42 {"),
            ("{neg:#x} {{", "-0x2a {"),
            ("{port:+08} {{", "+0003001 {"),
            ("{port: 08} {{", " 0003001 {"),
            ("{port:#08x} {{", "0x000bb9 {"),
            ("{port:#_x} {{", "0xbb9 {"),
            ("{big:#_b} {{", "0b1_0010_1101_0110_1000_0111 {"),
            ("{port:_} {{", "3_001 {"),
            ("{neg:_} {{", "-42 {"),
            ("{port:010_} {{", "00_003_001 {"),
            ("{port:08_x} {{", "000_0bb9 {"),
            ("{port:=^8}| {{", "==3001==| {"),
            ("{neg:+#012_x} {{", "-0x0000_002a {"),
            ("{neg:<8}| {{", "-42     | {"),
            ("{neg:^8}| {{", "  -42   | {"),
            ("{port:*=8} {{", "****3001 {"),
            ("{port:8d} {{", "    3001 {"),
            ("{port:-8} {{", "    3001 {"),
            ("{port:,d} {{", "3,001 {"),
            ("{port:_x} {{", "bb9 {"),
            ("{port:#o} {{", "0o5671 {"),
            ("{port:#b} {{", "0b101110111001 {"),
            ("{port:X} {{", "BB9 {"),
            ("{port:#X} {{", "0XBB9 {"),
            ("{port:n} {{", "3001 {"),
            ("{port:0>8} {{", "00003001 {"),
            ("{port:0<8} {{", "30010000 {"),
            ("{neg:0^9} {{", "000-42000 {"),
            ("{port:=} {{", "3001 {"),
            ("{port:x>} {{", "3001 {"),
            ("{port:01_} {{", "3_001 {"),
            ("{flag} {{", "True {"),
            ("{flag:>5} {{", "    1 {"),
            ("{flag:d} {{", "1 {"),
            ("{flag:} {{", "True {"),
            ("{off:>3} {{", "  0 {"),
            // Other types and index chains.
            ("{none} {{", "None {"),
            ("{lst} {{", "['a', 1, None, True] {"),
            ("{lst[0]} {{", "a {"),
            ("{lst[1]:>4} {{", "   1 {"),
            ("{env} {{", "{'A': 'x', 'B': 2} {"),
            ("{env[A]} {{", "x {"),
            ("{env[B]:03} {{", "002 {"),
            ("{device_ip[0]} {{", "1 {"),
            ("{f} {{", "1.5 {"),
            ("{f:} {{", "1.5 {"),
            ("{fl2} {{", "1e+16 {"),
            ("{fl3} {{", "1e-05 {"),
            ("{fl2!s} {{", "1e+16 {"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &c).as_deref(), Ok(*want), "{input}");
        }
        // A width taken from another key.
        let got = expand("{device_ip:{port}} {{", &c).unwrap();
        assert_eq!(got.len(), 3001 + 2);
    }

    #[test]
    fn errors_match_python() {
        let c = config();
        let cases: &[(&str, &str, &str)] = &[
            (
                "{device_ip:d} {{",
                "ValueError",
                "Unknown format code 'd' for object of type 'str'",
            ),
            (
                "{device_ip:+} {{",
                "ValueError",
                "Sign not allowed in string format specifier",
            ),
            (
                "{device_ip:#} {{",
                "ValueError",
                "Alternate form (#) not allowed in string format specifier",
            ),
            (
                "{device_ip:=5} {{",
                "ValueError",
                "'=' alignment not allowed in string format specifier",
            ),
            (
                "{device_ip:,} {{",
                "ValueError",
                "Cannot specify ',' with 's'.",
            ),
            (
                "{port:.2} {{",
                "ValueError",
                "Precision not allowed in integer format specifier",
            ),
            (
                "{port:s} {{",
                "ValueError",
                "Unknown format code 's' for object of type 'int'",
            ),
            (
                "{none:>5} {{",
                "TypeError",
                "unsupported format string passed to NoneType.__format__",
            ),
            ("{lst[9]} {{", "IndexError", "list index out of range"),
            (
                "{lst[x]} {{",
                "TypeError",
                "list indices must be integers or slices, not str",
            ),
            (
                "{lst[-1]} {{",
                "TypeError",
                "list indices must be integers or slices, not str",
            ),
            (
                "{lst:>3} {{",
                "TypeError",
                "unsupported format string passed to list.__format__",
            ),
            ("{env[C]} {{", "KeyError", "'C'"),
            ("{env[0]} {{", "KeyError", "0"),
            (
                "{device_ip[x]} {{",
                "TypeError",
                "string indices must be integers, not 'str'",
            ),
            (
                "{port[0]} {{",
                "TypeError",
                "'int' object is not subscriptable",
            ),
            ("{device_ip:{unknown}} {{", "KeyError", "'unknown'"),
            ("{unknown:{unknown2}} {{", "KeyError", "'unknown2'"),
            (
                "echo {{ }",
                "ValueError",
                "Single '}' encountered in format string",
            ),
            (
                "echo } {{",
                "ValueError",
                "Single '}' encountered in format string",
            ),
            ("echo { {{", "ValueError", "unexpected '{' in field name"),
            (
                "echo {{ {",
                "ValueError",
                "Single '{' encountered in format string",
            ),
            (
                "{device_ip!} {{",
                "ValueError",
                "expected ':' after conversion specifier",
            ),
            (
                "{device_ip!x} {{",
                "ValueError",
                "Unknown conversion specifier x",
            ),
            (
                "{device_ip!rx} {{",
                "ValueError",
                "expected ':' after conversion specifier",
            ),
            (
                "{device_ip: {{",
                "ValueError",
                "unmatched '{' in format spec",
            ),
            (
                "{env[A} {{",
                "ValueError",
                "expected '}' before end of string",
            ),
            (
                "{env[A]x} {{",
                "ValueError",
                "Only '.' or '[' may follow ']' in format field specifier",
            ),
            (
                "{device_ip }} {{",
                "ValueError",
                "Single '}' encountered in format string",
            ),
            (
                "{device_ip[} {{",
                "ValueError",
                "expected '}' before end of string",
            ),
            ("{a{b}} {{", "ValueError", "unexpected '{' in field name"),
            ("{device_ip:{port:{x}}} {{", "KeyError", "'x'"),
            (
                "{device_ip:{{}}} {{",
                "ValueError",
                "Invalid format specifier '{}' for object of type 'str'",
            ),
            (
                "{env[]} {{",
                "ValueError",
                "Empty attribute in format string",
            ),
            ("{port:,x} {{", "ValueError", "Cannot specify ',' with 'x'."),
            (
                "{port:z} {{",
                "ValueError",
                "Negative zero coercion (z) not allowed in integer format specifier",
            ),
            (
                "{device_ip:z} {{",
                "ValueError",
                "Negative zero coercion (z) not allowed in string format specifier",
            ),
            (
                "{port:,_} {{",
                "ValueError",
                "Cannot specify both ',' and '_'.",
            ),
            (
                "{device_ip:.} {{",
                "ValueError",
                "Format specifier missing precision",
            ),
            (
                "{port:dd} {{",
                "ValueError",
                "Invalid format specifier 'dd' for object of type 'int'",
            ),
        ];
        for (input, kind, message) in cases {
            let e = expand(input, &c).unwrap_err();
            assert_eq!((e.kind, e.message.as_str()), (*kind, *message), "{input}");
        }
        // Deliberately refused instead of printing a method's repr.
        assert_eq!(
            expand("{device_ip.upper} {{", &c).unwrap_err().kind,
            "AttributeError"
        );
        assert_eq!(
            expand("{env[A].x} {{", &c).unwrap_err().kind,
            "AttributeError"
        );
        assert!(expand("{f:>6} {{", &c).is_err());
        assert!(expand("{port:e} {{", &c).is_err());
    }

    #[test]
    fn float_repr_matches_python() {
        let cases: &[(f64, &str)] = &[
            (0.1, "0.1"),
            (1.0, "1.0"),
            (100.0, "100.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (2.5e20, "2.5e+20"),
            (-0.0, "-0.0"),
            (123.456, "123.456"),
            (1e22, "1e+22"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (0.3, "0.3"),
            (2f64.powi(60), "1.152921504606847e+18"),
            (-1.25e-10, "-1.25e-10"),
            (9999999999999998.0, "9999999999999998.0"),
        ];
        for (f, want) in cases {
            assert_eq!(py_float(*f), *want, "{f}");
        }
    }

    #[test]
    fn only_double_braces_trigger_templating() {
        assert!(is_templated("echo {{x}}"));
        assert!(!is_templated("echo {device_ip}"));
        assert!(!is_templated("awk '{print}'"));
    }
}
