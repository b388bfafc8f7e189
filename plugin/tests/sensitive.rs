//! Sensitive datasets through the gateway: encrypted files served as
//! plaintext to cleared tenants (ranges and ETag on the plaintext), the
//! ciphertext as a blob, revocation without touching the release, tampered
//! ciphertext never served, and policy refusals naming their rule.
#![allow(clippy::unwrap_used)]

mod support;

use shardgate::crypt::envelope::{KeyEnvelope, Wrappers};
use shardgate::crypt::{DataKey, Scheme};
use shardgate::policy::Policy;
use shardgate::release::envelope::Envelope;
use shardgate::release::keys::PublisherKey;
use shardgate::release::pack::PackEncryption;
use shardgate::testing::{Fault, MockOrigin};
use support::*;

const CHUNK: u64 = 64 * 1024;

struct Sealed {
    release: Release,
    envelope: KeyEnvelope,
    /// The gateway's age identity file.
    identity: std::path::PathBuf,
    gateway_id: age::x25519::Identity,
}

fn sealed(name: &str, files: &[(&str, Vec<u8>)], class: Option<&str>, policy: Option<Policy>) -> Sealed {
    let gateway_id = age::x25519::Identity::generate();
    let publisher_id = age::x25519::Identity::generate();
    let key = DataKey::generate().unwrap();
    let to = Wrappers { age: vec![gateway_id.to_public(), publisher_id.to_public()], pkcs11: None };
    let envelope = KeyEnvelope::seal(name, &"1.0.0".parse().unwrap(), Scheme::Aes256Gcm, &key, &to).unwrap();
    let enc = PackEncryption { key, scheme: Scheme::Aes256Gcm, globs: vec![glob::Pattern::new("secret/*").unwrap()] };
    let env = Envelope { compliance_class: class.map(str::to_string), ..Envelope::default() };
    let release =
        Release::pack_secure(name, "1.0.0", files, CHUNK, PublisherKey::generate().unwrap(), env, Some(enc), policy);
    let identity = release.dir.path().join("gateway.agekey");
    use age::secrecy::ExposeSecret;
    std::fs::write(&identity, format!("# test\n{}\n", gateway_id.to_string().expose_secret())).unwrap();
    Sealed { release, envelope, identity, gateway_id }
}

fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("secret/a.bin", bytes_of(5 * (CHUNK as usize - 16) + 1234, 1)),
        ("secret/b.bin", bytes_of(5 * (CHUNK as usize - 16) + 1234, 2)),
        ("secret/one.txt", b"a single short chunk".to_vec()),
        ("secret/empty", Vec::new()),
        ("public.txt", b"plain as day".to_vec()),
    ]
}

async fn serve(s: &Sealed, mock: &MockOrigin) -> Served {
    let mut cfg = config_for(&s.release, &[mock]);
    cfg.keys.age_identities = vec![s.identity.clone()];
    let g = Served::start(cfg).await;
    let st = g.gw.put_key_envelope(s.envelope.to_json()).await.unwrap();
    assert_eq!(st.reason, None);
    g
}

#[tokio::test]
async fn a_cleared_reader_gets_the_plaintext_with_ranges_and_etag_on_it() {
    let s = sealed("cohort", &files(), None, None);
    // What a node stores: no plaintext window of 4 KiB in any blob.
    for (path, plain) in &s.release.files {
        if !path.starts_with("secret/") || plain.len() < 4096 {
            continue;
        }
        for (_, blob) in &s.release.blobs {
            for w in plain.chunks(2048).filter(|c| c.len() == 2048) {
                assert!(!blob.windows(2048).any(|b| b == w), "plaintext of {path} in a published blob");
            }
        }
    }
    let mock = MockOrigin::start(s.release.blobs.clone()).await;
    let g = serve(&s, &mock).await;
    let c = client();
    for (path, plain) in &s.release.files {
        let url = s.release.url(&g.base, path);
        let resp = c.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let etag = resp.headers()["etag"].to_str().unwrap().to_string();
        assert_eq!(etag, format!("\"{}\"", blake3::hash(plain)), "{path}: the ETag is the plaintext's BLAKE3");
        assert_eq!(resp.headers()["content-length"], plain.len().to_string().as_str());
        if path.starts_with("secret/") {
            // Plaintext is for this reader only: no shared cache may keep it.
            assert_eq!(resp.headers()["cache-control"], "private, no-store", "{path}");
        } else {
            assert!(resp.headers()["cache-control"].to_str().unwrap().contains("immutable"));
        }
        assert_eq!(resp.bytes().await.unwrap().as_ref(), plain.as_slice(), "{path}");
        if plain.len() < 10 {
            continue;
        }
        // Ranges across segment boundaries, a suffix, the last byte.
        let seg = CHUNK - 16;
        let n = plain.len() as u64;
        for (a, b) in [(0, 0), (seg - 3, seg + 3), (seg, 2 * seg + 5), (n - 1, n - 1), (1, n - 2)] {
            if b >= n {
                continue;
            }
            let r = c.get(&url).header("range", format!("bytes={a}-{b}")).send().await.unwrap();
            assert_eq!(r.status(), 206);
            assert_eq!(r.headers()["content-range"], format!("bytes {a}-{b}/{n}").as_str());
            assert_eq!(r.bytes().await.unwrap().as_ref(), &plain[a as usize..=b as usize], "{path} {a}-{b}");
        }
        let r = c.get(&url).header("range", "bytes=-7").send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), &plain[plain.len() - 7..]);
        let r = c.get(&url).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(r.status(), 304);
        if path.starts_with("secret/") {
            assert_eq!(r.headers()["cache-control"], "private, no-store");
        }
    }
    // The stored ciphertext, by its public hash: checkable by anyone, no key needed.
    let entry = s.release.signed.manifest.file("secret/a.bin").unwrap();
    let blob = c.get(format!("{}/v1/blobs/{}", g.base, entry.blake3)).send().await.unwrap();
    assert_eq!(blob.status(), 200);
    assert_eq!(blob.headers()["content-type"], "application/octet-stream");
    let ct = blob.bytes().await.unwrap();
    assert_eq!(ct.len() as u64, entry.size);
    assert_eq!(blake3::hash(&ct).to_hex().as_str(), entry.blake3.to_hex());
    // Decrypted offline by a key holder, checked against the manifest.
    let key =
        s.envelope.open(&shardgate::crypt::envelope::Unwrappers { age: vec![s.gateway_id.clone()], pkcs11: None });
    let key = key.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("a.enc"), dir.path().join("a.bin"));
    std::fs::write(&input, &ct).unwrap();
    let digest = shardgate::crypt::file::decrypt_file(
        &s.release.signed.manifest,
        "secret/a.bin",
        &key,
        &input,
        &out,
        &shardgate::progress::Silent,
    )
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), s.release.files["secret/a.bin"]);
    assert_eq!(digest.to_hex(), blake3::hash(&s.release.files["secret/a.bin"]).to_hex().as_str());
    // A flipped ciphertext byte: refused offline too, and nothing is written.
    let mut bad = ct.to_vec();
    bad[100] ^= 1;
    std::fs::write(&input, &bad).unwrap();
    let out2 = dir.path().join("bad.bin");
    assert!(
        shardgate::crypt::file::decrypt_file(
            &s.release.signed.manifest,
            "secret/a.bin",
            &key,
            &input,
            &out2,
            &shardgate::progress::Silent
        )
        .is_err()
    );
    assert!(!out2.exists());
    g.shutdown().await;
}

/// `GET /v1/datasets` as the holder of `key` sees it.
async fn datasets_seen_by(base: &str, key: &str) -> serde_json::Value {
    let body = client().get(format!("{base}/v1/datasets")).bearer_auth(key).send().await.unwrap().bytes().await;
    serde_json::from_slice(&body.unwrap()).unwrap()
}

/// Reads `url` whole: `Ok(bytes)` only for a complete 200 body.
async fn read_whole(url: &str) -> Result<Vec<u8>, String> {
    let resp = client().get(url).send().await.map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    resp.bytes().await.map(|b| b.to_vec()).map_err(|e| format!("cut: {e}"))
}

#[tokio::test]
async fn tampered_ciphertext_is_refused_never_served() {
    let s = sealed("tamper", &files(), None, None);
    let m = &s.release.signed.manifest;
    let (a, b) = (m.file("secret/a.bin").unwrap(), m.file("secret/b.bin").unwrap());
    let blob = |h: &shardgate::release::manifest::Blake3| {
        s.release.blobs.iter().find(|(c, _)| *c == cid_for(h)).unwrap().1.clone()
    };
    let (ca, cb) = (blob(&a.blake3), blob(&b.blake3));
    let cs = CHUNK as usize;
    let swapped = [&ca[cs..2 * cs], &ca[..cs], &ca[2 * cs..]].concat();
    let moved = [&ca[..cs], &cb[cs..2 * cs], &ca[2 * cs..]].concat();
    let truncated = ca[..ca.len() - (ca.len() - 4 * cs)].to_vec();
    let plain = &s.release.files["secret/a.bin"];
    for (what, bytes, fault) in [
        ("a flipped bit", ca.to_vec(), Some(Fault::CorruptAt(3 * CHUNK + 17))),
        ("two chunks swapped", swapped, None),
        ("a chunk moved from another file", moved, None),
        ("a truncated file", truncated, None),
    ] {
        let mock = MockOrigin::start(s.release.blobs.clone()).await;
        mock.insert_blob(&cid_for(&a.blake3), bytes.into());
        if let Some(f) = fault {
            mock.set_fault(Some(&cid_for(&a.blake3)), Some(f));
        }
        let g = serve(&s, &mock).await;
        let got = read_whole(&s.release.url(&g.base, "secret/a.bin")).await;
        assert!(got.is_err(), "{what}: served a whole body");
        // A range inside a good chunk before the damage is still served, verified.
        let r =
            client().get(s.release.url(&g.base, "secret/a.bin")).header("range", "bytes=10-99").send().await.unwrap();
        if what != "two chunks swapped" {
            assert_eq!(r.status(), 206, "{what}");
            assert_eq!(r.bytes().await.unwrap().as_ref(), &plain[10..100], "{what}");
        } else {
            assert_eq!(r.status(), 502, "{what}: chunk 0 is not chunk 0");
        }
        assert!(g.metric("shardgate_checksum_failures") + g.metric("shardgate_responses_aborted") > 0.0, "{what}");
        g.shutdown().await;
    }
}

#[tokio::test]
async fn revocation_refuses_with_the_reason_and_leaves_the_release_alone() {
    let s = sealed("revoke", &files(), None, None);
    let mock = MockOrigin::start(s.release.blobs.clone()).await;
    let g = serve(&s, &mock).await;
    let url = s.release.url(&g.base, "secret/a.bin");
    assert_eq!(read_whole(&url).await.unwrap(), s.release.files["secret/a.bin"]);
    let stored: Vec<_> = s.release.blobs.iter().map(|(c, b)| (c.clone(), blake3::hash(b))).collect();

    // 1. The envelope destroyed.
    let st = g.gw.delete_key_envelope("revoke", "1.0.0").await.unwrap();
    assert!(st.reason.as_deref().unwrap().contains("no key envelope"), "{st:?}");
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("cannot be decrypted here") && body.contains("no key envelope"), "{body}");
    // Plain files and the ciphertext blob are unaffected.
    assert_eq!(read_whole(&s.release.url(&g.base, "public.txt")).await.unwrap(), b"plain as day");

    // 2. Wrapped again without the gateway's recipient.
    let publisher_only = age::x25519::Identity::generate();
    let key = s
        .envelope
        .open(&shardgate::crypt::envelope::Unwrappers { age: vec![s.gateway_id.clone()], pkcs11: None })
        .unwrap();
    let to = Wrappers { age: vec![publisher_only.to_public()], pkcs11: None };
    let without = KeyEnvelope::seal("revoke", &"1.0.0".parse().unwrap(), Scheme::Aes256Gcm, &key, &to).unwrap();
    let st = g.gw.put_key_envelope(without.to_json()).await.unwrap();
    assert!(st.reason.as_deref().unwrap().contains("revoked"), "{st:?}");
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("no wrapping this gateway's keys open"));

    // 3. Restored, then the gateway's wrapping key rotated by a reload.
    g.gw.put_key_envelope(s.envelope.to_json()).await.unwrap();
    assert_eq!(read_whole(&url).await.unwrap(), s.release.files["secret/a.bin"]);
    let rotated = s.release.dir.path().join("rotated.agekey");
    use age::secrecy::ExposeSecret;
    std::fs::write(&rotated, format!("{}\n", age::x25519::Identity::generate().to_string().expose_secret())).unwrap();
    let mut cfg = g.gw.config().as_ref().clone();
    cfg.keys.age_identities = vec![rotated];
    g.gw.reload(cfg).await.unwrap();
    assert_eq!(client().get(&url).send().await.unwrap().status(), 403);

    // The release itself never changed.
    let after: Vec<_> = s.release.blobs.iter().map(|(c, b)| (c.clone(), blake3::hash(b))).collect();
    assert_eq!(stored, after);
    g.shutdown().await;
}

#[tokio::test]
async fn a_revocation_stops_a_body_that_is_streaming() {
    let big = vec![("secret/big.bin", bytes_of(40 * CHUNK as usize, 9))];
    let s = sealed("midstream", &big, None, None);
    let mock = MockOrigin::start(s.release.blobs.clone()).await;
    let file = s.release.signed.manifest.file("secret/big.bin").unwrap().blake3;
    // The origin pauses after a few chunks, so the body is mid-stream (not in socket buffers) when the key goes.
    mock.set_fault(
        Some(&cid_for(&file)),
        Some(Fault::StallAfter { bytes: 3 * CHUNK, dur: std::time::Duration::from_millis(300) }),
    );
    let mut cfg = config_for(&s.release, &[&mock]);
    cfg.keys.age_identities = vec![s.identity.clone()];
    cfg.fetch.stall_timeout = std::time::Duration::from_secs(5);
    cfg.fetch.readahead_chunks = 1;
    let g = Served::start(cfg).await;
    g.gw.put_key_envelope(s.envelope.to_json()).await.unwrap();
    let resp = client().get(s.release.url(&g.base, "secret/big.bin")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    use futures_util::StreamExt;
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    g.gw.delete_key_envelope("midstream", "1.0.0").await.unwrap();
    let (rest, cut) = drain_body(&mut stream).await;
    assert!(cut, "the body ran to its end after the key was revoked");
    assert!((first.len() as u64 + rest) < 40 * CHUNK - 16 * 40);
    g.shutdown().await;
}

fn policy_text(security: &PublisherKey, legal: &PublisherKey) -> String {
    format!(
        r#"
default_class = "public"
[roles]
security = ["{}"]
legal = ["{}"]
[classes.public]
[classes.pii]
plaintext_allowed = false
clearance_required = true
signoffs = {{ security = 1, legal = 1 }}
"#,
        security.public(),
        legal.public()
    )
}

#[tokio::test]
async fn policy_classes_are_enforced_by_pack_registration_and_serving() {
    let (sec, legal) = (PublisherKey::generate().unwrap(), PublisherKey::generate().unwrap());
    let text = policy_text(&sec, &legal);
    let policy = Policy::parse(&text).unwrap();
    // pack: a pii release with a plain file and no key is refused, naming the rule, and nothing is written.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("x.bin"), b"personal").unwrap();
    let out = dir.path().join("out");
    let opts = shardgate::release::pack::PackOptions {
        dir: src,
        name: "people".into(),
        version: "1.0.0".parse().unwrap(),
        out: out.clone(),
        envelope: Envelope { compliance_class: Some("pii".into()), ..Envelope::default() },
        parent: None,
        chunk_size: CHUNK,
        format: shardgate::release::pack::PackFormat::Files,
        created_at: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
        drift: None,
        encryption: None,
        policy: Some(policy.clone()),
    };
    let e = shardgate::release::pack::pack(&opts, &PublisherKey::generate().unwrap(), &shardgate::progress::Silent)
        .unwrap_err();
    assert!(e.to_string().contains("classes.pii.plaintext_allowed"), "{e}");
    assert!(!out.exists(), "a refused pack wrote {}", out.display());
    let e = shardgate::release::pack::pack(
        &shardgate::release::pack::PackOptions {
            envelope: Envelope { compliance_class: Some("nope".into()), ..Envelope::default() },
            ..opts
        },
        &PublisherKey::generate().unwrap(),
        &shardgate::progress::Silent,
    )
    .unwrap_err();
    assert!(e.to_string().contains("rule `classes`"), "{e}");

    // A pii release: every file encrypted by the policy's rule, no sign-offs yet.
    let s = sealed(
        "people",
        &[("secret/x.bin", bytes_of(3000, 4)), ("all.bin", bytes_of(500, 5))],
        Some("pii"),
        Some(policy),
    );
    assert!(
        s.release.signed.manifest.files.iter().all(|f| f.encryption.is_some()),
        "plaintext_allowed = false encrypts every file"
    );
    let pol_path = s.release.dir.path().join("policy.toml");
    std::fs::write(&pol_path, &text).unwrap();
    let other =
        sealed("people2", &[("secret/y.bin", bytes_of(100, 6))], Some("pii"), Some(Policy::parse(&text).unwrap()));
    let mock = MockOrigin::start(s.release.blobs.clone()).await;
    let mut cfg = config_for(&s.release, &[&mock]);
    cfg.keys.age_identities = vec![s.identity.clone()];
    cfg.policy.path = Some(pol_path.clone());
    cfg.trust.keys.push(other.release.key.public().to_string());
    let g = Served::start(cfg.clone()).await;
    g.gw.put_key_envelope(s.envelope.to_json()).await.unwrap();
    // Configured, but without sign-offs: refused with the rule, and hidden from discovery.
    let r = client().get(s.release.url(&g.base, "all.bin")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("classes.pii.signoffs.legal"), "{body}");
    let list: serde_json::Value = client()
        .get(format!("{}/v1/datasets", g.base))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    assert!(list["datasets"].as_array().unwrap().is_empty(), "{list}");
    let ready = client().get(format!("{}/readyz", g.base)).send().await.unwrap().text().await.unwrap();
    assert!(ready.contains("classes.pii.signoffs"), "{ready}");
    // Registration of the same kind of release is refused too, naming the rule.
    let e = g.gw.register_release(other.release.signed.bytes.clone(), None).await.unwrap_err();
    assert!(e.to_string().contains("classes.pii.signoffs"), "{e}");
    g.shutdown().await;

    // Two sign-offs, then served to a cleared tenant only.
    let mut m = s.release.signed.manifest.clone();
    let at = jiff::Timestamp::from_second(1_700_000_100).unwrap();
    m.approve(&sec, "security", at);
    m.approve(&legal, "legal", at);
    let approved = m.to_signed().unwrap();
    assert_eq!(approved.manifest.valid_approvals().len(), 2);
    std::fs::write(s.release.out.join("manifest.json"), &approved.bytes).unwrap();
    // A sign-off changes the release id: the placement follows (as publishing after approval would write it).
    let pp = s.release.out.join("placement.json");
    let mut placement: serde_json::Value = serde_json::from_slice(&std::fs::read(&pp).unwrap()).unwrap();
    placement["manifest_blake3"] = approved.id.to_hex().into();
    placement["manifest_cid"] = cid_for(&approved.id).into();
    std::fs::write(&pp, serde_json::to_vec(&placement).unwrap()).unwrap();
    let mut blobs = s.release.blobs.clone();
    blobs.push((cid_for(&approved.id), approved.bytes.clone().into()));
    let mock = MockOrigin::start(blobs).await;
    let mut cfg = cfg.clone();
    cfg.origins = config_for(&s.release, &[&mock]).origins;
    let (cleared, plain_key) = (shardgate::tenant::new_key().unwrap(), shardgate::tenant::new_key().unwrap());
    cfg.tenants = vec![
        serde_json::from_value(
            serde_json::json!({"id": "research", "keys": [cleared.1], "datasets": ["*"], "clearances": ["pii"]}),
        )
        .unwrap(),
        serde_json::from_value(serde_json::json!({"id": "intern", "keys": [plain_key.1], "datasets": ["*"]})).unwrap(),
    ];
    let g = Served::start(cfg).await;
    g.gw.put_key_envelope(s.envelope.to_json()).await.unwrap();
    let url = s.release.url(&g.base, "secret/x.bin");
    let ok = client().get(&url).bearer_auth(&cleared.0).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.bytes().await.unwrap().as_ref(), s.release.files["secret/x.bin"].as_slice());
    let no = client().get(&url).bearer_auth(&plain_key.0).send().await.unwrap();
    assert_eq!(no.status(), 403);
    let why = no.text().await.unwrap();
    assert!(why.contains("tenant intern is not cleared for class") && why.contains("pii"), "{why}");
    // Nor by blob: a class that needs a clearance needs it for every byte of the release.
    let h = s.release.signed.manifest.file("all.bin").unwrap().blake3;
    let blob = client().get(format!("{}/v1/blobs/{h}", g.base)).bearer_auth(&plain_key.0).send().await.unwrap();
    assert_eq!(blob.status(), 403);
    let blob = client().get(format!("{}/v1/blobs/{h}", g.base)).bearer_auth(&cleared.0).send().await.unwrap();
    assert_eq!(blob.status(), 200);
    // Nor the CIDs that lead to every byte of it from any node.
    let placement = format!("{}/v1/datasets/people/{}/placement", g.base, s.release.signed.manifest.version);
    let no = client().get(&placement).bearer_auth(&plain_key.0).send().await.unwrap();
    assert_eq!(no.status(), 403);
    let yes = client().get(&placement).bearer_auth(&cleared.0).send().await.unwrap();
    assert_eq!(yes.status(), 200);
    assert_eq!(yes.headers()["cache-control"], "no-cache");
    let described =
        client().get(format!("{}/v1/datasets/people", g.base)).bearer_auth(&plain_key.0).send().await.unwrap();
    assert_eq!(described.status(), 404, "an uncleared tenant learns nothing of the dataset");
    let seen = datasets_seen_by(&g.base, &plain_key.0).await;
    assert!(seen["datasets"].as_array().unwrap().is_empty(), "discovery shows an uncleared tenant {seen}");
    let seen = datasets_seen_by(&g.base, &cleared.0).await;
    assert_eq!(seen["datasets"].as_array().unwrap().len(), 1, "{seen}");
    g.shutdown().await;
}

#[test]
fn a_webdataset_pack_encrypts_every_shard_when_a_member_must_be() {
    let policy = Policy::parse("default_class = \"internal\"\n[classes.internal]\nencrypt = [\"logs/*\"]\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("logs")).unwrap();
    std::fs::create_dir_all(src.join("img")).unwrap();
    std::fs::write(src.join("logs/000.jsonl"), b"{\"user\": \"x\"}\n").unwrap();
    std::fs::write(src.join("img/000.jpg"), bytes_of(70_000, 1)).unwrap();
    let opts = |out: &str, encryption| shardgate::release::pack::PackOptions {
        dir: src.clone(),
        name: "wds".into(),
        version: "1.0.0".parse().unwrap(),
        out: dir.path().join(out),
        envelope: Envelope::default(),
        parent: None,
        chunk_size: CHUNK,
        format: shardgate::release::pack::PackFormat::WebDataset { shard_size: 64 * 1024 },
        created_at: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
        drift: None,
        encryption,
        policy: Some(policy.clone()),
    };
    let key = PublisherKey::generate().unwrap();
    let e = shardgate::release::pack::pack(&opts("plain", None), &key, &shardgate::progress::Silent).unwrap_err();
    let e = e.to_string();
    assert!(e.contains("classes.internal.encrypt (logs/*)") && e.contains("logs/000.jsonl"), "{e}");
    assert!(!dir.path().join("plain").exists());
    let enc = PackEncryption { key: DataKey::generate().unwrap(), scheme: Scheme::XChaCha20Poly1305, globs: vec![] };
    let out = shardgate::release::pack::pack(&opts("sealed", Some(enc)), &key, &shardgate::progress::Silent).unwrap();
    let files = &out.manifest.manifest.files;
    assert!(files.len() >= 2, "{files:?}");
    assert!(files.iter().all(|f| f.encryption.is_some()), "every shard is encrypted");
}

#[tokio::test]
async fn the_plaintext_tier_serves_hot_reads_and_forgets_a_withdrawn_key() {
    let s = sealed("plaintier", &files(), None, None);
    let mock = MockOrigin::start(s.release.blobs.clone()).await;
    let g = serve(&s, &mock).await;
    let url = s.release.url(&g.base, "secret/a.bin");
    let plain = &s.release.files["secret/a.bin"];
    assert_eq!(&read_whole(&url).await.unwrap(), plain);
    let held = g.gw.fetcher().plain_bytes();
    assert!(held >= plain.len() as u64 - CHUNK, "decrypted segments are kept: {held} bytes");
    let before = g.metric("shardgate_plain_tier_hits");
    let r = client().get(&url).header("range", format!("bytes={}-{}", CHUNK, 3 * CHUNK)).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), &plain[CHUNK as usize..=3 * CHUNK as usize]);
    assert!(g.metric("shardgate_plain_tier_hits") >= before + 3.0, "a hot range decrypts nothing");
    // A withdrawn key takes its plaintext with it.
    g.gw.delete_key_envelope("plaintier", "1.0.0").await.unwrap();
    assert_eq!(client().get(&url).send().await.unwrap().status(), 403);
    assert_eq!(g.gw.fetcher().plain_bytes(), 0, "plaintext of a revoked key stays in memory");
    // Restored: decrypted again under a new generation; a takedown purges it.
    g.gw.put_key_envelope(s.envelope.to_json()).await.unwrap();
    assert_eq!(&read_whole(&url).await.unwrap(), plain);
    assert!(g.gw.fetcher().plain_bytes() > 0);
    g.gw.takedown("plaintier", "1.0.0", "consent withdrawn").await.unwrap();
    assert_eq!(client().get(&url).send().await.unwrap().status(), 451);
    assert_eq!(g.gw.fetcher().plain_bytes(), 0, "a takedown leaves plaintext in memory");
    g.shutdown().await;
}
