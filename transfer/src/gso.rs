//! Segmentation offload batches that fit one UDP send.
//!
//! quinn hands the socket up to 10 datagrams of the path's MTU at once as one GSO send
//! (`MAX_TRANSMIT_SEGMENTS` in quinn 0.11). Linux refuses a GSO send whose datagrams add
//! up to more than one UDP datagram can carry (65,507 bytes) with `EMSGSIZE`, and quinn-udp
//! takes `EMSGSIZE` for a failed MTU probe and drops the batch without a word. With
//! jumbo datagrams (8,952 bytes: 10 of them are 89,520) every full batch was lost: a
//! jumbo path lost half its packets, and the black-hole detector took the losses for an
//! MTU reduction. [`FitBatches`] tells quinn to batch fewer datagrams so that a batch of
//! the largest datagram this endpoint may send always fits.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The most payload one UDP send can carry over IPv4 (and one GSO batch in all).
pub const MAX_UDP_SEND: usize = 65_507;

/// Datagrams of up to `max_datagram` bytes one GSO send may batch (at least one).
pub fn batch_limit(max_datagram: u16) -> usize {
    (MAX_UDP_SEND / usize::from(max_datagram.max(1))).max(1)
}

/// A socket that batches at most as many datagrams as fit one UDP send.
pub struct FitBatches {
    inner: Arc<dyn AsyncUdpSocket>,
    segments: usize,
}

impl FitBatches {
    /// Wraps `inner` for datagrams of up to `max_datagram` bytes.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, max_datagram: u16) -> Self {
        Self {
            inner,
            segments: batch_limit(max_datagram),
        }
    }
}

impl fmt::Debug for FitBatches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FitBatches")
            .field("inner", &self.inner)
            .field("segments", &self.segments)
            .finish()
    }
}

impl AsyncUdpSocket for FitBatches {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.segments)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_the_largest_datagrams_fits_one_send() {
        assert_eq!(batch_limit(1452), 45);
        assert_eq!(batch_limit(8952), 7);
        let (fits, one_more) = (batch_limit(8952) * 8952, (batch_limit(8952) + 1) * 8952);
        assert!(fits <= MAX_UDP_SEND && one_more > MAX_UDP_SEND);
        assert_eq!(batch_limit(65_527), 1);
        assert_eq!(batch_limit(0), MAX_UDP_SEND);
    }
}
