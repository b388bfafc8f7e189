use super::*;

fn tenants(limits: Limits) -> (Tenants, String) {
    let (key, line) = new_key().unwrap();
    let cfg = vec![TenantConfig {
        id: "vision".into(),
        name: Some("Vision team".into()),
        keys: vec![line],
        datasets: vec!["imagenet-*".into()],
        cert_names: vec!["vision-loader".into()],
        clearances: vec![],
        limits,
    }];
    let access = AccessConfig { public_datasets: vec!["open-*".into()], anonymous: Limits::default() };
    (Tenants::build(&cfg, &access).unwrap(), key)
}

#[test]
fn keys_identify_tenants_and_are_stored_hashed() {
    let (t, key) = tenants(Limits::default());
    let who = t.identify_key(Some(format!("Bearer {key}").as_bytes())).unwrap();
    assert_eq!(who.id.as_ref(), "vision");
    assert_eq!(t.identify_key(Some(format!("bearer   {key}").as_bytes())).unwrap().id.as_ref(), "vision");
    assert_eq!(t.identify_key(None).unwrap().id.as_ref(), ANONYMOUS);
    assert_eq!(
        t.identify_key(Some(b"Bearer sgk_wrong")).unwrap_err(),
        Denied::Unauthenticated("the API key is not valid")
    );
    assert!(t.identify_key(Some(format!("Basic {key}").as_bytes())).is_err());
    assert!(t.identify_key(Some(b"Bearer")).is_err());
    assert!(key.starts_with(KEY_PREFIX) && key.len() > 40);
    // The clear key appears nowhere in the config form.
    let (_, line) = new_key().unwrap();
    assert!(line.starts_with("blake3:") && line.len() == 7 + 64);
}

trait IdentifyKey {
    fn identify_key(&self, auth: Option<&[u8]>) -> Result<Arc<Tenant>, Denied>;
}

impl IdentifyKey for Tenants {
    fn identify_key(&self, auth: Option<&[u8]>) -> Result<Arc<Tenant>, Denied> {
        self.identify(auth, &[])
    }
}

#[test]
fn client_certificate_names_identify_tenants_when_no_key_is_given() {
    let (t, _) = tenants(Limits::default());
    let names = vec!["other.example".to_string(), "vision-loader".to_string()];
    assert_eq!(t.identify(None, &names).unwrap().id.as_ref(), "vision");
    assert_eq!(t.identify(None, &["stranger".to_string()]).unwrap().id.as_ref(), ANONYMOUS);
    // An explicit key wins, and a bad key is still refused.
    assert!(t.identify(Some(b"Bearer sgk_bad"), &names).is_err());
}

#[test]
fn dataset_access_answers() {
    let (t, key) = tenants(Limits::default());
    let vision = t.identify_key(Some(format!("Bearer {key}").as_bytes())).unwrap();
    let anon = t.identify_key(None).unwrap();
    assert!(t.authorize(&vision, "imagenet-mini").is_ok());
    assert!(t.authorize(&vision, "open-data").is_ok());
    assert_eq!(
        t.authorize(&vision, "medical"),
        Err(Denied::Forbidden { tenant: "vision".into(), dataset: "medical".into() })
    );
    assert!(t.authorize(&anon, "open-data").is_ok());
    assert!(matches!(t.authorize(&anon, "imagenet-mini"), Err(Denied::Unauthenticated(_))));
    // No tenants at all: an open gateway.
    let open = Tenants::build(&[], &AccessConfig::default()).unwrap();
    assert!(open.authorize(&open.identify_key(None).unwrap(), "anything").is_ok());
}

#[test]
fn request_rate_admits_the_burst_then_says_when_to_retry() {
    let (t, key) = tenants(Limits { request_rate: Some(2.0), request_burst: Some(3), ..Limits::default() });
    let v = t.identify_key(Some(format!("Bearer {key}").as_bytes())).unwrap();
    for _ in 0..3 {
        v.admit().unwrap();
    }
    match v.admit() {
        Err(Denied::RateLimited { tenant, retry_after }) => {
            assert_eq!(tenant, "vision");
            assert!(retry_after <= Duration::from_millis(500), "{retry_after:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bandwidth_shapes_by_bytes_and_splits_large_frames() {
    let limits =
        Limits { bandwidth: Some(ByteSize(1_000_000)), bandwidth_burst: Some(ByteSize(100_000)), ..Limits::default() };
    let (t, key) = tenants(limits);
    let v = t.identify_key(Some(format!("Bearer {key}").as_bytes())).unwrap();
    assert!(v.shapes_bandwidth());
    let t0 = std::time::Instant::now();
    // 100 KB of burst is free; the next 300 KB at 1 MB/s take at least 0.3 s.
    v.shape(400_000).await;
    assert!(t0.elapsed() >= Duration::from_millis(250), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn fast_bandwidth_caps_keep_their_resolution() {
    // Bytes as cells at 2 GiB/s would be a sub-nanosecond cell, which
    // governor's nanosecond clock cannot express; cells then stand for
    // several bytes. The cap must shape, not stall: 64 MiB at 2 GiB/s with
    // a one-second burst is immediate.
    for bps in [1u64 << 20, 100_000_000, 2 << 30, 40 << 30] {
        let b = super::Bandwidth::new(bps, None).unwrap();
        assert!(b.cell_interval(bps) >= Duration::from_nanos(9), "{bps}: {:?}", b.cell_interval(bps));
        assert_eq!(b.unit == 1, bps <= 100_000_000, "{bps}");
    }
    let limits = Limits { bandwidth: Some(ByteSize(2 << 30)), ..Limits::default() };
    let (t, key) = tenants(limits);
    let v = t.identify_key(Some(format!("Bearer {key}").as_bytes())).unwrap();
    let t0 = std::time::Instant::now();
    for _ in 0..256 {
        v.shape(256 * 1024).await;
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "64 MiB under a 2 GiB/s cap took {:?}", t0.elapsed());
}

#[test]
fn config_errors_name_the_key() {
    let base = TenantConfig {
        id: "a".into(),
        name: None,
        keys: vec![],
        datasets: vec![],
        cert_names: vec![],
        clearances: vec![],
        limits: Limits::default(),
    };
    let cases: Vec<(TenantConfig, &str)> = vec![
        (TenantConfig { id: "anonymous".into(), ..base.clone() }, "tenants[0].id"),
        (TenantConfig { keys: vec!["plaintext".into()], ..base.clone() }, "tenants[0].keys"),
        (TenantConfig { datasets: vec!["[".into()], ..base.clone() }, "tenants[0].datasets"),
        (
            TenantConfig { limits: Limits { request_rate: Some(0.0), ..Limits::default() }, ..base.clone() },
            "tenants[0].limits",
        ),
    ];
    for (cfg, key) in cases {
        let err = Tenants::build(&[cfg], &AccessConfig::default()).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
    let dup = Tenants::build(&[base.clone(), base], &AccessConfig::default()).unwrap_err().to_string();
    assert!(dup.contains("used twice"), "{dup}");
}
