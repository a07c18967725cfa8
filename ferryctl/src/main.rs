//! `ferryctl`, ferry's command line (also usable as the kubectl plugin `kubectl ferry`).
//!
//! Today: `mtu`, the MTU/MSS calculator. Peering, offloading, status and doctor come with their issues.

use anyhow::Result;
use clap::{Parser, Subcommand};
use ferry_tunnel::mtu::MtuPlan;

#[derive(Parser)]
#[command(
    name = "ferryctl",
    version,
    about = "ferry: borrow compute from another Kubernetes cluster"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Tunnel MTU and TCP MSS for an encapsulation stack, each term explained.
    Mtu {
        /// Underlay MTU.
        #[arg(long, default_value_t = 1500)]
        underlay: u32,
        /// Layers, comma-separated: vxlan, geneve, wireguard, ipsec-gcm, ipsec-chacha, ipsec-cbc-sha1 (-natt), ipip.
        #[arg(long, default_value = "wireguard")]
        stack: String,
        /// The underlay is IPv6 (every outer header is IPv6).
        #[arg(long)]
        ipv6: bool,
        /// Pods carry IPv6: the result must be at least 1280.
        #[arg(long)]
        inner_ipv6: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks on the local lab (they run `ferry-lab bench`, installed next to ferryctl).
    Bench {
        /// What to measure: `tunnel` (ferry vs plain WireGuard vs bare WAN) or `pods`.
        what: String,
        /// Further arguments for `ferry-lab bench <what>`, e.g. `--seconds 10`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("ferryctl: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Mtu {
            underlay,
            stack,
            ipv6,
            inner_ipv6,
            json,
        } => {
            let plan = MtuPlan::compute(underlay, &MtuPlan::parse_stack(&stack)?, ipv6, inner_ipv6)?;
            if json {
                let terms: Vec<_> = plan
                    .terms
                    .iter()
                    .map(|t| serde_json::json!({ "layer": t.encap.to_string(), "bytes": t.bytes, "why": t.why }))
                    .collect();
                let out = serde_json::json!({ "underlay": plan.underlay, "terms": terms, "mtu": plan.mtu,
                    "mss_ipv4": plan.mss_v4, "mss_ipv6": plan.mss_v6 });
                println!("{out}");
            } else {
                println!("{}", plan.mtu);
                print!("{}", plan.explain());
            }
        }
        Cmd::Bench { what, args } => {
            let exe = std::env::current_exe()?;
            let lab = exe.with_file_name("ferry-lab");
            anyhow::ensure!(
                lab.exists(),
                "ferry-lab not found next to ferryctl ({}); fix: cargo build --workspace --bins",
                lab.display()
            );
            let status = std::process::Command::new(lab)
                .arg("bench")
                .arg(&what)
                .args(&args)
                .status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
    Ok(())
}
