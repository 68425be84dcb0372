//! keel-server's integration tests: a real `App` over HTTP against the
//! simulator. One binary, a module per area.

mod limits;
mod requests;
mod usage;
