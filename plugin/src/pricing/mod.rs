//! The BTT cost model: prices as operators write them (`conf/pricing.toml`),
//! checked and normalised, and the arithmetic that turns bytes into BTT and
//! fiat.
//!
//! Money is [`Decimal`] throughout, never floating point: a chargeback line
//! must come out the same however its bytes are grouped. Units:
//! - storage is normalised to µBTT per GiB per day, the unit BTFS hosts
//!   announce (`--host-storage-price`); a month is 30 days;
//! - retrieval is µBTT per MiB (`--host-bandwidth-price`);
//! - operations labour is fiat per release;
//! - `fiat_rate` is the price of one BTT in `currency`.

#[cfg(test)]
mod tests;

use std::path::Path;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Days in a billing month.
pub const DAYS_PER_MONTH: u32 = 30;
/// Longest period the model prices: a century.
pub const MAX_MONTHS: u32 = 1200;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("pricing file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("pricing file {path}: {why}")]
    Parse { path: String, why: String },
    #[error("pricing key `{key}`: {why}")]
    Invalid { key: String, why: String },
}

fn invalid(key: &str, why: impl Into<String>) -> PricingError {
    PricingError::Invalid { key: key.into(), why: why.into() }
}

/// A decimal written as a TOML integer, float or string (`"0.00000065"`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Amount(Decimal);

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            I(i64),
            F(f64),
            S(String),
        }
        let parse = |s: &str| {
            s.trim().parse::<Decimal>().map_err(|e| serde::de::Error::custom(format!("{s:?} is not a number: {e}")))
        };
        match Raw::deserialize(d)? {
            Raw::I(i) => Ok(Amount(Decimal::from(i))),
            // The shortest text that reads back as the same float is what the
            // operator wrote (0.375, not 0.37499999...).
            Raw::F(f) if f.is_finite() => parse(&f.to_string()).map(Amount),
            Raw::F(f) => Err(serde::de::Error::custom(format!("{f} is not a finite number"))),
            Raw::S(s) => parse(&s).map(Amount),
        }
    }
}

/// The file as written. Every table is required; within `[storage]` exactly
/// one of the two price keys is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPricing {
    currency: String,
    storage: RawStorage,
    replication: RawReplication,
    retrieval: RawRetrieval,
    operations: RawOperations,
    btt: RawBtt,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    price_ubtt_per_gib_day: Option<Amount>,
    price_btt_per_gib_month: Option<Amount>,
    min_contract_days: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplication {
    copies: Option<u32>,
    data_shards: Option<u32>,
    parity_shards: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetrieval {
    price_ubtt_per_mib: Amount,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperations {
    labor_per_release: Amount,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBtt {
    fiat_rate: Amount,
    rate_date: toml::value::Datetime,
    risk_buffer_percent: Amount,
}

/// How a release is stored on BTFS hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Replication {
    /// Whole copies on separate hosts.
    Copies { copies: u32 },
    /// Reed-Solomon shards: any `data` of `data + parity` rebuild the file.
    ReedSolomon { data: u32, parity: u32 },
}

impl Replication {
    /// Bytes stored per byte of the release.
    pub fn factor(&self) -> Decimal {
        match *self {
            Replication::Copies { copies } => Decimal::from(copies),
            Replication::ReedSolomon { data, parity } => Decimal::from(data + parity) / Decimal::from(data),
        }
    }

    pub fn describe(&self) -> String {
        match *self {
            Replication::Copies { copies: 1 } => "1 copy".into(),
            Replication::Copies { copies } => format!("{copies} copies"),
            Replication::ReedSolomon { data, parity } => format!("Reed-Solomon {data}+{parity}"),
        }
    }
}

/// Checked prices, with storage in µBTT per GiB per day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pricing {
    pub currency: String,
    pub storage_ubtt_per_gib_day: Decimal,
    pub min_contract_days: u32,
    pub replication: Replication,
    pub retrieval_ubtt_per_mib: Decimal,
    pub labor_per_release: Decimal,
    /// Price of one BTT in `currency`.
    pub fiat_rate: Decimal,
    pub rate_date: jiff::civil::Date,
    pub risk_buffer_percent: Decimal,
}

/// An amount in BTT, in fiat at the rate, and in fiat with the risk buffer.
/// Arithmetic saturates at `Decimal::MAX` (about 7.9e28) instead of
/// panicking; the price bounds keep any real figure far below it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub btt: Decimal,
    pub fiat: Decimal,
    pub fiat_buffered: Decimal,
}

impl std::ops::Add for Money {
    type Output = Money;
    fn add(self, o: Money) -> Money {
        Money {
            btt: self.btt.saturating_add(o.btt),
            fiat: self.fiat.saturating_add(o.fiat),
            fiat_buffered: self.fiat_buffered.saturating_add(o.fiat_buffered),
        }
    }
}

impl Money {
    /// Rounded for reports, half to even: BTT to the µBTT, fiat to 10 decimal
    /// places (at BTT's price, a small bill is a fraction of a cent), no
    /// trailing zeros.
    pub fn rounded(&self) -> Money {
        Money {
            btt: self.btt.round_dp(6).normalize(),
            fiat: self.fiat.round_dp(10).normalize(),
            fiat_buffered: self.fiat_buffered.round_dp(10).normalize(),
        }
    }
}

fn ubtt(n: Decimal) -> Decimal {
    n / Decimal::from(1_000_000)
}

fn units(bytes: u64, unit: u64) -> Decimal {
    Decimal::from(bytes) / Decimal::from(unit)
}

impl Pricing {
    /// Reads and checks a pricing file. Errors name the file, and the key
    /// where one is at fault.
    pub fn load(path: &Path) -> Result<Self, PricingError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PricingError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|e| match e {
            PricingError::Parse { why, .. } => PricingError::Parse { path: path.display().to_string(), why },
            other => other,
        })
    }

    /// Parses and checks pricing TOML.
    pub fn parse(text: &str) -> Result<Self, PricingError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| PricingError::Parse { path: "<text>".into(), why: e.to_string() })?;
        let raw: RawPricing = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let why = e.into_inner().message().trim().to_string();
            if key == "." { PricingError::Parse { path: "<text>".into(), why } } else { invalid(&key, why) }
        })?;
        Self::check(raw)
    }

    fn check(raw: RawPricing) -> Result<Self, PricingError> {
        let currency = raw.currency.trim().to_string();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(invalid("currency", format!("{currency:?} is not a three-letter currency code such as USD")));
        }
        // Upper bounds far above any real price keep every sum of the model
        // (exabytes, a century, 512x replication) inside Decimal's range.
        let at_most = |key: &str, v: Decimal| {
            let max = match key {
                "btt.fiat_rate" => Decimal::from(1_000_000),
                "operations.labor_per_release" => Decimal::from(1_000_000_000_000u64),
                "storage.price_btt_per_gib_month" => Decimal::from(30_000),
                _ => Decimal::from(1_000_000_000),
            };
            if v > max { Err(invalid(key, format!("{v} is above the largest accepted value, {max}"))) } else { Ok(v) }
        };
        let positive = |key: &str, v: Decimal| {
            if v.is_sign_negative() || v.is_zero() {
                Err(invalid(key, format!("{v} must be more than 0")))
            } else {
                at_most(key, v)
            }
        };
        let not_negative = |key: &str, v: Decimal| {
            if v.is_sign_negative() { Err(invalid(key, format!("{v} must not be negative"))) } else { at_most(key, v) }
        };
        let s = &raw.storage;
        let storage_ubtt_per_gib_day = match (s.price_ubtt_per_gib_day, s.price_btt_per_gib_month) {
            (Some(Amount(d)), None) => positive("storage.price_ubtt_per_gib_day", d)?,
            (None, Some(Amount(m))) => {
                positive("storage.price_btt_per_gib_month", m)? * Decimal::from(1_000_000)
                    / Decimal::from(DAYS_PER_MONTH)
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "storage.price_ubtt_per_gib_day",
                    "give one storage price, not both price_ubtt_per_gib_day and price_btt_per_gib_month",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "storage.price_ubtt_per_gib_day",
                    "missing: give price_ubtt_per_gib_day (as BTFS hosts announce it) or price_btt_per_gib_month",
                ));
            }
        };
        if s.min_contract_days == 0 || s.min_contract_days > 3650 {
            return Err(invalid("storage.min_contract_days", format!("{} must be 1 to 3650", s.min_contract_days)));
        }
        let r = &raw.replication;
        let replication = match (r.copies, r.data_shards, r.parity_shards) {
            (Some(c), None, None) if (1..=64).contains(&c) => Replication::Copies { copies: c },
            (Some(c), None, None) => return Err(invalid("replication.copies", format!("{c} must be 1 to 64"))),
            (None, Some(d), Some(p)) => {
                if !(1..=256).contains(&d) {
                    return Err(invalid("replication.data_shards", format!("{d} must be 1 to 256")));
                }
                if p > 256 {
                    return Err(invalid("replication.parity_shards", format!("{p} must be 0 to 256")));
                }
                Replication::ReedSolomon { data: d, parity: p }
            }
            (None, Some(_), None) => {
                return Err(invalid("replication.parity_shards", "missing: data_shards needs parity_shards"));
            }
            (None, None, Some(_)) => {
                return Err(invalid("replication.data_shards", "missing: parity_shards needs data_shards"));
            }
            (Some(_), _, _) => {
                return Err(invalid(
                    "replication.copies",
                    "give copies, or data_shards and parity_shards (Reed-Solomon), not both",
                ));
            }
            (None, None, None) => {
                return Err(invalid(
                    "replication.copies",
                    "missing: give copies, or data_shards and parity_shards (Reed-Solomon)",
                ));
            }
        };
        let rate_date = match (raw.btt.rate_date.date, raw.btt.rate_date.time) {
            (Some(d), None) => jiff::civil::Date::new(d.year as i16, d.month as i8, d.day as i8)
                .map_err(|e| invalid("btt.rate_date", e.to_string()))?,
            _ => return Err(invalid("btt.rate_date", "must be a date such as 2026-11-20, without a time")),
        };
        let buffer = not_negative("btt.risk_buffer_percent", raw.btt.risk_buffer_percent.0)?;
        if buffer > Decimal::from(1000) {
            return Err(invalid("btt.risk_buffer_percent", format!("{buffer} is above 1000")));
        }
        Ok(Pricing {
            currency,
            storage_ubtt_per_gib_day,
            min_contract_days: s.min_contract_days,
            replication,
            retrieval_ubtt_per_mib: not_negative("retrieval.price_ubtt_per_mib", raw.retrieval.price_ubtt_per_mib.0)?,
            labor_per_release: not_negative("operations.labor_per_release", raw.operations.labor_per_release.0)?,
            fiat_rate: positive("btt.fiat_rate", raw.btt.fiat_rate.0)?,
            rate_date,
            risk_buffer_percent: buffer,
        })
    }

    /// An amount of BTT in all three forms.
    pub fn btt(&self, btt: Decimal) -> Money {
        let fiat = btt.saturating_mul(self.fiat_rate);
        Money { btt, fiat, fiat_buffered: self.buffered(fiat) }
    }

    /// A fiat amount that is not exposed to the BTT rate (labour): the
    /// buffer does not apply, and its BTT figure is zero.
    pub fn fiat(&self, fiat: Decimal) -> Money {
        Money { btt: Decimal::ZERO, fiat, fiat_buffered: fiat }
    }

    fn buffered(&self, fiat: Decimal) -> Decimal {
        fiat.saturating_mul(Decimal::ONE + self.risk_buffer_percent / Decimal::from(100))
    }

    /// BTT for retrieving `bytes` from BTFS hosts.
    pub fn retrieval(&self, bytes: u64) -> Money {
        self.btt(ubtt(units(bytes, MIB).saturating_mul(self.retrieval_ubtt_per_mib)))
    }

    /// BTT to store `bytes` once (one copy-equivalent) for `days`.
    pub fn storage_once(&self, bytes: u64, days: u32) -> Money {
        self.btt(ubtt(
            units(bytes, GIB).saturating_mul(self.storage_ubtt_per_gib_day).saturating_mul(Decimal::from(days)),
        ))
    }

    /// BTT to store `bytes` with replication for `days`.
    pub fn storage(&self, bytes: u64, days: u32) -> Money {
        self.btt(self.storage_once(bytes, days).btt.saturating_mul(self.replication.factor()))
    }

    /// Days a storage contract of `months` (at most [`MAX_MONTHS`]) is billed
    /// for: never under the minimum contract.
    pub fn billed_days(&self, months: u32) -> u32 {
        months.min(MAX_MONTHS).saturating_mul(DAYS_PER_MONTH).max(self.min_contract_days)
    }

    /// The cost of one release kept `months` and read in full `runs` times.
    pub fn release_cost(&self, size: ReleaseSize, months: u32, runs: u32) -> ReleaseCost {
        let days = self.billed_days(months);
        let storage = self.storage(size.stored_bytes, days);
        let per_run = self.retrieval(size.file_bytes);
        let retrieval = self.btt(per_run.btt.saturating_mul(Decimal::from(runs)));
        let operations = self.fiat(self.labor_per_release);
        ReleaseCost {
            months,
            billed_days: days,
            runs,
            size,
            replication: self.replication,
            stored_with_replication_bytes: Decimal::from(size.stored_bytes)
                .saturating_mul(self.replication.factor())
                .ceil()
                .try_into()
                .unwrap_or(u64::MAX),
            per_gib_month: self
                .btt(ubtt(self.storage_ubtt_per_gib_day * Decimal::from(DAYS_PER_MONTH) * self.replication.factor())),
            per_replica: self.storage_once(size.stored_bytes, days),
            per_training_run: per_run,
            storage,
            retrieval,
            operations,
            total: storage + retrieval + operations,
        }
    }
}

/// What a release puts on BTFS: its files, plus the manifest and chunk
/// tables that make it checkable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReleaseSize {
    /// Bytes of the release's files: what a training run reads.
    pub file_bytes: u64,
    /// Files, manifest and chunk tables: what hosts store.
    pub stored_bytes: u64,
}

impl ReleaseSize {
    pub fn of(signed: &crate::release::manifest::SignedManifest) -> Self {
        let m = &signed.manifest;
        let tables: u64 = m
            .files
            .iter()
            .filter(|f| f.chunk_table.is_some())
            .filter_map(|f| f.layout().ok())
            .map(|l| l.table_len())
            .sum();
        let manifest = signed.bytes.len() as u64;
        Self { file_bytes: m.total_bytes, stored_bytes: m.total_bytes.saturating_add(tables).saturating_add(manifest) }
    }
}

/// Every figure `shardgate cost` prints, unrounded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReleaseCost {
    pub months: u32,
    pub billed_days: u32,
    pub runs: u32,
    pub size: ReleaseSize,
    pub replication: Replication,
    pub stored_with_replication_bytes: u64,
    /// Storage of one GiB of the release for one month, replication included.
    pub per_gib_month: Money,
    /// Storage of one copy-equivalent of the release for the billed days.
    pub per_replica: Money,
    /// Retrieval of every file once.
    pub per_training_run: Money,
    /// The three buckets, kept apart, and their sum.
    pub storage: Money,
    pub retrieval: Money,
    pub operations: Money,
    pub total: Money,
}
