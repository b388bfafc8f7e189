use super::*;

#[test]
fn defaults_and_overrides() {
    let c = Config::from_toml(
        r#"
        [server]
        listen = "127.0.0.1:9000"
        header_read_timeout = "2m"
        [hot_tier]
        capacity = "64MiB"
        [[origins]]
        kind = "btfs-api"
        url = "http://127.0.0.1:5001"
        token = "t"
        [[origins]]
        kind = "dir"
        path = "releases"
        "#,
    )
    .unwrap();
    assert_eq!(c.server.listen.port(), 9000);
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(120));
    assert_eq!(c.hot_tier.capacity.0, 64 << 20);
    assert_eq!(c.fetch.span.0, 4 << 20);
    match &c.origins[0] {
        OriginConfig::BtfsApi { api_prefix, .. } => assert_eq!(api_prefix, "/api/v1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.origins[1].name(1), "dir-1");
}

#[test]
fn errors_name_the_key() {
    let cases = [
        ("[server]\nlisten = \"nope\"", "server.listen"),
        ("[server]\nbogus = 1", "bogus"),
        ("[hot_tier]\ncapacity = \"lots\"", "hot_tier.capacity"),
        ("[[origins]]\nkind = \"ftp\"\nurl = \"x\"", "origins"),
        ("[[origins]]\nkind = \"btfs-api\"\nurl = \"not a url\"", "origins[0].url"),
        ("[fetch]\nspan = \"1KiB\"", "fetch.span"),
        ("[trust]\nkeys = [\"ed25519:AAAA\"]", "trust.keys[0]"),
        ("[server]\nmax_connections = 0", "server.max_connections"),
        ("[server]\nheader_read_timeout = \"soon\"", "server.header_read_timeout"),
        ("[[pin_health.nodes]]\nurl = \"http://\"", "pin_health.nodes[0].url"),
        (
            "[[pin_health.nodes]]\nurl = \"http://127.0.0.1:5001\"\n[[pin_health.spares]]\nurl = \"http://127.0.0.1:5001/\"",
            "pin_health.spares[0].url",
        ),
        ("[reports]\npeers = [\"http://a:8080\"]", "reports.peer_token_file"),
        ("[reports]\npeers = [\"http://u:secret@a:8080\"]\npeer_token_file = \"t\"", "reports.peers[0]"),
        ("[reports]\npeers = [\"http://a:8080/?x=1\"]\npeer_token_file = \"t\"", "reports.peers[0]"),
        ("[reports]\npeers = [\"http://a:8080\", \"http://a:8080/\"]\npeer_token_file = \"t\"", "reports.peers[1]"),
        ("[reports]\npeers = [\"ftp://a\"]\npeer_token_file = \"t\"", "reports.peers[0]"),
    ];
    for (text, key) in cases {
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text:?}: {err}");
    }
}

/// Every example config that ships in conf/ parses and validates.
#[test]
fn every_shipped_config_parses() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf");
    let mut seen = 0;
    for entry in std::fs::read_dir(&conf).unwrap() {
        let path = entry.unwrap().path();
        // pricing.toml and policy.toml are not gateway configs (each has its own test).
        if path.extension().is_some_and(|e| e == "toml")
            && path.file_name().is_some_and(|n| n != "pricing.toml" && n != "policy.toml")
        {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 2, "no example configs found in {}", conf.display());
}

#[test]
fn the_documented_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/shardgate.toml");
    let c = Config::load(&path).unwrap();
    c.validate().unwrap();
    let pricing = c.usage.pricing.clone().unwrap();
    assert!(pricing.ends_with("conf/pricing.toml"), "{}", pricing.display());
    crate::pricing::Pricing::load(&pricing).unwrap();
    assert_eq!(c.reports.finance_tokens.len(), 1);
    assert_eq!(c.reports.manifest_p99_objective, Duration::from_millis(50));
}
