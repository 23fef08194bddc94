//! The crate's one lock helper.

use std::sync::{Mutex, MutexGuard};

/// Lock `mutex`, going on with its data if a thread panicked while holding
/// it: every value the crate keeps under a mutex stays valid between
/// statements (counters, slots, channel ends), so a panic elsewhere must not
/// turn every later lock into a second panic.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_gives_its_value() {
        let mutex = std::sync::Arc::new(Mutex::new(7));
        let held = mutex.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.lock();
            panic!("poison it");
        })
        .join();
        assert!(mutex.is_poisoned());
        assert_eq!(*lock(&mutex), 7);
    }
}
