//! Signatures of real GitHub payloads (the shared fixtures) under several secrets.
//!
//! The expected values were produced by the five signers this crate replaced (the
//! node's, `aofctl dev`'s, the cli tests', the benchmark's and the fault-injection
//! harness's, which all computed `sha256=` + lowercase hex of HMAC-SHA256) and agree
//! with an independent HMAC implementation (Python's `hmac`). A change in format
//! (case, prefix, key handling) breaks every signed request of the workspace; this
//! test catches it.

use aof_contract::signature::{sign, verify, SignatureError};

/// A fixture body from `shared/fixtures/github-webhooks` beside the repository.
fn fixture(path: &str) -> Vec<u8> {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bases = [
        "../../shared/fixtures/github-webhooks",
        "../shared/fixtures/github-webhooks",
    ];
    bases
        .iter()
        .find_map(|b| std::fs::read(here.join(b).join(path)).ok())
        .unwrap_or_else(|| panic!("fixture {path} not found beside the repository"))
}

/// The secrets each fixture is signed with, in the order of [`GOLDEN`]'s columns.
const SECRETS: [&str; 2] = ["s3cret", "It's a Secret to Everybody"];

/// Fixture, then its signature under each of [`SECRETS`].
#[rustfmt::skip]
const GOLDEN: &[(&str, [&str; 2])] = &[
    ("push/00-none.json", ["sha256=d875fecb856e036684449ffe2d5d2ee301f7d05c18c914ba8cf6b3bc63b40c00", "sha256=3307e842292fd2e8a407f65b2a59887c5c1cb39f9f99d7a9a837ea0af01b9a9a"]),
    ("pull_request/00-opened.json", ["sha256=31b097b11a9df42aaf1dc3f9c334252ea976a1a132fdabb6972313336cc28f1a", "sha256=d2deb9a0d8a9eb18c397aad7d9a41bccb7267b7b0025e44931b3c0f033c5ebe4"]),
    ("issues/00-edited.json", ["sha256=9e29c51c87a3d4002c66a1565314cdca829071c03bd12dc301d5c85cab35ae46", "sha256=844ca492b89898cf714f58e5c54cf95102ce30b10582a7b412255a1f2e6877c2"]),
    ("issue_comment/00-created.json", ["sha256=399a6cb7d1ed9506d4c5cbcd91789d919a1d66ce7d8e5b71fcf833532649ff88", "sha256=43656734db3b13e3afbc97d859a124f9dc21b1c225fa1fa5f0c50c46b40984db"]),
];

#[test]
fn fixture_bodies_sign_as_before_and_round_trip() {
    for (path, signatures) in GOLDEN {
        let body = fixture(path);
        for (secret, expected) in SECRETS.iter().zip(signatures) {
            let sig = sign(secret.as_bytes(), &body);
            assert_eq!(&sig, expected, "{path} under {secret:?}");
            assert_eq!(
                verify(&[b"other", secret.as_bytes()], &body, Some(&sig)),
                Ok(1),
                "{path}"
            );
            // One byte more, and it no longer verifies.
            let mut changed = body.clone();
            changed.push(b'\n');
            assert_eq!(
                verify(&[secret.as_bytes()], &changed, Some(&sig)),
                Err(SignatureError::Mismatch),
                "{path}"
            );
        }
    }
}

#[test]
fn empty_bodies_and_keys_longer_than_a_block() {
    assert_eq!(
        sign(b"s3cret", b""),
        "sha256=91dfac70c5348b04e1babb8b421ac92cec08b565b49ca16130dccb72503647b7"
    );
    // HMAC hashes keys longer than SHA-256's 64-byte block first.
    let long = "k".repeat(100);
    let body = fixture("push/00-none.json");
    let sig = sign(long.as_bytes(), &body);
    assert_eq!(
        sig,
        "sha256=cff9484ba06fd0460d99108cd00ad6bfcd9becaa5f0055ea2fa970cd698f3ea3"
    );
    assert_eq!(verify(&[long.as_bytes()], &body, Some(&sig)), Ok(0));
}
