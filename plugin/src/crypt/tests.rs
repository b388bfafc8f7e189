use super::envelope::{KeyEnvelope, KeyError, Unwrappers, Wrappers};
use super::*;

const CS: u64 = 1024;

fn binding<'a>(path: &'a str, salt: &'a [u8; 32]) -> FileBinding<'a> {
    FileBinding { name: "cohort", version: "1.0.0", path, salt, chunk_size: CS }
}

fn cipher(scheme: Scheme, key: &DataKey, at: FileBinding<'_>, size: u64) -> FileCipher {
    FileCipher::sized(scheme, key, at, size).unwrap()
}

fn encrypt_all(c: &FileCipher, plain: &[u8]) -> Vec<Vec<u8>> {
    let s = *c.segments().unwrap();
    (0..s.count())
        .map(|i| {
            let r = s.plain_range(i);
            c.encrypt_segment(i, i + 1 == s.count(), &plain[r.start as usize..r.end as usize]).unwrap()
        })
        .collect()
}

#[test]
fn geometry_matches_the_format() {
    let s = Segments::new(0, CS).unwrap();
    assert_eq!((s.count(), s.cipher_size()), (1, 16));
    let s = Segments::new(CS - 16, CS).unwrap();
    assert_eq!((s.count(), s.cipher_size()), (1, CS));
    let s = Segments::new(CS - 15, CS).unwrap();
    assert_eq!((s.count(), s.cipher_size()), (2, CS + 1 + 16));
    assert_eq!(s.plain_range(1), CS - 16..CS - 15);
    assert_eq!(s.covering(0..1), 0..1);
    assert_eq!(s.covering(CS - 17..CS - 15), 0..2);
    assert_eq!(s.covering(5..5), 0..0);
    assert!(Segments::new(10, 16).is_err());
}

#[test]
fn every_segment_round_trips_and_decrypts_on_its_own() {
    for scheme in [Scheme::Aes256Gcm, Scheme::XChaCha20Poly1305] {
        let key = DataKey::generate().unwrap();
        for size in [0u64, 1, CS - 16, CS - 15, 5 * (CS - 16), 5 * (CS - 16) + 7] {
            let plain: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let salt = [9u8; 32];
            let c = cipher(scheme, &key, binding("a/b.bin", &salt), size);
            let chunks = encrypt_all(&c, &plain);
            assert_eq!(chunks.iter().map(|c| c.len() as u64).sum::<u64>(), c.segments().unwrap().cipher_size());
            // Backwards, one by one: no segment needs another.
            let mut out = vec![Vec::new(); chunks.len()];
            for i in (0..chunks.len()).rev() {
                out[i] = c.decrypt_segment(i as u64, &chunks[i]).unwrap();
            }
            assert_eq!(out.concat(), plain, "{scheme} {size}");
        }
    }
}

#[test]
fn reordered_moved_truncated_or_flipped_chunks_never_decrypt() {
    let key = DataKey::generate().unwrap();
    let plain: Vec<u8> = (0..3 * (CS - 16) + 100).map(|i| (i % 256) as u8).collect();
    let (s1, s2) = ([1u8; 32], [2u8; 32]);
    let size = plain.len() as u64;
    let c = cipher(Scheme::Aes256Gcm, &key, binding("x", &s1), size);
    let chunks = encrypt_all(&c, &plain);
    // Swapped: chunk 1 where 0 belongs.
    assert_eq!(c.decrypt_segment(0, &chunks[1]), Err(CryptError::Auth { index: 0 }));
    // A flipped bit.
    let mut bad = chunks[2].clone();
    bad[10] ^= 1;
    assert!(c.decrypt_segment(2, &bad).is_err());
    // Moved from another file with the same key (another salt and path).
    let other = cipher(Scheme::Aes256Gcm, &key, binding("y", &s2), size);
    let theirs = encrypt_all(&other, &plain);
    assert!(c.decrypt_segment(1, &theirs[1]).is_err());
    // Same salt, another path, or another release: the associated data differs.
    let moved = cipher(Scheme::Aes256Gcm, &key, binding("z", &s1), size);
    assert!(moved.decrypt_segment(1, &chunks[1]).is_err());
    let other_release = cipher(Scheme::Aes256Gcm, &key, FileBinding { version: "1.0.1", ..binding("x", &s1) }, size);
    assert!(other_release.decrypt_segment(1, &chunks[1]).is_err());
    // Truncated after a full segment: a cipher for the shorter file refuses the
    // non-final segment as its last, and this file's last chunk is where the flag says.
    let short_size = 3 * (CS - 16);
    let short = cipher(Scheme::Aes256Gcm, &key, binding("x", &s1), short_size);
    assert!(short.decrypt_segment(2, &chunks[2]).is_err());
    // Another key.
    let k2 = DataKey::generate().unwrap();
    let c2 = cipher(Scheme::Aes256Gcm, &k2, binding("x", &s1), size);
    assert!(c2.decrypt_segment(0, &chunks[0]).is_err());
    // Another scheme with the same key.
    let c3 = cipher(Scheme::XChaCha20Poly1305, &key, binding("x", &s1), size);
    assert!(c3.decrypt_segment(0, &chunks[0]).is_err());
}

#[test]
fn the_plaintext_digest_is_sealed_under_the_file_key() {
    let key = DataKey::generate().unwrap();
    let salt = [3u8; 32];
    let c = cipher(Scheme::XChaCha20Poly1305, &key, binding("f", &salt), 10);
    let d = Blake3::of(b"0123456789");
    let sealed = c.seal_digest(&d).unwrap();
    assert!(!sealed.windows(32).any(|w| w == d.0), "the digest is not readable from the sealed form");
    assert_eq!(c.open_digest(&sealed).unwrap(), d);
    let other = cipher(Scheme::XChaCha20Poly1305, &key, binding("g", &salt), 10);
    assert_eq!(other.open_digest(&sealed), Err(CryptError::Digest));
}

#[test]
fn key_ids_commit_without_revealing() {
    let k = DataKey::generate().unwrap();
    let id = k.id();
    check_key_id(&id).unwrap();
    assert!(!id.contains(&hex::encode(&k.bytes()[..8])));
    assert!(check_key_id("k1-xyz").is_err());
    assert_eq!(format!("{k:?}"), format!("DataKey({id})"));
}

#[test]
fn an_envelope_opens_only_for_its_recipients_and_its_key() {
    let alice = age::x25519::Identity::generate();
    let bob = age::x25519::Identity::generate();
    let key = DataKey::generate().unwrap();
    let v = semver::Version::new(1, 0, 0);
    let to = Wrappers { age: vec![alice.to_public(), bob.to_public()], pkcs11: None };
    let env = KeyEnvelope::seal("cohort", &v, Scheme::Aes256Gcm, &key, &to).unwrap();
    let parsed = KeyEnvelope::parse(&env.to_json()).unwrap();
    assert_eq!(parsed, env);
    let with = |ids: Vec<age::x25519::Identity>| Unwrappers { age: ids, pkcs11: None };
    assert_eq!(env.open(&with(vec![alice.clone()])).unwrap().bytes(), key.bytes());
    assert_eq!(env.open(&with(vec![bob.clone()])).unwrap().bytes(), key.bytes());
    // Wrapped again without bob: bob is revoked.
    let to = Wrappers { age: vec![alice.to_public()], pkcs11: None };
    let rewrapped = KeyEnvelope::seal("cohort", &v, Scheme::Aes256Gcm, &key, &to).unwrap();
    let err = rewrapped.open(&with(vec![bob])).unwrap_err();
    assert!(matches!(err, KeyError::NoStanza { .. }), "{err}");
    assert!(err.to_string().contains("revoked"), "{err}");
    // An envelope whose key id names another key.
    let mut wrong = env.clone();
    wrong.key_id = DataKey::generate().unwrap().id();
    assert!(matches!(wrong.open(&with(vec![alice])).unwrap_err(), KeyError::WrongKey { .. }));
    assert!(matches!(
        KeyEnvelope::seal("cohort", &v, Scheme::Aes256Gcm, &key, &Wrappers::default()),
        Err(KeyError::NoWrapper)
    ));
}
