//! mDNS discovery (mdns-sd): advertise `_lanspread._udp.local.` with our peer id and QUIC
//! port, browse for others and dial what is found: never ourselves, never a peer we are
//! already linked to, and only the peer a record names (a record is anyone's to send).
//! IPv4 and IPv6 addresses are both tried; a missing family is fine.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use lanspread_proto::PeerId;
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::links::{dial_peer, AfterLoss, Capped};

use crate::state::Shared;
use crate::DaemonError;

/// Most addresses of one found service dialled, and most found peers dialled at once:
/// records with dozens of dead addresses, or many records, cannot keep discovery busy.
const MAX_ADDRS: usize = 4;
const MAX_DIALS: usize = 16;
/// Most found peers waiting for a dial slot.
const MAX_WAITING: usize = 1024;

/// The DNS-SD service type.
pub const SERVICE: &str = "_lanspread._udp.local.";

/// A running mDNS responder and browser; stopped on drop.
pub struct Mdns {
    daemon: ServiceDaemon,
}

impl Drop for Mdns {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

/// Starts advertising and browsing. `interfaces`, when not empty, is the allow-list of
/// interface names used for mDNS.
pub fn start(shared: Arc<Shared>, interfaces: &[String]) -> Result<Mdns, DaemonError> {
    let daemon = ServiceDaemon::new().map_err(|e| DaemonError::Discovery(format!("mDNS: {e}")))?;
    if !interfaces.is_empty() {
        daemon
            .disable_interface(IfKind::All)
            .map_err(|e| DaemonError::Discovery(format!("mDNS: {e}")))?;
        let allowed: Vec<IfKind> = interfaces.iter().map(|n| IfKind::Name(n.clone())).collect();
        daemon
            .enable_interface(allowed)
            .map_err(|e| DaemonError::Discovery(format!("mDNS: {e}")))?;
    }
    let id = shared.me.id.as_str().to_owned();
    let host = format!("{id}.local.");
    let props = [("id", id.as_str())];
    let port = shared.me.listen.port();
    let ip = shared.me.listen.ip();
    let service = if ip.is_unspecified() {
        // Listening everywhere: advertise every address of the allowed interfaces.
        ServiceInfo::new(SERVICE, &id, &host, (), port, &props[..])
            .map(ServiceInfo::enable_addr_auto)
    } else {
        ServiceInfo::new(SERVICE, &id, &host, ip, port, &props[..])
    }
    .map_err(|e| DaemonError::Discovery(format!("mDNS service: {e}")))?;
    daemon
        .register(service)
        .map_err(|e| DaemonError::Discovery(format!("mDNS register: {e}")))?;
    let events = daemon
        .browse(SERVICE)
        .map_err(|e| DaemonError::Discovery(format!("mDNS browse: {e}")))?;
    tokio::spawn(browse(shared, events));
    info!(service = SERVICE, "mDNS discovery on");
    Ok(Mdns { daemon })
}

/// Dials the peers found, each in a task of its own, one at a time per id and at most
/// [`MAX_DIALS`] at once; the rest wait their turn (the latest record of each id, at most
/// [`MAX_WAITING`] ids). The browser never waits on a dial: mdns-sd's channel is bounded,
/// and its thread blocks on a full one, which would silence our own answers too.
async fn browse(shared: Arc<Shared>, events: mdns_sd::Receiver<ServiceEvent>) {
    let mut dialling: HashSet<PeerId> = HashSet::new();
    let mut waiting: HashMap<PeerId, ServiceInfo> = HashMap::new();
    let mut dials = JoinSet::new();
    loop {
        tokio::select! {
            event = events.recv_async() => {
                let Ok(event) = event else { break };
                let ServiceEvent::ServiceResolved(found) = event else {
                    continue;
                };
                let Some(id) = wanted(&shared, &found) else {
                    continue;
                };
                if dialling.contains(&id) {
                    continue;
                }
                if dialling.len() >= MAX_DIALS {
                    if waiting.len() < MAX_WAITING || waiting.contains_key(&id) {
                        waiting.insert(id, found);
                    }
                    continue;
                }
                dialling.insert(id.clone());
                dials.spawn(found_peer(shared.clone(), id, found));
            }
            Some(done) = dials.join_next() => {
                if let Ok(id) = done {
                    dialling.remove(&id);
                }
                // The next waiting peer still worth a dial.
                while dialling.len() < MAX_DIALS {
                    let Some(id) = waiting.keys().next().cloned() else { break };
                    let Some(found) = waiting.remove(&id) else { break };
                    if dialling.contains(&id) || wanted(&shared, &found).is_none() {
                        continue;
                    }
                    dialling.insert(id.clone());
                    dials.spawn(found_peer(shared.clone(), id, found));
                }
            }
        }
    }
}

/// The id a found service claims, when it is a peer to dial: not us, not linked.
fn wanted(shared: &Shared, found: &ServiceInfo) -> Option<PeerId> {
    let id: PeerId = found.get_property_val_str("id")?.parse().ok()?;
    (id != shared.me.id && !shared.peers.is_linked(id.as_str())).then_some(id)
}

/// Dials the peer `id` a service claims to be at (at most [`MAX_ADDRS`] of its
/// addresses). The peer there must prove that id and not be linked already: anyone can
/// send mDNS records, and one naming a linked peer's address under another id would
/// otherwise replace that link (a new link in the same direction wins), again and again.
async fn found_peer(shared: Arc<Shared>, id: PeerId, found: ServiceInfo) -> PeerId {
    // IPv4 first (the common LAN case), then IPv6.
    let mut addrs: Vec<IpAddr> = found.get_addresses().iter().copied().collect();
    addrs.sort_by_key(|a| (a.is_ipv6(), *a));
    addrs.truncate(MAX_ADDRS);
    // Addresses at their link cap are not dialled (a host announcing many ids).
    let port = found.get_port();
    addrs.retain(|ip| match shared.peers.address_cap(&id, *ip) {
        Some(why) => {
            crate::links::log_cap_refusal(&shared, SocketAddr::new(*ip, port), &why);
            false
        }
        None => true,
    });
    if addrs.is_empty() {
        return id;
    }
    for ip in addrs {
        let addr = SocketAddr::new(ip, found.get_port());
        match dial_peer(&shared, (addr, Capped(true)), Some(&id), AfterLoss::Redial).await {
            Ok(p) => {
                info!(peer = %p.peer_id.short(), %addr, "connected to a peer found by mDNS");
                return id;
            }
            // It dialled us meanwhile (both found each other at once): linked all the same.
            Err(_) if shared.peers.is_linked(id.as_str()) => return id,
            Err(e) => info!(%addr, "mDNS peer {} not reachable there: {e}", id.short()),
        }
    }
    warn!(
        peer = %id.short(),
        "found by mDNS but reachable at none of its addresses"
    );
    id
}
