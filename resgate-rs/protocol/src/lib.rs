//! The RES protocol, without I/O.
//!
//! Everything the gateway and the services agree on lives here: resource IDs and their validation,
//! values (primitives, references, data values), error codes, protocol versions, the client
//! request/response/event frames and the service request/response payloads. Nothing in this crate
//! touches a socket, so it is cheap to test exhaustively and to fuzz.
//!
//! Where Resgate (the Go reference gateway) and the written specification disagree, this crate
//! follows Resgate and says so next to the code.

pub mod client;
pub mod error;
pub mod json;
pub mod pattern;
pub mod rid;
pub mod service;
pub mod value;
pub mod version;

pub use error::{ResError, code};
pub use rid::{is_valid_rid, is_valid_rid_part};
pub use value::Value;
pub use version::ProtocolVersion;
