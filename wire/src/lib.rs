//! What berthd and the snapshotter exchange, declared once: the layer
//! index (the JSON of `GET /v2/<name>/_berth/layer/<digest>/index`, see
//! docs/api.md) and RFC 3339 times. Both binaries link this crate; the
//! snapshotter never links berthd.
//!
//! Only data and the checks any reader of it needs live here: building an
//! index, storing it and planning range reads are berthd's
//! (`berthd::layerindex`), mounting is the snapshotter's.
#![deny(unsafe_code)]

pub mod layer_index;
pub mod time;
