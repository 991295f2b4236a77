//! Umbrella crate.
pub use burn;
