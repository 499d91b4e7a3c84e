//! Moving frames between organisations: QUIC (quinn) with pinned mutual TLS
//! (rustls, ring provider).
//!
//! [`tls`] decides who may connect, [`endpoint`] sets up the QUIC endpoint
//! and tells which organisation is on a connection, [`frame`] reads and
//! writes length-prefixed protobuf messages on a stream. One notice travels
//! on one bidirectional stream: a `PeerRequest` frame, answered by a
//! `PeerResponse` frame.

pub mod endpoint;
pub mod frame;
pub mod tls;
