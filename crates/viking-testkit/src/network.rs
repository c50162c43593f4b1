//! The cluster's private Docker network: a free /24 in 172.30.0.0/15, chosen
//! so that it overlaps no Docker network and no route of the host, even with
//! other test processes creating networks at the same time.

use crate::util::{check, host_docker, output, random_u64, LABEL, OWNER_LABEL};
use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

/// Where cluster networks are allocated, one /24 each.
const POOL: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(172, 30, 0, 0), 15);
/// Docker's default bridge, reserved even when it is not up.
const DOCKER0: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(172, 17, 0, 0), 16);

/// Creates the network `name` on a free /24 of [`POOL`]; returns its subnet
/// and gateway (the host's address on it).
pub(crate) fn create_network(name: &str, owner: &str) -> Result<(Ipv4Net, Ipv4Addr)> {
    let mut used = used_subnets()?;
    used.push(DOCKER0);
    let candidates: Vec<Ipv4Net> = POOL
        .subnets(24)
        .context("harness bug: /24s of the pool")?
        .collect();
    let start = (random_u64() % candidates.len() as u64) as usize;
    let mut attempts = 0;
    for k in 0..candidates.len() {
        let cand = candidates[(start + k) % candidates.len()];
        if used.iter().any(|u| overlaps(u, &cand)) {
            continue;
        }
        let gateway = gateway_of(cand);
        let out = output(Command::new("docker").args([
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            &cand.to_string(),
            "--gateway",
            &gateway.to_string(),
            "--label",
            LABEL,
            "--label",
            &format!("{OWNER_LABEL}={owner}"),
            name,
        ]))?;
        if out.status.success() {
            return Ok((cand, gateway));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        attempts += 1;
        if !err.contains("overlap") || attempts > 20 {
            bail!("docker network create {name} {cand}: {}", err.trim());
        }
        // Taken by a concurrent run: try the next one.
        used.push(cand);
    }
    bail!("no free /24 in {POOL}")
}

/// The first host address of a subnet.
fn gateway_of(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(b) || b.contains(a)
}

/// Subnets in use on the host: Docker networks and routes. Another test may
/// remove a network between the listing and the inspection: then look again.
fn used_subnets() -> Result<Vec<Ipv4Net>> {
    let mut tries = 0;
    loop {
        match used_subnets_once() {
            Ok(v) => return Ok(v),
            Err(e) if tries < 10 && format!("{e:#}").contains("not found") => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

fn used_subnets_once() -> Result<Vec<Ipv4Net>> {
    let mut cidrs = Vec::new();
    let ids = host_docker(["network", "ls", "-q"])?;
    let ids: Vec<&str> = ids.lines().filter(|l| !l.is_empty()).collect();
    if !ids.is_empty() {
        let json = host_docker(
            ["network", "inspect"]
                .into_iter()
                .chain(ids.iter().copied()),
        )?;
        let v: serde_json::Value = serde_json::from_str(&json).context("docker network inspect")?;
        for net in v.as_array().into_iter().flatten() {
            for cfg in net["IPAM"]["Config"].as_array().into_iter().flatten() {
                if let Some(s) = cfg["Subnet"].as_str() {
                    cidrs.push(s.to_string());
                }
            }
        }
    }
    if let Ok(routes) = check(Command::new("ip").args(["-4", "route", "show"])) {
        for l in routes.lines() {
            if let Some(first) = l.split_whitespace().next() {
                cidrs.push(first.to_string());
            }
        }
    }
    Ok(cidrs.iter().filter_map(|c| parse_cidr(c)).collect())
}

/// `a.b.c.d/len`, or a bare address as a /32; `None` for anything else
/// (`default`, IPv6).
fn parse_cidr(s: &str) -> Option<Ipv4Net> {
    s.parse::<Ipv4Net>()
        .or_else(|_| s.parse::<Ipv4Addr>().map(Ipv4Net::from))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        parse_cidr(s).unwrap()
    }

    #[test]
    fn cidr_overlap() {
        let a = net("172.17.0.0/16");
        assert!(overlaps(&a, &net("172.17.3.0/24")));
        assert!(overlaps(&net("172.17.3.0/24"), &a));
        assert!(!overlaps(&a, &net("172.30.0.0/24")));
        assert!(overlaps(&POOL, &net("172.31.9.0/24")));
        assert!(overlaps(&net("0.0.0.0/0"), &net("1.2.3.0/24")));
        assert!(overlaps(&net("10.0.0.7"), &net("10.0.0.0/8")));
        assert_eq!(parse_cidr("default"), None);
        assert_eq!(parse_cidr("fe80::/64"), None);
    }

    #[test]
    fn the_pool_has_512_subnets_with_their_gateways() {
        let all: Vec<Ipv4Net> = POOL.subnets(24).unwrap().collect();
        assert_eq!(all.len(), 512);
        assert_eq!(all[0].to_string(), "172.30.0.0/24");
        assert_eq!(all[511].to_string(), "172.31.255.0/24");
        assert_eq!(gateway_of(all[1]), Ipv4Addr::new(172, 30, 1, 1));
    }
}
