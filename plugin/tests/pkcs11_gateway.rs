//! A gateway whose unwrapping key lives in a PKCS#11 token (SoftHSM2): the
//! data key is wrapped by the token at pack time and unwrapped by it when
//! the envelope is registered; the plaintext is served; an envelope without
//! the token's wrapping is refused with the reason.
//!
//! One test in its own binary: SoftHSM2 reads `SOFTHSM2_CONF` from the
//! environment, which is set once before any thread starts.
#![allow(clippy::unwrap_used, unsafe_code)]

mod support;

use std::path::Path;
use std::process::Command;

use shardgate::crypt::envelope::{KeyEnvelope, Wrappers};
use shardgate::crypt::pkcs11::{self, Pkcs11Config};
use shardgate::crypt::{DataKey, Scheme};
use shardgate::release::envelope::Envelope;
use shardgate::release::keys::PublisherKey;
use shardgate::release::pack::PackEncryption;
use shardgate::testing::MockOrigin;
use support::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[test]
fn a_gateway_unwraps_with_a_pkcs11_token_and_serves_plaintext() {
    assert!(Path::new(MODULE).exists(), "SoftHSM2 is installed by conf/test.sh (apt-get install softhsm2)");
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("tokens")).unwrap();
    let conf = d.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}/tokens\nobjectstore.backend = file\n", d.path().display()),
    )
    .unwrap();
    // SAFETY: set before any other thread of this test binary exists (one test, no runtime yet).
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "gw", "--pin", "4321", "--so-pin", "8765"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(d.path().join("pin"), "4321\n").unwrap();
    let cfg = Pkcs11Config {
        module: MODULE.into(),
        token_label: "gw".into(),
        pin_file: d.path().join("pin"),
        key_label: "kek".into(),
    };
    assert!(pkcs11::ensure_kek(&cfg).unwrap());

    let key = DataKey::generate().unwrap();
    let v: semver::Version = "1.0.0".parse().unwrap();
    let env =
        KeyEnvelope::seal("hsm", &v, Scheme::Aes256Gcm, &key, &Wrappers { age: vec![], pkcs11: Some(cfg.clone()) })
            .unwrap();
    assert!(env.age.is_none() && env.pkcs11.len() == 1);
    let plain = bytes_of(300_000, 7);
    let enc = PackEncryption { key, scheme: Scheme::Aes256Gcm, globs: vec![glob::Pattern::new("*").unwrap()] };
    let release = Release::pack_secure(
        "hsm",
        "1.0.0",
        &[("rows.bin", plain.clone())],
        64 * 1024,
        PublisherKey::generate().unwrap(),
        Envelope::default(),
        Some(enc),
        None,
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mock = MockOrigin::start(release.blobs.clone()).await;
        let mut gcfg = config_for(&release, &[&mock]);
        gcfg.keys.pkcs11 = Some(cfg.clone());
        let g = Served::start(gcfg).await;
        let st = g.gw.put_key_envelope(env.to_json()).await.unwrap();
        assert_eq!(st.reason, None, "{st:?}");
        let url = release.url(&g.base, "rows.bin");
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().as_ref(), plain.as_slice());
        let r = client().get(&url).header("range", "bytes=65000-70000").send().await.unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), &plain[65000..=70000]);
        // An envelope wrapped by another token key does not open here.
        let other = Pkcs11Config { key_label: "other".into(), ..cfg.clone() };
        assert!(pkcs11::ensure_kek(&other).unwrap());
        let k2 = KeyEnvelope::parse(&env.to_json())
            .unwrap()
            .open(&shardgate::crypt::envelope::Unwrappers { age: vec![], pkcs11: Some(cfg.clone()) });
        let k2 = k2.unwrap();
        let moved =
            KeyEnvelope::seal("hsm", &v, Scheme::Aes256Gcm, &k2, &Wrappers { age: vec![], pkcs11: Some(other) })
                .unwrap();
        let st = g.gw.put_key_envelope(moved.to_json()).await.unwrap();
        assert!(st.reason.as_deref().unwrap().contains("no wrapping this gateway's keys open"), "{st:?}");
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 403);
        g.shutdown().await;
    });
}
