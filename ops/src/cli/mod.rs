//! One module per subcommand.

pub mod agent;
pub mod client;
pub mod compact;
pub mod coord;
pub mod defrag;
pub mod dev;
pub mod drain;
pub mod federation;
pub mod install;
pub mod kv;
pub mod member;
pub mod service;
pub mod snapshot;
pub mod tls;
