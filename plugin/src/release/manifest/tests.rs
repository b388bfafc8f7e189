use super::*;
use crate::release::envelope::Envelope;

fn sample(key: &PublisherKey) -> SignedManifest {
    let envelope = Envelope::from_toml("license = \"CC-BY-4.0\"\nnote = \"ünïcode ✓\"").unwrap();
    Manifest {
        schema: SCHEMA.into(),
        name: "imagenet-mini".into(),
        version: parse_version("1.4.2").unwrap(),
        parent: None,
        created_at: "2026-11-24T05:00:00Z".parse().unwrap(),
        total_bytes: 300_000,
        records: Records::default(),
        files: vec![
            FileEntry {
                path: "a/train.jsonl".into(),
                size: 100_000,
                media_type: "application/jsonl".into(),
                blake3: Blake3::of(b"x"),
                chunk_size: 65536,
                chunk_table: Some(Blake3::of(b"t")),
                records: Some(10),
                encryption: None,
            },
            FileEntry {
                path: "b.bin".into(),
                size: 200_000,
                media_type: "application/octet-stream".into(),
                blake3: Blake3::of(b"y"),
                chunk_size: 262144,
                chunk_table: None,
                records: None,
                encryption: None,
            },
        ],
        envelope,
        approvals: Vec::new(),
        signature: None,
    }
    .sign(key)
}

#[test]
fn sign_parse_round_trip_is_byte_exact() {
    let key = PublisherKey::generate().unwrap();
    let signed = sample(&key);
    let parsed = SignedManifest::parse(&signed.bytes).unwrap();
    assert_eq!(parsed.manifest, signed.manifest);
    assert_eq!(parsed.id, Blake3::of(&signed.bytes));
    assert_eq!(parsed.signer, key.public());
    parsed.check_trust(&[key.public()]).unwrap();
    let other = PublisherKey::generate().unwrap();
    assert!(matches!(parsed.check_trust(&[other.public()]), Err(ManifestError::Untrusted(_))));
    // Deterministic: signing the same manifest again gives the same bytes.
    assert_eq!(sample(&key).bytes, signed.bytes);
    // Readable: pretty-printed, keys sorted.
    let text = String::from_utf8(signed.bytes.clone()).unwrap();
    assert!(text.starts_with("{\n  \"created_at\": \"2026-11-24T05:00:00Z\",\n"), "{text}");
}

#[test]
fn every_changed_character_is_refused() {
    let key = PublisherKey::generate().unwrap();
    let signed = sample(&key);
    let text = signed.bytes.clone();
    let mut refused = 0;
    for i in 0..text.len() {
        // Replace with a different printable character of the same class.
        let c = text[i];
        let replacement = match c {
            b'0'..=b'8' => c + 1,
            b'9' => b'0',
            b'a'..=b'y' => c + 1,
            b'z' => b'a',
            b'A'..=b'Y' => c + 1,
            b' ' => b'\t',
            b'\n' => b' ',
            _ => b'#',
        };
        let mut edited = text.clone();
        edited[i] = replacement;
        assert!(SignedManifest::parse(&edited).is_err(), "edit at byte {i} ({:?}) was accepted", c as char);
        refused += 1;
    }
    assert_eq!(refused, text.len());
}

#[test]
fn a_valid_but_resigned_manifest_is_a_different_signer() {
    let key = PublisherKey::generate().unwrap();
    let mut m = sample(&key).manifest;
    m.version = parse_version("9.9.9").unwrap();
    let mallory = PublisherKey::generate().unwrap();
    let forged = m.sign(&mallory);
    let parsed = SignedManifest::parse(&forged.bytes).unwrap();
    assert!(parsed.check_trust(&[key.public()]).is_err());
}

#[test]
fn structure_errors_name_the_field() {
    let key = PublisherKey::generate().unwrap();
    let good = sample(&key).manifest;
    type Edit = Box<dyn Fn(&mut Manifest)>;
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|m| m.name = "Bad Name".into()), "name"),
        (Box::new(|m| m.files[0].path = "../etc/passwd".into()), "files[0].path"),
        (Box::new(|m| m.files.swap(0, 1)), "files[1].path"),
        (Box::new(|m| m.total_bytes += 1), "total_bytes"),
        (Box::new(|m| m.files[1].chunk_size = 1000), "files[1].chunk_size"),
        (Box::new(|m| m.files[0].chunk_table = None), "files[0].chunk_table"),
        (Box::new(|m| m.schema = "other".into()), "schema"),
    ];
    for (edit, field) in cases {
        let mut m = good.clone();
        edit(&mut m);
        let err = SignedManifest::parse(&m.sign(&key).bytes).unwrap_err().to_string();
        assert!(err.contains(field), "expected {field} in {err}");
    }
    let err = SignedManifest::parse(br#"{"schema": 3}"#).unwrap_err().to_string();
    assert!(err.contains("schema"), "{err}");
    assert!(matches!(SignedManifest::parse(b"{not json"), Err(ManifestError::Json(_))));
}

#[test]
fn names_paths_versions() {
    assert!(check_name("imagenet-mini").is_ok());
    assert!(check_name("-x").is_err());
    assert!(check_name("").is_err());
    assert!(check_path("a/b.tar").is_ok());
    for bad in ["", "/abs", "a//b", "a/./b", "a/../b", "a\\b", "a/"] {
        assert!(check_path(bad).is_err(), "{bad}");
    }
    assert!(parse_version("1.4").is_err());
    assert!(parse_version("1.4.2-rc.1").is_ok());
}
