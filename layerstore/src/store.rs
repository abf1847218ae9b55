//! Store.
pub struct Store;
