use rust_decimal::Decimal;

use super::*;

const GOOD: &str = include_str!("../../../conf/pricing.toml");

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn with(replace: &str, by: &str) -> String {
    assert!(GOOD.contains(replace), "{replace:?} is not in conf/pricing.toml");
    GOOD.replacen(replace, by, 1)
}

fn err_of(text: &str) -> String {
    Pricing::parse(text).unwrap_err().to_string()
}

#[test]
fn the_shipped_file_parses() {
    let p = Pricing::parse(GOOD).unwrap();
    assert_eq!(p.currency, "USD");
    assert_eq!(p.storage_ubtt_per_gib_day, d("125000"));
    assert_eq!(p.min_contract_days, 30);
    assert_eq!(p.replication, Replication::Copies { copies: 3 });
    assert_eq!(p.retrieval_ubtt_per_mib, d("2500"));
    assert_eq!(p.labor_per_release, d("120"));
    assert_eq!(p.fiat_rate, d("0.00000065"));
    assert_eq!(p.rate_date, jiff::civil::date(2026, 11, 20));
    assert_eq!(p.risk_buffer_percent, d("25"));
}

#[test]
fn both_storage_units_give_the_same_price() {
    let monthly = with("price_ubtt_per_gib_day = 125000", "price_btt_per_gib_month = 3.75");
    let p = Pricing::parse(&monthly).unwrap();
    assert_eq!(p.storage_ubtt_per_gib_day, d("125000"));
    // A float that is not exact in binary is read as written.
    let p = Pricing::parse(&with("price_ubtt_per_gib_day = 125000", "price_ubtt_per_gib_day = 0.1")).unwrap();
    assert_eq!(p.storage_ubtt_per_gib_day, d("0.1"));
}

#[test]
fn bad_or_missing_values_name_the_key() {
    let cases = [
        (with("currency = \"USD\"", "currency = \"dollars\""), "`currency`"),
        (with("price_ubtt_per_gib_day = 125000\n", ""), "`storage.price_ubtt_per_gib_day`: missing"),
        (
            with("price_ubtt_per_gib_day = 125000", "price_ubtt_per_gib_day = 1\nprice_btt_per_gib_month = 2"),
            "not both",
        ),
        (with("price_ubtt_per_gib_day = 125000", "price_ubtt_per_gib_day = -5"), "`storage.price_ubtt_per_gib_day`"),
        (
            with("price_ubtt_per_gib_day = 125000", "price_ubtt_per_gib_day = \"lots\""),
            "storage.price_ubtt_per_gib_day",
        ),
        (with("min_contract_days = 30", "min_contract_days = 0"), "`storage.min_contract_days`"),
        (with("min_contract_days = 30\n", ""), "storage"),
        (with("copies = 3", "copies = 0"), "`replication.copies`"),
        (with("copies = 3", "data_shards = 10"), "`replication.parity_shards`: missing"),
        (with("copies = 3", "copies = 3\ndata_shards = 10\nparity_shards = 2"), "not both"),
        (with("price_ubtt_per_mib = 2500", "price_ubtt_per_mib = -1"), "`retrieval.price_ubtt_per_mib`"),
        (with("fiat_rate = \"0.00000065\"", "fiat_rate = 0"), "`btt.fiat_rate`"),
        (with("rate_date = 2026-11-20", "rate_date = 2026-11-20T10:00:00Z"), "`btt.rate_date`"),
        (with("rate_date = 2026-11-20", "rate_date = \"last week\""), "btt.rate_date"),
        (with("risk_buffer_percent = 25", "risk_buffer_percent = -3"), "`btt.risk_buffer_percent`"),
        (with("[operations]", "[operations]\nsurprise = 1"), "surprise"),
        (
            with("price_ubtt_per_gib_day = 125000", "price_ubtt_per_gib_day = 1e20"),
            "`storage.price_ubtt_per_gib_day`: 100000000000000000000 is above",
        ),
        (with("fiat_rate = \"0.00000065\"", "fiat_rate = 5000000"), "`btt.fiat_rate`"),
        ("currency = \"USD\"\n".to_string(), "storage"),
        ("not toml [".to_string(), "pricing file"),
    ];
    for (text, want) in cases {
        let e = err_of(&text);
        assert!(e.contains(want), "expected {want:?} in {e:?}");
    }
}

#[test]
fn reed_solomon_replication() {
    let rs = with("copies = 3", "data_shards = 10\nparity_shards = 20");
    let p = Pricing::parse(&rs).unwrap();
    assert_eq!(p.replication, Replication::ReedSolomon { data: 10, parity: 20 });
    assert_eq!(p.replication.factor(), d("3"));
}

#[test]
fn a_release_costs_what_the_units_say() {
    let p = Pricing::parse(GOOD).unwrap();
    // 10 GiB of files, stored as exactly 10 GiB, kept 2 months, read 4 times.
    let size = ReleaseSize { file_bytes: 10 << 30, stored_bytes: 10 << 30 };
    let c = p.release_cost(size, 2, 4);
    assert_eq!(c.billed_days, 60);
    // 10 GiB x 3 copies x 0.125 BTT/day x 60 days.
    assert_eq!(c.storage.btt, d("225"));
    assert_eq!(c.per_replica.btt, d("75"));
    // 3.75 BTT per GiB-month per copy, three copies.
    assert_eq!(c.per_gib_month.btt, d("11.25"));
    // 10240 MiB x 2500 µBTT.
    assert_eq!(c.per_training_run.btt, d("25.6"));
    assert_eq!(c.retrieval.btt, d("102.4"));
    assert_eq!(c.operations.fiat, d("120"));
    assert_eq!(c.operations.fiat_buffered, d("120"));
    assert_eq!(c.total.btt, d("327.4"));
    // 327.4 BTT at 0.00000065, then +25%; labour is added as is.
    assert_eq!(c.storage.fiat, d("0.00014625"));
    assert_eq!(c.total.fiat, d("327.4") * d("0.00000065") + d("120"));
    assert_eq!(c.total.fiat_buffered, d("327.4") * d("0.00000065") * d("1.25") + d("120"));
    assert_eq!(c.stored_with_replication_bytes, 30 << 30);
}

#[test]
fn storage_is_never_billed_below_the_minimum_contract() {
    let p = Pricing::parse(&with("min_contract_days = 30", "min_contract_days = 90")).unwrap();
    assert_eq!(p.billed_days(1), 90);
    assert_eq!(p.billed_days(4), 120);
    let size = ReleaseSize { file_bytes: 1 << 30, stored_bytes: 1 << 30 };
    assert_eq!(p.release_cost(size, 1, 0).storage.btt, d("33.75"));
    assert_eq!(p.release_cost(size, 1, 0).retrieval.btt, Decimal::ZERO);
}

#[test]
fn the_largest_accepted_prices_do_not_overflow() {
    let huge = GOOD
        .replace("price_ubtt_per_gib_day = 125000", "price_ubtt_per_gib_day = 1000000000")
        .replace("copies = 3", "data_shards = 1\nparity_shards = 256")
        .replace("price_ubtt_per_mib = 2500", "price_ubtt_per_mib = 1000000000")
        .replace("fiat_rate = \"0.00000065\"", "fiat_rate = 1000000")
        .replace("risk_buffer_percent = 25", "risk_buffer_percent = 1000");
    let p = Pricing::parse(&huge).unwrap();
    let size = ReleaseSize { file_bytes: 1 << 60, stored_bytes: 1 << 60 };
    let c = p.release_cost(size, u32::MAX, u32::MAX);
    assert_eq!(c.billed_days, MAX_MONTHS * DAYS_PER_MONTH);
    assert!(c.total.fiat_buffered > Decimal::ZERO);
    assert!(p.retrieval(u64::MAX).fiat_buffered > Decimal::ZERO);
    // Beyond any real figure, sums saturate rather than panic.
    let s = p.storage(u64::MAX, 3650);
    assert!(s.fiat_buffered > Decimal::ZERO);
    let max = Money { btt: Decimal::MAX, fiat: Decimal::MAX, fiat_buffered: Decimal::MAX };
    assert_eq!(max + s, max);
    assert_eq!(p.btt(Decimal::MAX).fiat_buffered, Decimal::MAX);
}

#[test]
fn money_rounds_for_people() {
    let m = Money { btt: d("1.23456789"), fiat: d("0.000000123456789"), fiat_buffered: d("10.500000") };
    let r = m.rounded();
    assert_eq!(r.btt.to_string(), "1.234568");
    assert_eq!(r.fiat.to_string(), "0.0000001235");
    assert_eq!(r.fiat_buffered.to_string(), "10.5");
}
