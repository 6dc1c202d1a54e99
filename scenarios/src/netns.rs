//! Test hosts in network namespaces joined by a bridge (for mDNS across hosts). Names are
//! unique per process and call; everything is deleted on drop, also when a test fails.
//! Needs root and iproute2's `ip`.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use tempfile::TempDir;

use crate::{Node, NodeOptions};

/// A small LAN: one namespace per host plus one holding the bridge.
pub struct NetLab {
    bridge_ns: String,
    hosts: Vec<(String, String)>,
}

/// Runs one of iproute2's tools (`ip`, `tc`), failing the test with its stderr.
fn iproute(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} {args:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    iproute("ip", args);
}

impl NetLab {
    /// Creates `hosts` namespaces on 10.231.<n>.0/24, each with `eth0` on one bridge.
    pub fn new(hosts: usize) -> NetLab {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let subnet = (std::process::id() % 200) + 20;
        let mut lab = NetLab {
            bridge_ns: format!("lsbr-{tag}"),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &lab.bridge_ns]);
        let br = lab.bridge_ns.clone();
        ip(&[
            "-n",
            &br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for i in 0..hosts {
            let ns = format!("lsh{i}-{tag}");
            ip(&["netns", "add", &ns]);
            let addr = format!("10.231.{subnet}.{}", i + 1);
            // Push now, so a failure below still deletes this namespace.
            lab.hosts.push((ns.clone(), addr.clone()));
            let port = format!("p{i}");
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &br,
            ]);
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up", "multicast", "on"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
        lab
    }

    /// Limits host `i`'s link to `rate` (a `tc` rate such as `40mbit`) in both
    /// directions: a token bucket on its `eth0` (what it sends) and on its bridge port
    /// (what it receives). Needs `tc` (iproute2). For studies of a link's queue,
    /// `LANSPREAD_LAB_TBF` replaces the bucket's `burst 64kb latency 50ms` and
    /// `LANSPREAD_LAB_CHILD` names a qdisc put under it (such as `fq_codel`).
    pub fn limit(&self, i: usize, rate: &str) {
        let (ns, _) = &self.hosts[i];
        let port = format!("p{i}");
        let tail =
            std::env::var("LANSPREAD_LAB_TBF").unwrap_or_else(|_| "burst 64kb latency 50ms".into());
        let child = std::env::var("LANSPREAD_LAB_CHILD").ok();
        for (ns, dev) in [
            (ns.as_str(), "eth0"),
            (self.bridge_ns.as_str(), port.as_str()),
        ] {
            let mut args = vec![
                "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "tbf", "rate", rate,
            ];
            args.extend(tail.split_whitespace());
            iproute("tc", &args);
            if let Some(child) = &child {
                let mut args = vec!["-n", ns, "qdisc", "add", "dev", dev, "parent", "1:1"];
                args.extend(child.split_whitespace());
                iproute("tc", &args);
            }
        }
    }

    /// Starts a daemon on host `i` (listening on its address) with `opts`.
    pub fn node(&self, i: usize, name: &str, games: &Path, opts: &NodeOptions) -> Node {
        let (ns, addr) = self.host(i);
        let opts = NodeOptions {
            listen: Some(format!("{addr}:0")),
            netns: Some(ns.to_owned()),
            ..opts.clone()
        };
        Node::start_with(name, games, opts)
    }

    /// A file server on host 0 serving `games` and `n` clients with empty games dirs on
    /// hosts 1..=n, each told the server's address; every daemon gets `opts`.
    pub fn star(&self, games: &Path, n: usize, opts: &NodeOptions) -> (Node, Vec<(Node, TempDir)>) {
        let server = self.node(0, "server", games, opts);
        let clients = (0..n)
            .map(|i| {
                let dir = tempfile::tempdir().expect("client dir");
                let c = self.node(i + 1, &format!("c{i}"), dir.path(), opts);
                c.connect(&server);
                (c, dir)
            })
            .collect();
        (server, clients)
    }

    /// Namespace name and address of host `i`.
    pub fn host(&self, i: usize) -> (&str, &str) {
        let (ns, addr) = &self.hosts[i];
        (ns, addr)
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for (ns, _) in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.bridge_ns])
            .output();
    }
}
