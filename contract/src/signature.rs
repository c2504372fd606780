//! GitHub webhook signatures: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the
//! body>`, keyed with the webhook's secret.
//!
//! [`verify`] checks the header against several candidate secrets at once (secret
//! rotation, per-org or per-trigger secrets) and says which one matched. The
//! comparison is constant-time (`hmac`'s `verify_slice`), and every candidate is
//! tried whatever the outcome, so timing reveals neither the digest nor which secret
//! matched. Empty secrets never match.
//!
//! Pure: the caller passes the raw body bytes exactly as received (before any JSON
//! parsing) and secrets already expanded at the edge.
//!
//! [`sign`] is the one signer of the workspace: `aofctl dev`'s sample `curl`, the
//! benchmark's load generator, the fault-injection harness and the tests all sign
//! with it, so what they send is exactly what [`verify`] accepts.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header GitHub puts the signature in.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

/// Why a delivery's signature was rejected. Messages say what to check.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error(
        "missing X-Hub-Signature-256 header: GitHub signs deliveries only when the webhook has a secret; \
         set the secret in the webhook's settings (Settings > Webhooks > Secret) to the configured webhook_secret"
    )]
    Missing,
    #[error("malformed X-Hub-Signature-256 header: {0}")]
    Malformed(String),
    #[error(
        "no webhook secret is configured, so deliveries cannot be verified: set webhook_secret \
         (e.g. ${{GITHUB_WEBHOOK_SECRET}}) and make sure the environment variable is set and not empty"
    )]
    NoSecretConfigured,
    #[error(
        "X-Hub-Signature-256 does not match the body under any configured secret: check that the webhook's \
         secret equals webhook_secret, that its content type is application/json, and that no proxy rewrites the body"
    )]
    Mismatch,
}

fn mac(secret: &[u8], body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac
}

/// The `X-Hub-Signature-256` value GitHub would send: `sha256=<lowercase hex>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(mac(secret, body).finalize().into_bytes())
    )
}

/// Decode `sha256=<64 hex digits>` (hex in either case, surrounding whitespace ignored).
fn parse_header(header: &str) -> Result<[u8; 32], SignatureError> {
    let malformed = |m: String| Err(SignatureError::Malformed(m));
    let Some((scheme, digest)) = header.split_once('=') else {
        return malformed(format!(
            "expected \"sha256=<64 hex digits>\", found a {}-character value without '='",
            header.chars().count()
        ));
    };
    if !scheme.trim().eq_ignore_ascii_case("sha256") {
        let shown: String = scheme.chars().take(16).collect();
        return malformed(format!(
            "expected \"sha256=<64 hex digits>\", found scheme {shown:?} (the SHA-1 X-Hub-Signature header is not \
             accepted; is a proxy forwarding the wrong header?)"
        ));
    }
    let digest = digest.trim();
    if digest.len() != 64 {
        return malformed(format!(
            "expected 64 hex digits after \"sha256=\", found {} characters",
            digest.chars().count()
        ));
    }
    let mut out = [0u8; 32];
    match hex::decode_to_slice(digest, &mut out) {
        Ok(()) => Ok(out),
        Err(_) => malformed("the digest after \"sha256=\" is not hexadecimal".into()),
    }
}

/// Verify the `X-Hub-Signature-256` header of a delivery with raw body `body`
/// against each candidate secret. Returns the index (into `secrets`) of the first
/// secret that matches.
///
/// # Errors
///
/// In this order: [`SignatureError::NoSecretConfigured`] when `secrets` has no
/// non-empty secret, [`SignatureError::Missing`] when the header is absent or blank,
/// [`SignatureError::Malformed`] when it is not `sha256=<64 hex digits>`,
/// [`SignatureError::Mismatch`] when no secret matches.
pub fn verify(
    secrets: &[&[u8]],
    body: &[u8],
    header: Option<&str>,
) -> Result<usize, SignatureError> {
    if secrets.iter().all(|s| s.is_empty()) {
        return Err(SignatureError::NoSecretConfigured);
    }
    let header = header
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(SignatureError::Missing)?;
    let digest = parse_header(header)?;
    let mut found = None;
    for (i, secret) in secrets.iter().enumerate() {
        if secret.is_empty() {
            continue;
        }
        // Every candidate is checked (no early exit) to keep timing independent of
        // which secret matched.
        let ok = mac(secret, body).verify_slice(&digest).is_ok();
        if ok && found.is_none() {
            found = Some(i);
        }
    }
    found.ok_or(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    // GitHub's documented test vector
    // (docs.github.com, "Validating webhook deliveries").
    const GH_SECRET: &[u8] = b"It's a Secret to Everybody";
    const GH_BODY: &[u8] = b"Hello, World!";
    const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn sign_matches_githubs_test_vector() {
        assert_eq!(sign(GH_SECRET, GH_BODY), GH_SIG);
    }

    #[test]
    fn verify_accepts_a_good_signature() {
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let header = sign(b"test-secret", body);
        assert!(header.starts_with("sha256=") && header.len() == 7 + 64);
        assert_eq!(verify(&[b"test-secret"], body, Some(&header)), Ok(0));
        assert_eq!(
            verify(
                &[GH_SECRET],
                GH_BODY,
                Some(&format!(
                    "  {}  ",
                    GH_SIG.to_uppercase().replace("SHA256", "sha256")
                ))
            ),
            Ok(0)
        );
    }

    #[test]
    fn rotation_returns_the_matching_index() {
        let header = sign(b"new", b"body");
        assert_eq!(verify(&[b"old", b"new"], b"body", Some(&header)), Ok(1));
        assert_eq!(
            verify(&[b"", b"new", b"new"], b"body", Some(&header)),
            Ok(1)
        );
    }

    #[test]
    fn wrong_secret_or_body_is_a_mismatch() {
        let header = sign(b"right", b"body");
        assert_eq!(
            verify(&[b"wrong"], b"body", Some(&header)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&[b"right"], b"body!", Some(&header)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_malformed_and_unconfigured() {
        assert_eq!(verify(&[b"s"], b"b", None), Err(SignatureError::Missing));
        assert_eq!(
            verify(&[b"s"], b"b", Some("  ")),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(&[], b"b", Some(GH_SIG)),
            Err(SignatureError::NoSecretConfigured)
        );
        assert_eq!(
            verify(&[b""], b"b", None),
            Err(SignatureError::NoSecretConfigured)
        );
        for bad in [
            "sha1=0123456789abcdef0123456789abcdef01234567",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=abc",
            "sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
        ] {
            let e = verify(&[b"s"], b"b", Some(bad)).unwrap_err();
            assert!(matches!(e, SignatureError::Malformed(_)), "{bad}: {e:?}");
        }
        let e = verify(&[b"s"], b"b", Some("sha1=00"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sha1") && e.contains("sha256="), "{e}");
    }
}
