//! mDNS discovery (mdns-sd): advertise `_lanspread._udp.local.` with our peer id and QUIC
//! port, browse for others and dial what is found — never ourselves, never a peer we are
//! already linked to. IPv4 and IPv6 addresses are both tried; a missing family is fine.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tracing::{debug, info, warn};

use crate::state::Shared;
use crate::DaemonError;

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
    tokio::spawn(async move {
        while let Ok(event) = events.recv_async().await {
            if let ServiceEvent::ServiceResolved(found) = event {
                found_peer(&shared, &found).await;
            }
        }
    });
    info!(service = SERVICE, "mDNS discovery on");
    Ok(Mdns { daemon })
}

async fn found_peer(shared: &Arc<Shared>, found: &ServiceInfo) {
    let Some(id) = found.get_property_val_str("id") else {
        return;
    };
    if id == shared.me.id.as_str() {
        return;
    }
    if shared.peers.is_linked(id) {
        return;
    }
    // IPv4 first (the common LAN case), then IPv6.
    let mut addrs: Vec<IpAddr> = found.get_addresses().iter().copied().collect();
    addrs.sort_by_key(|a| (a.is_ipv6(), *a));
    for ip in addrs {
        let addr = SocketAddr::new(ip, found.get_port());
        match crate::links::dial(shared, addr).await {
            Ok(p) => {
                info!(peer = %p.peer_id.short(), %addr, "connected to a peer found by mDNS");
                return;
            }
            Err(e) => debug!(%addr, "mDNS peer not reachable there: {e}"),
        }
    }
    warn!(
        peer = id,
        "found by mDNS but reachable at none of its addresses"
    );
}
