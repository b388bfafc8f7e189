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
    }
}
