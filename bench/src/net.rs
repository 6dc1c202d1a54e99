//! Where the bench's two sides talk: loopback, or a veth pair between two network
//! namespaces with a chosen MTU (`../shared/perf.md`: loopback flatters QUIC — MTU 65536 —
//! so tuning is also measured over veth at 1500 and 9000). Side 0 is the receiver / the
//! client, side 1 the sender / the source. The namespaces are deleted on drop. Needs root
//! and iproute2's `ip`.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

/// The link both sides of a case use.
pub struct Net {
    veth: Option<Veth>,
}

struct Veth {
    mtu: u32,
    /// Namespace names, side 0 and side 1.
    ns: [String; 2],
    /// `/run/netns/<ns>` held open for `setns`.
    fds: [File; 2],
    addrs: [Ipv4Addr; 2],
    /// The `tc` rate both directions are limited to, if any.
    rate: Option<String>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("ip {args:?} (needs iproute2 and root)"))?;
    anyhow::ensure!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Moves the calling thread into the network namespace open as `fd`.
fn enter(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: setns on an open namespace descriptor; it changes only this thread's
    // network namespace (and is async-signal-safe, so it may run between fork and exec).
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Net {
    /// Loopback, `127.0.0.1` on both sides.
    pub fn loopback() -> Net {
        Net { veth: None }
    }

    /// Two fresh namespaces joined by a veth pair with `mtu` on both ends.
    pub fn veth(mtu: u32) -> anyhow::Result<Net> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let tag = format!("{pid}-{}", SEQ.fetch_add(1, Ordering::Relaxed));
        let ns = [format!("lsbench-c-{tag}"), format!("lsbench-s-{tag}")];
        // Each pair is in namespaces of its own, so pairs never share a subnet anyway.
        let subnet = pid % 200 + 20;
        let addrs = [
            Ipv4Addr::new(10, 232, subnet as u8, 1),
            Ipv4Addr::new(10, 232, subnet as u8, 2),
        ];
        ip(&["netns", "add", &ns[0]])?;
        // From here on a failure deletes what exists (drop of the half-built guard).
        let mut guard = Cleanup(vec![ns[0].clone()]);
        ip(&["netns", "add", &ns[1]])?;
        guard.0.push(ns[1].clone());
        ip(&[
            "-n", &ns[0], "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns",
            &ns[1],
        ])?;
        let mtu_s = mtu.to_string();
        for (side, dev) in [(0, "veth0"), (1, "veth1")] {
            let n = &ns[side];
            ip(&[
                "-n",
                n,
                "addr",
                "add",
                &format!("{}/24", addrs[side]),
                "dev",
                dev,
            ])?;
            ip(&["-n", n, "link", "set", dev, "mtu", &mtu_s, "up"])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        let open = |n: &str| {
            File::open(format!("/run/netns/{n}")).with_context(|| format!("open netns {n}"))
        };
        let fds = [open(&ns[0])?, open(&ns[1])?];
        // Built: from now on `Veth`'s drop deletes them.
        guard.0.clear();
        Ok(Net {
            veth: Some(Veth {
                mtu,
                ns,
                fds,
                addrs,
                rate: None,
            }),
        })
    }

    /// Rate-limits both directions of the veth pair with `tc tbf` as the swarm lab limits
    /// each host's link (`rate` such as `100mbit`; burst and queue from
    /// `LANSPREAD_BENCH_TBF`, default `burst 64kb latency 50ms`, the lab's). Studies how
    /// one transport's flows do through the lab's qdisc. Needs `tc` (iproute2).
    pub fn limit(&mut self, rate: &str) -> anyhow::Result<()> {
        let v = self.veth.as_mut().context("--rate needs --veth")?;
        let tail = std::env::var("LANSPREAD_BENCH_TBF")
            .unwrap_or_else(|_| "burst 64kb latency 50ms".into());
        for (n, dev) in [(&v.ns[0], "veth0"), (&v.ns[1], "veth1")] {
            let mut args = vec![
                "-n", n, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
            ];
            args.extend(tail.split_whitespace());
            let out = Command::new("tc")
                .args(&args)
                .output()
                .context("tc (iproute2)")?;
            anyhow::ensure!(
                out.status.success(),
                "tc {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        v.rate = Some(rate.to_owned());
        Ok(())
    }

    /// `loopback` or `veth MTU n`.
    pub fn name(&self) -> String {
        match &self.veth {
            None => "loopback".into(),
            Some(Veth {
                mtu, rate: None, ..
            }) => format!("veth MTU {mtu}"),
            Some(Veth {
                mtu, rate: Some(r), ..
            }) => format!("veth MTU {mtu}, tbf {r}"),
        }
    }

    /// The address `side` binds and is reached at.
    pub fn addr(&self, side: usize) -> IpAddr {
        match &self.veth {
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(v) => IpAddr::V4(v.addrs[side]),
        }
    }

    /// `addr(side)` with port 0.
    pub fn bind_addr(&self, side: usize) -> SocketAddr {
        SocketAddr::new(self.addr(side), 0)
    }

    /// The namespaces' names (none on loopback).
    pub fn namespaces(&self) -> Vec<String> {
        self.veth.iter().flat_map(|v| v.ns.clone()).collect()
    }

    /// Bytes `side`'s veth end has received so far (`None` on loopback).
    pub fn rx_bytes(&self, side: usize) -> anyhow::Result<Option<u64>> {
        let Some(v) = &self.veth else {
            return Ok(None);
        };
        let dev = ["veth0", "veth1"][side];
        let out = Command::new("ip")
            .args(["-j", "-s", "-n", &v.ns[side], "link", "show", dev])
            .output()
            .context("ip link show")?;
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("ip -j link show {dev}"))?;
        let bytes = doc[0]["stats64"]["rx"]["bytes"].as_u64();
        bytes.map(Some).context("no rx byte count in ip's answer")
    }

    /// Moves the calling thread into `side`'s namespace (nothing on loopback). Call it on
    /// a thread of its own before it opens sockets.
    pub fn enter(&self, side: usize) -> anyhow::Result<()> {
        if let Some(v) = &self.veth {
            enter(v.fds[side].as_raw_fd()).context("setns")?;
        }
        Ok(())
    }

    /// Makes `cmd` run in `side`'s namespace.
    pub fn command(&self, side: usize, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        if let Some(v) = &self.veth {
            let fd = v.fds[side].as_raw_fd();
            // SAFETY: the closure only calls setns (async-signal-safe) in the child.
            unsafe {
                cmd.pre_exec(move || enter(fd));
            }
        }
    }
}

/// Deletes namespaces on drop.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        drop(Cleanup(self.ns.to_vec()));
    }
}
