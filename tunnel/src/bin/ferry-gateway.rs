//! `ferry-gateway`: the tunnel end of one peering (run it in the host network namespace, as root).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use ferry_tunnel::gateway;

#[derive(Parser)]
#[command(
    name = "ferry-gateway",
    version,
    about = "WireGuard tunnel, NAT for overlapping CIDRs, MTU/MSS clamp, health"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring the peering's tunnel up and keep it healthy until SIGTERM, then remove it.
    Up {
        /// Config file (JSON).
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the plan (ops and nftables ruleset) for a given path MTU, changing nothing.
    Plan {
        /// Config file (JSON).
        #[arg(long)]
        config: PathBuf,
        /// Path MTU to plan for.
        #[arg(long, default_value_t = 1500)]
        path_mtu: u32,
    },
    /// Remove what a crashed `up` may have left.
    Down {
        /// Config file (JSON).
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run(Cli::parse())) {
        eprintln!("ferry-gateway: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Up { config } => gateway::run(gateway::load(&config)?).await,
        Cmd::Plan { config, path_mtu } => {
            let p = gateway::load(&config)?.prepare(path_mtu)?;
            let plan = p.spec.plan()?;
            for op in &plan.apply {
                if !matches!(op, ferry_tunnel::plan::Op::LoadNft { .. }) {
                    println!("{op:?}");
                }
            }
            print!("{}", plan.nft_ruleset);
            Ok(())
        }
        Cmd::Down { config } => {
            let cfg = gateway::load(&config)?;
            let p = cfg.prepare(1500)?;
            ferry_tunnel::apply::undo(&p.spec);
            Ok(())
        }
    }
}
