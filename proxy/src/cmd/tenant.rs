use std::process::ExitCode;

use shardgate::tenant::new_key;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Make a new API key. The key is printed once; only its hash goes in config.
    Key {
        /// Tenant id, for the config line.
        #[arg(long, default_value = "TENANT")]
        tenant: String,
    },
    /// Make an S3 access key for a tenant and append it to the gateway's
    /// credentials file (`s3.credentials`; created with mode 0600). SigV4
    /// needs the gateway to hold the secret, so that file holds it in the
    /// clear: keep it readable by the gateway's user only. Reload the
    /// gateway (SIGHUP) to use the new key.
    S3Key {
        /// Tenant id the key identifies (must be in the gateway's `[[tenants]]`).
        #[arg(long)]
        tenant: String,
        /// The credentials file the gateway's `s3.credentials` names.
        #[arg(long)]
        credentials: std::path::PathBuf,
    },
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.action {
        Action::Key { tenant } => {
            let (key, hash) = new_key().map_err(anyhow::Error::msg)?;
            println!("{key}");
            eprintln!("Give the key above to the tenant; it is not stored anywhere and cannot be shown again.");
            eprintln!("Add its hash to the tenant in the gateway config:\n");
            eprintln!("[[tenants]]\nid = \"{tenant}\"\nkeys = [\"{hash}\"]");
            Ok(ExitCode::SUCCESS)
        }
        Action::S3Key { tenant, credentials } => {
            let entry = shardgate::s3::keys::new_key(&tenant).map_err(anyhow::Error::msg)?;
            shardgate::s3::keys::append(&credentials, &entry)?;
            println!("aws_access_key_id = {}", entry.access_key_id);
            println!("aws_secret_access_key = {}", entry.secret_access_key);
            eprintln!(
                "Added to {} for tenant {tenant:?}. Give the pair above to the tenant; reload the gateway (SIGHUP) to use it.",
                credentials.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
