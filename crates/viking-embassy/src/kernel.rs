//! embassy in the kernel: the routing table written as netfilter rules, so
//! that a connection to an ambassador port is forwarded by the kernel
//! (DNAT, as kube-proxy's iptables mode does) and no byte passes through
//! a process.
//!
//! The rules are written with `iptables-restore`, the tool and backend
//! Docker itself uses on the host (iptables-nft on Debian 12), so that
//! ours and Docker's are evaluated together. Everything lives in chains of
//! viking's own, which Docker never touches and which we never leave
//! half-written:
//!
//! - nat `VIKING-EMBASSY`, jumped to from PREROUTING (containers) and
//!   OUTPUT (the host's own processes) for TCP to `bind:LOW-HIGH`: per
//!   ambassador port, one DNAT per endpoint, chosen by `statistic --mode
//!   random` with probabilities 1/n, 1/(n-1), ..., 1 so that each of n
//!   endpoints gets an even share;
//! - nat `VIKING-EMBASSY-POST`, jumped to from POSTROUTING: MASQUERADE of
//!   every connection so forwarded, so replies come back through this host
//!   (an endpoint on another host sees this host's address; a local
//!   container, reached on its own address, sees the bridge's gateway);
//! - filter `VIKING-EMBASSY-FWD`, jumped to from FORWARD: accepts those
//!   connections (Docker's FORWARD policy is DROP, and `--icc=false` drops
//!   container-to-container traffic).
//!
//! Every [`Kernel::apply`] rewrites the three chains in one
//! `iptables-restore --noflush` transaction (the whole new content, or
//! nothing), then makes sure each hook exists exactly once. Applying the
//! same table twice changes nothing; applying after a restart replaces
//! whatever an earlier process left. Open connections keep their
//! translation (conntrack) when the rules change, until their endpoint
//! goes away; connections still opening towards a removed endpoint are
//! forgotten by conntrack (the `conntrack` tool), so their next SYN goes to
//! a live one. [`Kernel::remove`] deletes the hooks and the chains.
//!
//! [`render`] is the pure part: a table in, the restore input out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::{Error, Result};
use crate::table::RoutingTable;

/// The nat chain with the DNAT rules.
pub const NAT_CHAIN: &str = "VIKING-EMBASSY";
/// The nat chain that masquerades the forwarded connections.
pub const POST_CHAIN: &str = "VIKING-EMBASSY-POST";
/// The filter chain that accepts them.
pub const FORWARD_CHAIN: &str = "VIKING-EMBASSY-FWD";
/// The comment on every hook, so a person reading `iptables -S` knows whose
/// rules they are.
const HOOK_COMMENT: &str = "viking-embassy";

/// Where and which ports the kernel path serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpec {
    /// The address containers reach embassy on (Docker's bridge gateway).
    pub bind: Ipv4Addr,
    /// The cluster's ambassador port range, both ends included.
    pub ports: (u16, u16),
}

/// One hook: a jump from a built-in chain to one of ours.
struct Hook {
    table: &'static str,
    chain: &'static str,
    spec: Vec<String>,
    target: &'static str,
}

/// The netfilter rules of this host's embassy.
#[derive(Debug)]
pub struct Kernel {
    spec: KernelSpec,
    /// The table the rules say now, to find the endpoints the next table
    /// removes.
    applied: std::sync::Mutex<Option<RoutingTable>>,
    /// What the rules counted before their last rewrite (a rewrite
    /// starts the counters again), per ambassador port.
    counted: std::sync::Mutex<BTreeMap<u16, PortCounts>>,
}

/// What the kernel counted for one ambassador port: connections (the nat
/// rules see only a connection's first packet) and bytes each way (the
/// forward rules, per direction of the connection). A host's own
/// processes reach a service without the forward chain: their bytes are
/// not counted, their connections are.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PortCounts {
    pub connections: u64,
    pub bytes_from_clients: u64,
    pub bytes_to_clients: u64,
}

impl PortCounts {
    fn add(&mut self, o: PortCounts) {
        self.connections += o.connections;
        self.bytes_from_clients += o.bytes_from_clients;
        self.bytes_to_clients += o.bytes_to_clients;
    }
}

/// The counters of viking's rules in `iptables-save -c` output (of the nat
/// and filter tables), per ambassador port. Pure.
pub fn parse_counters(text: &str) -> BTreeMap<u16, PortCounts> {
    let mut out: BTreeMap<u16, PortCounts> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some((counts, rule)) = rest.split_once("] ") else {
            continue;
        };
        let Some((_packets, bytes)) = counts.split_once(':') else {
            continue;
        };
        let packets: u64 = _packets.parse().unwrap_or(0);
        let bytes: u64 = bytes.parse().unwrap_or(0);
        let words: Vec<&str> = rule.split_whitespace().collect();
        let after = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        match after("-A") {
            Some(NAT_CHAIN) if words.contains(&"DNAT") => {
                if let Some(port) = after("--dport").and_then(|p| p.parse().ok()) {
                    out.entry(port).or_default().connections += packets;
                }
            }
            Some(FORWARD_CHAIN) => {
                let Some(port) = after("--ctorigdstport").and_then(|p| p.parse::<u16>().ok())
                else {
                    continue;
                };
                let c = out.entry(port).or_default();
                match after("--ctdir") {
                    Some("ORIGINAL") => c.bytes_from_clients += bytes,
                    Some("REPLY") => c.bytes_to_clients += bytes,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    out
}

impl Kernel {
    /// A kernel path for `spec`, if this host can have one: `bind` is an
    /// IPv4 address, and `iptables` and `iptables-restore` run with the
    /// rights to change the nat table. Nothing is written yet.
    pub async fn probe(bind: IpAddr, ports: (u16, u16)) -> Result<Kernel> {
        let IpAddr::V4(bind) = bind else {
            return Err(Error::KernelUnavailable(format!(
                "embassy's address {bind} is not IPv4"
            )));
        };
        // Listing the nat table needs the binary and CAP_NET_ADMIN.
        iptables(&["-t", "nat", "-S", "POSTROUTING"])
            .await
            .map_err(|e| Error::KernelUnavailable(e.to_string()))?;
        run("iptables-restore", &["--version"], None)
            .await
            .map_err(|e| Error::KernelUnavailable(e.to_string()))?;
        Ok(Kernel {
            spec: KernelSpec { bind, ports },
            applied: std::sync::Mutex::new(None),
            counted: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// What this kernel path serves.
    pub fn spec(&self) -> KernelSpec {
        self.spec
    }

    /// Makes the rules equal to `table`: the chains rewritten in one
    /// transaction, then each hook made to exist exactly once. Returns the
    /// number of DNAT rules written.
    ///
    /// Connections still opening towards an endpoint the new table no
    /// longer has (a host that died: their SYN unanswered) are forgotten by
    /// conntrack, so their next SYN is translated again, to a live
    /// endpoint. Established connections are left alone: they live until
    /// their endpoint goes away.
    pub async fn apply(&self, table: &RoutingTable) -> Result<usize> {
        let (text, rules) = render(&self.spec, table);
        // The rewrite starts the counters again: what they hold is kept.
        // (What they count between this read and the rewrite is lost.)
        let before = self.read_counters().await.unwrap_or_default();
        run("iptables-restore", &["-w", "--noflush"], Some(&text)).await?;
        {
            let mut counted = self
                .counted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (port, c) in before {
                counted.entry(port).or_default().add(c);
            }
            // A port that left the table starts from nothing if it comes
            // back (perhaps for another service).
            let kept: std::collections::HashSet<u16> = table.iter().map(|(p, _)| p).collect();
            counted.retain(|p, _| kept.contains(p));
        }
        for hook in hooks(&self.spec) {
            ensure_hook(&hook).await?;
        }
        let previous = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(table.clone());
        if let Some(previous) = previous {
            for (port, endpoint) in removed_endpoints(&previous, table) {
                self.forget_opening(port, endpoint).await;
            }
        }
        Ok(rules)
    }

    async fn read_counters(&self) -> Result<BTreeMap<u16, PortCounts>> {
        let mut text = run("iptables-save", &["-c", "-t", "nat"], None).await?;
        text.push_str(&run("iptables-save", &["-c", "-t", "filter"], None).await?);
        Ok(parse_counters(&text))
    }

    /// Each route of the table applied last, with what the kernel counted
    /// for its port since this process first wrote it: connections and
    /// bytes (connections open now are not counted: 0).
    pub async fn stats(&self) -> Result<Vec<crate::RouteStats>> {
        let now = self.read_counters().await?;
        let table = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_default();
        let counted = self
            .counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Ok(table
            .iter()
            .map(|(port, route)| {
                let mut c = counted.get(&port).copied().unwrap_or_default();
                c.add(now.get(&port).copied().unwrap_or_default());
                crate::RouteStats {
                    port,
                    service: route.service.clone(),
                    container_port: route.container_port,
                    endpoints: route.endpoints.clone(),
                    connections_total: c.connections,
                    bytes_in: c.bytes_from_clients,
                    bytes_out: c.bytes_to_clients,
                    ..Default::default()
                }
            })
            .collect())
    }

    /// Deletes the conntrack entries of connections to `port` translated
    /// to `endpoint` that are still opening. Best effort: without the
    /// `conntrack` tool such a connection waits for its SYN to time out.
    async fn forget_opening(&self, port: u16, endpoint: SocketAddr) {
        let args = [
            "-D".to_string(),
            "-p".into(),
            "tcp".into(),
            "--orig-dst".into(),
            self.spec.bind.to_string(),
            "--dport".into(),
            port.to_string(),
            "--reply-src".into(),
            endpoint.ip().to_string(),
            "--reply-port-src".into(),
            endpoint.port().to_string(),
            "--state".into(),
            "SYN_SENT".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match run("conntrack", &args, None).await {
            Ok(_) => {
                tracing::debug!(port, %endpoint, "embassy: opening connections sent elsewhere")
            }
            // Exit 1: no such connection.
            Err(Error::Netfilter {
                status: Some(1), ..
            }) => {}
            Err(e) => tracing::debug!(port, %endpoint, "embassy: {e}"),
        }
    }

    /// Deletes the hooks, then the chains. Rules that are already gone are
    /// fine; the first failure is returned after everything was tried.
    pub async fn remove(&self) -> Result<()> {
        let mut first = None;
        for hook in hooks(&self.spec) {
            if let Err(e) = delete_hooks(&hook).await {
                first.get_or_insert(e);
            }
        }
        for (table, chain) in [
            ("nat", NAT_CHAIN),
            ("nat", POST_CHAIN),
            ("filter", FORWARD_CHAIN),
        ] {
            // A chain that does not exist: nothing to remove.
            if iptables(&["-t", table, "-S", chain]).await.is_err() {
                continue;
            }
            for op in ["-F", "-X"] {
                if let Err(e) = iptables(&["-t", table, op, chain]).await {
                    first.get_or_insert(e);
                }
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The restore input that makes viking's chains say `table` (for
/// `iptables-restore --noflush`: a chain declared is flushed first), and
/// the number of DNAT rules in it. IPv6 endpoints are left out (the nat
/// table written is IPv4's). Pure.
pub fn render(spec: &KernelSpec, table: &RoutingTable) -> (String, usize) {
    let (lo, hi) = spec.ports;
    let mut out = String::new();
    let mut rules = 0;
    out.push_str("*nat\n");
    let _ = writeln!(out, ":{NAT_CHAIN} - [0:0]");
    let _ = writeln!(out, ":{POST_CHAIN} - [0:0]");
    for (port, route) in table.iter() {
        let endpoints: Vec<&SocketAddr> = route.endpoints.iter().filter(|e| e.is_ipv4()).collect();
        let comment = comment(&route.service, route.container_port);
        let n = endpoints.len();
        for (i, ep) in endpoints.into_iter().enumerate() {
            let _ = write!(
                out,
                "-A {NAT_CHAIN} -p tcp -m tcp --dport {port} -m comment --comment {comment}"
            );
            if i + 1 < n {
                // Of the endpoints left, this one with an even chance.
                let p = 1.0 / (n - i) as f64;
                let _ = write!(out, " -m statistic --mode random --probability {p:.10}");
            }
            let _ = writeln!(out, " -j DNAT --to-destination {ep}");
            rules += 1;
        }
    }
    let forwarded = format!(
        "-m conntrack --ctstate DNAT --ctorigdst {}/32 --ctorigdstport {lo}:{hi}",
        spec.bind
    );
    let _ = writeln!(out, "-A {POST_CHAIN} {forwarded} -j MASQUERADE");
    out.push_str("COMMIT\n*filter\n");
    let _ = writeln!(out, ":{FORWARD_CHAIN} - [0:0]");
    // Per port and direction, to count its bytes; then every port of the
    // range (a connection whose route is gone lives on).
    for (port, route) in table.iter() {
        let comment = comment(&route.service, route.container_port);
        for dir in ["ORIGINAL", "REPLY"] {
            let _ = writeln!(
                out,
                "-A {FORWARD_CHAIN} -m conntrack --ctstate DNAT --ctorigdst {}/32 --ctorigdstport {port} --ctdir {dir} -m comment --comment {comment} -j ACCEPT",
                spec.bind
            );
        }
    }
    let _ = writeln!(out, "-A {FORWARD_CHAIN} {forwarded} -j ACCEPT");
    out.push_str("COMMIT\n");
    (out, rules)
}

/// The (ambassador port, endpoint) pairs of `old` that `new` does not
/// have. Pure.
pub fn removed_endpoints(old: &RoutingTable, new: &RoutingTable) -> Vec<(u16, SocketAddr)> {
    old.iter()
        .flat_map(|(port, route)| {
            let kept = new.get(port);
            route
                .endpoints
                .iter()
                .filter(move |ep| !kept.is_some_and(|r| r.endpoints.contains(ep)))
                .map(move |ep| (port, *ep))
        })
        .collect()
}

/// A rule comment naming the service port: only characters that need no
/// quoting, at most 200 of them.
fn comment(service: &str, port: u16) -> String {
    let mut c: String = service
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-') {
                ch
            } else {
                '_'
            }
        })
        .take(190)
        .collect();
    let _ = write!(c, ":{port}");
    c
}

fn hooks(spec: &KernelSpec) -> Vec<Hook> {
    let (lo, hi) = spec.ports;
    let to_embassy = |chain| Hook {
        table: "nat",
        chain,
        spec: [
            "-d",
            &format!("{}/32", spec.bind),
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            &format!("{lo}:{hi}"),
            "-m",
            "comment",
            "--comment",
            HOOK_COMMENT,
        ]
        .map(String::from)
        .to_vec(),
        target: NAT_CHAIN,
    };
    let plain = |table, chain, target| Hook {
        table,
        chain,
        spec: ["-m", "comment", "--comment", HOOK_COMMENT]
            .map(String::from)
            .to_vec(),
        target,
    };
    vec![
        to_embassy("PREROUTING"),
        to_embassy("OUTPUT"),
        plain("nat", "POSTROUTING", POST_CHAIN),
        plain("filter", "FORWARD", FORWARD_CHAIN),
    ]
}

/// The rules of `hook.chain` that jump to `hook.target`, as `iptables -S`
/// prints them.
async fn hook_rules(hook: &Hook) -> Result<Vec<Vec<String>>> {
    let listed = iptables(&["-t", hook.table, "-S", hook.chain]).await?;
    Ok(listed
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|words| {
            words.first().map(String::as_str) == Some("-A")
                && words
                    .windows(2)
                    .any(|w| w[0] == "-j" && w[1] == hook.target)
        })
        .collect())
}

/// Exactly one `hook`, first in its chain's evaluation of ours: kept when
/// it is there once as it should be, else every jump to the target is
/// deleted and the hook inserted at the top.
async fn ensure_hook(hook: &Hook) -> Result<()> {
    let found = hook_rules(hook).await?;
    let mut check = vec!["-t", hook.table, "-C", hook.chain];
    check.extend(hook.spec.iter().map(String::as_str));
    check.extend(["-j", hook.target]);
    if found.len() == 1 && iptables(&check).await.is_ok() {
        return Ok(());
    }
    delete_hooks(hook).await?;
    let mut insert = vec!["-t", hook.table, "-I", hook.chain, "1"];
    insert.extend(hook.spec.iter().map(String::as_str));
    insert.extend(["-j", hook.target]);
    iptables(&insert).await.map(|_| ())
}

/// Deletes every jump from `hook.chain` to `hook.target`.
async fn delete_hooks(hook: &Hook) -> Result<()> {
    for mut words in hook_rules(hook).await? {
        // "-A CHAIN ..." as listed becomes "-D CHAIN ...". The comment is a
        // single word, so splitting on whitespace kept every argument.
        words[0] = "-D".to_string();
        let mut args = vec!["-t", hook.table];
        args.extend(words.iter().map(String::as_str));
        iptables(&args).await?;
    }
    Ok(())
}

async fn iptables(args: &[&str]) -> Result<String> {
    let mut all = vec!["-w"];
    all.extend_from_slice(args);
    run("iptables", &all, None).await
}

/// Runs `program` with `args` (and `input` on its stdin); its stdout, or an
/// error with the command and what it printed on stderr.
async fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let command = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Command {
            command: command(),
            source,
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|source| Error::Command {
                command: command(),
                source,
            })?;
        // Dropped here: the tool sees the end of its input.
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| Error::Command {
            command: command(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Netfilter {
            command: command(),
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Route;

    fn spec() -> KernelSpec {
        KernelSpec {
            bind: Ipv4Addr::new(172, 17, 0, 1),
            ports: (20000, 29999),
        }
    }

    fn dnat_lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| l.contains("-j DNAT")).collect()
    }

    #[test]
    fn one_endpoint_is_one_unconditional_dnat() {
        let t = RoutingTable::new().with(
            20001,
            Route::new("web", 80, ["10.0.0.2:31000".parse().unwrap()]),
        );
        let (text, n) = render(&spec(), &t);
        assert_eq!(n, 1);
        assert_eq!(
            dnat_lines(&text),
            vec!["-A VIKING-EMBASSY -p tcp -m tcp --dport 20001 -m comment --comment web:80 -j DNAT --to-destination 10.0.0.2:31000"]
        );
        assert!(text.starts_with("*nat\n:VIKING-EMBASSY - [0:0]\n:VIKING-EMBASSY-POST - [0:0]\n"));
        assert!(text.contains("-A VIKING-EMBASSY-POST -m conntrack --ctstate DNAT --ctorigdst 172.17.0.1/32 --ctorigdstport 20000:29999 -j MASQUERADE\nCOMMIT\n"));
        assert!(text.ends_with("*filter\n:VIKING-EMBASSY-FWD - [0:0]\n\
            -A VIKING-EMBASSY-FWD -m conntrack --ctstate DNAT --ctorigdst 172.17.0.1/32 --ctorigdstport 20001 --ctdir ORIGINAL -m comment --comment web:80 -j ACCEPT\n\
            -A VIKING-EMBASSY-FWD -m conntrack --ctstate DNAT --ctorigdst 172.17.0.1/32 --ctorigdstport 20001 --ctdir REPLY -m comment --comment web:80 -j ACCEPT\n\
            -A VIKING-EMBASSY-FWD -m conntrack --ctstate DNAT --ctorigdst 172.17.0.1/32 --ctorigdstport 20000:29999 -j ACCEPT\nCOMMIT\n"), "{text}");
    }

    /// `iptables-save -c` as iptables-nft 1.8.9 prints viking's rules:
    /// connections from the DNAT rules' packets, bytes from the forward
    /// rules by direction; other chains and the range's rule ignored.
    #[test]
    fn counters_are_read_per_port() {
        let text = "\
*nat
:VIKING-EMBASSY - [0:0]
[3:180] -A VIKING-EMBASSY -p tcp -m tcp --dport 20001 -m comment --comment \"web:80\" -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 10.0.0.2:31000
[4:240] -A VIKING-EMBASSY -p tcp -m tcp --dport 20001 -m comment --comment \"web:80\" -j DNAT --to-destination 10.0.0.3:31000
[9:540] -A DOCKER -p tcp -m tcp --dport 20001 -j DNAT --to-destination 10.0.0.9:1
[7:420] -A VIKING-EMBASSY-POST -m conntrack --ctstate DNAT --ctorigdst 172.17.0.1 --ctorigdstport 20000:29999 -j MASQUERADE
COMMIT
*filter
[50:7000] -A VIKING-EMBASSY-FWD -m conntrack --ctstate DNAT --ctorigdst 172.17.0.1 --ctorigdstport 20001 --ctdir ORIGINAL -m comment --comment \"web:80\" -j ACCEPT
[40:90000] -A VIKING-EMBASSY-FWD -m conntrack --ctstate DNAT --ctorigdst 172.17.0.1 --ctorigdstport 20001 --ctdir REPLY -m comment --comment \"web:80\" -j ACCEPT
[5:500] -A VIKING-EMBASSY-FWD -m conntrack --ctstate DNAT --ctorigdst 172.17.0.1 --ctorigdstport 20000:29999 -j ACCEPT
COMMIT
";
        let c = parse_counters(text);
        assert_eq!(
            c.into_iter().collect::<Vec<_>>(),
            vec![(
                20001,
                PortCounts {
                    connections: 7,
                    bytes_from_clients: 7000,
                    bytes_to_clients: 90000
                }
            )]
        );
    }

    #[test]
    fn endpoints_get_even_shares() {
        let eps: Vec<SocketAddr> = (1..=4)
            .map(|i| format!("10.0.0.{i}:3100{i}").parse().unwrap())
            .collect();
        let t = RoutingTable::new()
            .with(20002, Route::new("api", 8080, eps.clone()))
            .with(20003, Route::new("empty", 80, []));
        let (text, n) = render(&spec(), &t);
        assert_eq!(n, 4);
        let lines = dnat_lines(&text);
        // The chance each rule is taken given the ones before were not.
        let probs: Vec<Option<f64>> = lines
            .iter()
            .map(|l| {
                l.split_once("--probability ")
                    .map(|(_, rest)| rest.split(' ').next().unwrap().parse().unwrap())
            })
            .collect();
        assert_eq!(probs[3], None);
        let mut left = 1.0;
        for (i, p) in probs.iter().enumerate() {
            let p = p.unwrap_or(1.0);
            let share = left * p;
            assert!((share - 0.25).abs() < 1e-9, "endpoint {i}: {share}");
            left -= share;
        }
        for (line, ep) in lines.iter().zip(&eps) {
            assert!(line.ends_with(&format!("--to-destination {ep}")), "{line}");
        }
        // A route without endpoints has no rule: the port refuses.
        assert!(!text.contains("--dport 20003"));
    }

    #[test]
    fn comments_need_no_quoting_and_ipv6_is_left_out() {
        let t = RoutingTable::new().with(
            20004,
            Route::new(
                "we b\"x",
                80,
                [
                    "[::1]:31000".parse().unwrap(),
                    "10.0.0.9:1".parse().unwrap(),
                ],
            ),
        );
        let (text, n) = render(&spec(), &t);
        assert_eq!(n, 1);
        assert!(text.contains("--comment we_b_x:80 -j DNAT --to-destination 10.0.0.9:1"));
    }

    #[test]
    fn removed_endpoints_are_the_ones_the_new_table_lacks() {
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:2".parse().unwrap();
        let old = RoutingTable::new()
            .with(20001, Route::new("x", 80, [a, b]))
            .with(20002, Route::new("y", 80, [a]));
        let new = RoutingTable::new().with(20001, Route::new("x", 80, [b]));
        assert_eq!(removed_endpoints(&old, &new), vec![(20001, a), (20002, a)]);
        assert!(removed_endpoints(&new, &old).is_empty());
    }

    #[test]
    fn rendering_is_deterministic() {
        let t = RoutingTable::new()
            .with(20002, Route::new("b", 80, ["10.0.0.2:1".parse().unwrap()]))
            .with(20001, Route::new("a", 80, ["10.0.0.1:1".parse().unwrap()]));
        assert_eq!(render(&spec(), &t), render(&spec(), &t.clone()));
        let (text, _) = render(&spec(), &t);
        let a = text.find("--dport 20001").unwrap();
        let b = text.find("--dport 20002").unwrap();
        assert!(a < b);
    }
}
