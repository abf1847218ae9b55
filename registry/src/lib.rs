//! Images between an OCI distribution registry and the layer store.
//!
//! [`reference`] parses image references as Docker does, [`auth`] reads and
//! writes the credential files podman and Docker use, [`client`] reaches a
//! registry (TLS rules, credentials) through oci-client; [`pull`] brings an
//! image into the store.

pub mod auth;
pub mod client;
pub mod login;
pub mod pull;
pub mod push;
pub mod reference;

pub use reference::Reference;
