//! The browser-facing parts in a real browser: Debian's headless Chromium
//! (`chromium`, `chromium-driver`; scripts/test installs them) against the
//! service in process, with real PostgreSQL, Redis and the SMTP sink.
//! Screenshots of each run land in `target/screenshots/`.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod control;
mod driver;
mod form;
mod site;
