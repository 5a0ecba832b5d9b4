//! `intelligent-video health`: asks the running daemon's health port whether it is ready
//! (`GET /readyz`), for a container's `HEALTHCHECK` or a script; the image needs no curl.
//! Exit 0 when ready; 1 with one line that says why otherwise.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::{Config, ConfigOverrides};

#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// Configuration file (default /etc/intelligent-video/config.toml when it exists); its
    /// `http_addr` (or `IV_HTTP_ADDR`) is where the daemon's health port is.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How long to wait for the answer.
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
}

/// Where to reach a daemon that listens on `addr`: an unspecified address (`0.0.0.0`, `::`)
/// is reached on loopback.
pub(crate) fn reach(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// Ok when the daemon answers 200 on `/readyz`.
pub fn run(args: &HealthArgs) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref(), &ConfigOverrides::default())
        .context("invalid configuration")?;
    let url = format!("http://{}/readyz", reach(cfg.http_addr));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(args.timeout_ms)))
        .http_status_as_error(false)
        .build()
        .into();
    let status = agent
        .get(&url)
        .call()
        .with_context(|| format!("no answer from {url}"))?
        .status();
    if status != 200 {
        bail!("{url} answered {status}: not ready");
    }
    println!("ready");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::reach;

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        let cases = [
            ("0.0.0.0:8000", "127.0.0.1:8000"),
            ("[::]:9", "[::1]:9"),
            ("127.0.0.1:8000", "127.0.0.1:8000"),
            ("10.1.2.3:80", "10.1.2.3:80"),
        ];
        for (given, want) in cases {
            assert_eq!(
                reach(given.parse().expect("addr")).to_string(),
                want,
                "{given}"
            );
        }
    }
}
