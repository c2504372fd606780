//! Signing sample GitHub deliveries: the secret `aofctl dev` generates when
//! `GITHUB_WEBHOOK_SECRET` is unset, and the ready-to-paste `curl` it prints
//! (`X-Hub-Signature-256: sha256=HEX(HMAC-SHA256(secret, body))`, as GitHub signs,
//! computed by the shared [`aof_contract::signature::sign`]).

use anyhow::Context as _;
use aof_contract::signature::sign;

/// A small push to `main` of `myorg/api` (matches the sample trigger `push-main`).
pub const SAMPLE_PUSH: &str = r#"{"ref":"refs/heads/main","repository":{"full_name":"myorg/api","owner":{"login":"myorg"}},"sender":{"login":"alice"}}"#;

fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf).context("cannot read random bytes from the operating system")?;
    Ok(buf)
}

/// A new webhook secret: 32 random bytes, hex.
pub fn random_secret() -> anyhow::Result<String> {
    Ok(hex::encode(random_bytes::<32>()?))
}

/// A random delivery id shaped like GitHub's (a version-4 UUID).
pub fn random_delivery_id() -> anyhow::Result<String> {
    let mut b = random_bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// `s` as one POSIX shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A `curl` command that posts `payload` as a signed `event` delivery to `url`,
/// one option per line (with `\` continuations), indented by `indent`.
pub fn curl_command(
    url: &str,
    event: &str,
    delivery_id: &str,
    secret: &[u8],
    payload: &str,
    indent: &str,
) -> String {
    let sig = sign(secret, payload.as_bytes());
    let parts = [
        format!("curl -s -X POST {url}"),
        format!("-H {}", shell_quote(&format!("X-GitHub-Event: {event}"))),
        format!(
            "-H {}",
            shell_quote(&format!("X-GitHub-Delivery: {delivery_id}"))
        ),
        format!("-H {}", shell_quote(&format!("X-Hub-Signature-256: {sig}"))),
        format!("-H {}", shell_quote("content-type: application/json")),
        format!("-d {}", shell_quote(payload)),
    ];
    let cont = format!(" \\\n{indent}  ");
    format!("{indent}{}", parts.join(&cont))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_values_have_the_expected_shape() {
        let s = random_secret().unwrap();
        assert_eq!(s.len(), 64);
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(s, random_secret().unwrap());
        let d = random_delivery_id().unwrap();
        assert_eq!(d.len(), 36);
        assert_eq!(
            d.split('-').map(str::len).collect::<Vec<_>>(),
            vec![8, 4, 4, 4, 12]
        );
        assert_eq!(&d[14..15], "4");
    }

    #[test]
    fn the_curl_command_quotes_everything() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let c = curl_command(
            "http://127.0.0.1:3001/webhook/github",
            "push",
            "d-1",
            b"s",
            SAMPLE_PUSH,
            "  ",
        );
        let sig = sign(b"s", SAMPLE_PUSH.as_bytes());
        assert_eq!(
            c,
            format!(
                "  curl -s -X POST http://127.0.0.1:3001/webhook/github \\\n    -H 'X-GitHub-Event: push' \\\n    \
                 -H 'X-GitHub-Delivery: d-1' \\\n    -H 'X-Hub-Signature-256: {sig}' \\\n    \
                 -H 'content-type: application/json' \\\n    -d '{SAMPLE_PUSH}'"
            )
        );
    }
}
