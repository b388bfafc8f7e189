//! `shardgate usage`: billing tokens, and a client for the gRPC usage API.

use std::process::ExitCode;

use shardgate::tenant::new_key;
use shardgate::usage::proto::usage_service_client::UsageServiceClient;
use shardgate::usage::proto::{self, usage_record};

use super::grpc_client::{self, Endpoint, authed, status};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Args)]
struct Api {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Billing token.
    #[arg(long, env = "SHARDGATE_BILLING_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Make a billing token for `grpc.billing_tokens`. Printed once; only its hash goes in config.
    Token,
    /// List closed usage records as JSON lines, following cursors to the newest.
    List {
        #[command(flatten)]
        api: Api,
        /// Start after this cursor (default: the oldest kept).
        #[arg(long, default_value = "")]
        after: String,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// A tenant's totals by source, as JSON.
    Totals {
        #[command(flatten)]
        api: Api,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        dataset: Option<String>,
        /// Unix seconds; windows starting at or after this.
        #[arg(long, default_value_t = 0)]
        from: i64,
        /// Unix seconds; windows starting before this (0: now).
        #[arg(long, default_value_t = 0)]
        to: i64,
    },
}

async fn connect(api: &Api) -> anyhow::Result<UsageServiceClient<tonic::transport::Channel>> {
    Ok(UsageServiceClient::new(grpc_client::connect(&api.endpoint.url, api.endpoint.ca.as_deref()).await?))
}

fn source(s: i32) -> &'static str {
    match proto::Source::try_from(s) {
        Ok(proto::Source::Hot) => "hot",
        Ok(proto::Source::Origin) => "origin",
        _ => "unspecified",
    }
}

fn record_json(r: &proto::UsageRecord) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": r.id,
        "gateway_instance": r.gateway_instance,
        "cursor": r.cursor,
        "window_start": r.window_start,
        "window_end": r.window_end,
    });
    match &r.counters {
        Some(usage_record::Counters::TenantUsage(t)) => {
            v["tenant_usage"] = serde_json::json!({
                "tenant": t.tenant, "dataset": t.dataset, "version": t.version, "source": source(t.source),
                "bytes": t.bytes, "requests": t.requests, "aborted_requests": t.aborted_requests,
            });
        }
        Some(usage_record::Counters::DatasetCost(d)) => {
            v["dataset_cost"] = serde_json::json!({
                "dataset": d.dataset, "version": d.version, "origin_egress_bytes": d.origin_egress_bytes,
                "integrity_failed_bytes": d.integrity_failed_bytes,
                "integrity_aborted_bytes": d.integrity_aborted_bytes,
                "integrity_aborted_requests": d.integrity_aborted_requests,
            });
        }
        None => {}
    }
    v
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let rt = || tokio::runtime::Builder::new_current_thread().enable_all().build();
    match a.action {
        Action::Token => token(),
        Action::List { api, after, tenant } => rt()?.block_on(list(api, after, tenant)),
        Action::Totals { api, tenant, dataset, from, to } => {
            rt()?.block_on(totals(api, proto::GetTotalsRequest { tenant, dataset, from, to }))
        }
    }
}

fn token() -> anyhow::Result<ExitCode> {
    let (token, hash) = new_key().map_err(anyhow::Error::msg)?;
    println!("{token}");
    eprintln!("Give the token above to the billing system; it is not stored anywhere and cannot be shown again.");
    eprintln!("Add its hash to the gateway config:\n");
    eprintln!("[grpc]\nbilling_tokens = [\"{hash}\"]");
    Ok(ExitCode::SUCCESS)
}

async fn list(api: Api, after: String, tenant: Option<String>) -> anyhow::Result<ExitCode> {
    let mut c = connect(&api).await?;
    let mut cursor = after;
    loop {
        let req = proto::ListUsageRequest { after_cursor: cursor.clone(), limit: 1000, tenant: tenant.clone() };
        let page = c.list_usage(authed(req, &api.token)?).await.map_err(status)?.into_inner();
        for r in &page.records {
            println!("{}", record_json(r));
        }
        if page.records.is_empty() || page.next_cursor == page.last_cursor {
            return Ok(ExitCode::SUCCESS);
        }
        cursor = page.next_cursor;
    }
}

async fn totals(api: Api, req: proto::GetTotalsRequest) -> anyhow::Result<ExitCode> {
    let mut c = connect(&api).await?;
    let t = c.get_totals(authed(req, &api.token)?).await.map_err(status)?.into_inner();
    let by: serde_json::Map<String, serde_json::Value> = t
        .by_source
        .iter()
        .map(|s| {
            let v =
                serde_json::json!({ "bytes": s.bytes, "requests": s.requests, "aborted_requests": s.aborted_requests });
            (source(s.source).to_string(), v)
        })
        .collect();
    let out = serde_json::json!({
        "tenant": t.tenant, "bytes": t.bytes, "requests": t.requests,
        "aborted_requests": t.aborted_requests, "by_source": by,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}
