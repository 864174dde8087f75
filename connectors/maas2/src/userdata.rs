//! `provision_data.user_data` for MAAS, which wants it base64-encoded.
//!
//! The reference always base64-encodes the job's text, although its
//! documentation asks jobs for base64 already (which then arrives double
//! encoded and breaks cloud-init). Both kinds of job work here: text that is
//! strict base64 *and* decodes to cloud-init user data (a `#` first line
//! such as `#cloud-config` or `#!`, a MIME `Content-Type:` header, or gzip)
//! is sent as it is; anything else is encoded. Plain cloud-init user data
//! always starts with `#` or `Content-Type:`, characters base64 never
//! contains, so the two cases cannot be confused.

/// The value for MAAS's `user_data`, and whether the job's text was
/// already base64.
pub fn for_maas(user_data: &str) -> (String, bool) {
    if let Some(decoded) = decode_strict(user_data)
        && looks_like_user_data(&decoded)
    {
        let compact: String = user_data.split_ascii_whitespace().collect();
        return (compact, true);
    }
    (encode(user_data.as_bytes()), false)
}

fn looks_like_user_data(bytes: &[u8]) -> bool {
    bytes.starts_with(b"#")
        || bytes.starts_with(&[0x1f, 0x8b])
        || bytes
            .get(..13)
            .is_some_and(|h| h.eq_ignore_ascii_case(b"content-type:"))
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard, padded base64 (ASCII whitespace ignored); `None` for
/// anything else.
pub fn decode_strict(text: &str) -> Option<Vec<u8>> {
    let data: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if data.is_empty() || !data.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() / 4 * 3);
    let groups = data.len() / 4;
    for (g, chunk) in data.chunks(4).enumerate() {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && g + 1 != groups) {
            return None;
        }
        let mut n: u32 = 0;
        for &c in &chunk[..4 - pad] {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            n = (n << 6) | v;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            let e = encode(s.as_bytes());
            if !s.is_empty() {
                assert_eq!(decode_strict(&e).unwrap(), s.as_bytes(), "{e}");
            }
        }
        assert_eq!(encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(encode(b"fooba"), "Zm9vYmE=");
        assert_eq!(encode(b"foob"), "Zm9vYg==");
        assert_eq!(decode_strict("Zm9v\nYmE="), Some(b"fooba".to_vec()));
        for bad in [
            "Zm9",
            "Zm9vY===",
            "Zm=vYmFy",
            "Zm9v YmF",
            "#cloud-config",
            "ab$d",
        ] {
            assert_eq!(decode_strict(bad), None, "{bad}");
        }
    }

    #[test]
    fn plain_user_data_is_encoded_once() {
        let text = "#cloud-config\npackages: [htop]\n";
        assert_eq!(for_maas(text), (encode(text.as_bytes()), false));
        // Short text that happens to be valid base64 but is not user data.
        assert_eq!(for_maas("test"), (encode(b"test"), false));
    }

    #[test]
    fn documented_base64_is_passed_through() {
        let text = "#cloud-config\npackages: [htop]\n";
        let b64 = encode(text.as_bytes());
        let wrapped = format!("{}\n{}\n", &b64[..20], &b64[20..]);
        assert_eq!(for_maas(&wrapped), (b64, true));
        let mime = encode(b"Content-Type: multipart/mixed; boundary=x\n");
        assert_eq!(for_maas(&mime), (mime.clone(), true));
    }
}
