//! Lock acquisition that survives poisoning.
//!
//! A lock is poisoned when a thread panics while holding it. Each FUSE
//! request runs on a worker thread, and one request that panics must not
//! take the whole mount down: every later request would otherwise panic on
//! the poisoned lock. The data behind these locks is kept consistent at each
//! step (maps and counters, no multi-step invariants held across a panic
//! point), so the guard is taken back and used as is.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, recovering the guard if a panicked thread poisoned it.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes `l` for reading, recovering the guard if it was poisoned.
pub(crate) fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Takes `l` for writing, recovering the guard if it was poisoned.
pub(crate) fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
