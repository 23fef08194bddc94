//! Partition key -> owner worker.
//!
//! Declared keys are spread round-robin over the workers in declaration
//! order (as 0.4.2 did); any other key goes through a fixed-seed hash of a
//! canonical encoding of its value, never Python's `hash()` (salted per
//! process). Keys compare as Python compares them: `1 == 1.0 == True` are one
//! key, so ints and bools share an encoding.

use std::collections::HashMap;
use std::hash::Hasher;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyInt, PyString, PyTuple};

/// Where keys live.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    workers: usize,
    declared: HashMap<Vec<u8>, usize>,
}

/// The canonical bytes of a key; None for a type keys may not have.
pub fn canonical_key(key: &Bound<'_, PyAny>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    encode(key, &mut out).then_some(out)
}

fn encode(key: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> bool {
    if key.is_none() {
        out.push(b'n');
    } else if let Ok(text) = key.cast::<PyString>() {
        let Ok(text) = text.to_cow() else {
            return false;
        };
        out.push(b's');
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    } else if let Ok(bytes) = key.cast::<PyBytes>() {
        out.push(b'b');
        out.extend_from_slice(&(bytes.as_bytes().len() as u64).to_le_bytes());
        out.extend_from_slice(bytes.as_bytes());
    } else if key.is_instance_of::<PyBool>() || key.is_instance_of::<PyInt>() {
        match key.extract::<i64>() {
            Ok(small) => {
                out.push(b'i');
                out.extend_from_slice(&small.to_le_bytes());
            }
            Err(_) => {
                let Ok(text) = key.str() else { return false };
                let Ok(text) = text.to_cow() else {
                    return false;
                };
                out.push(b'I');
                out.extend_from_slice(&(text.len() as u64).to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
    } else if let Ok(tuple) = key.cast::<PyTuple>() {
        out.push(b't');
        out.extend_from_slice(&(tuple.len() as u64).to_le_bytes());
        for item in tuple.iter() {
            if !encode(&item, out) {
                return false;
            }
        }
    } else {
        return false;
    }
    true
}

/// The key whose [`canonical_key`] is `bytes` (a bool comes back as an
/// int, which is the same dict key). None if `bytes` is not one.
pub fn key_from_canonical<'py>(py: Python<'py>, bytes: &[u8]) -> Option<Bound<'py, PyAny>> {
    let mut rest = bytes;
    let key = decode(py, &mut rest)?;
    rest.is_empty().then_some(key)
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn take_len(rest: &mut &[u8]) -> Option<usize> {
    let bytes: [u8; 8] = take(rest, 8)?.try_into().ok()?;
    usize::try_from(u64::from_le_bytes(bytes)).ok()
}

fn decode<'py>(py: Python<'py>, rest: &mut &[u8]) -> Option<Bound<'py, PyAny>> {
    let tag = *take(rest, 1)?.first()?;
    Some(match tag {
        b'n' => py.None().into_bound(py),
        b's' => {
            let n = take_len(rest)?;
            PyString::new(py, std::str::from_utf8(take(rest, n)?).ok()?).into_any()
        }
        b'b' => {
            let n = take_len(rest)?;
            PyBytes::new(py, take(rest, n)?).into_any()
        }
        b'i' => {
            let bytes: [u8; 8] = take(rest, 8)?.try_into().ok()?;
            i64::from_le_bytes(bytes).into_pyobject(py).ok()?.into_any()
        }
        b'I' => {
            let n = take_len(rest)?;
            let text = std::str::from_utf8(take(rest, n)?).ok()?;
            py.get_type::<PyInt>().call1((text,)).ok()?
        }
        b't' => {
            let n = take_len(rest)?;
            let items = (0..n)
                .map(|_| decode(py, rest))
                .collect::<Option<Vec<_>>>()?;
            PyTuple::new(py, items).ok()?.into_any()
        }
        _ => return None,
    })
}

/// A hash that is the same in every process and every run.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    // FNV-1a then a final mix: stable, fast, well spread for short keys.
    let mut hasher = Fnv1a::default();
    hasher.write(bytes);
    let mut h = hasher.finish();
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl RoutingTable {
    /// A table for `workers` workers with `declared` keys (canonical encodings,
    /// in declaration order).
    pub fn new(workers: usize, declared: &[Vec<u8>]) -> RoutingTable {
        let workers = workers.max(1);
        let mut table = HashMap::new();
        let mut next = 0usize;
        for key in declared {
            if !table.contains_key(key) {
                table.insert(key.clone(), next % workers);
                next += 1;
            }
        }
        RoutingTable {
            workers,
            declared: table,
        }
    }

    /// The worker that owns the key with canonical encoding `key`.
    pub fn owner(&self, key: &[u8]) -> usize {
        match self.declared.get(key) {
            Some(&worker) => worker,
            None => (stable_hash(key) % self.workers as u64) as usize,
        }
    }

    /// How many workers the table spreads keys over.
    pub fn workers(&self) -> usize {
        self.workers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_keys_go_round_robin_and_others_hash_stably() {
        let keys: Vec<Vec<u8>> = (0..5u8).map(|k| vec![k]).collect();
        let table = RoutingTable::new(2, &keys);
        let owners: Vec<usize> = keys.iter().map(|k| table.owner(k)).collect();
        assert_eq!(owners, vec![0, 1, 0, 1, 0]);
        let other = b"dynamic".to_vec();
        assert_eq!(table.owner(&other), table.owner(&other));
        assert_eq!(stable_hash(b"abc"), stable_hash(b"abc"));
        assert_ne!(stable_hash(b"abc"), stable_hash(b"abd"));
    }

    #[test]
    fn python_equal_keys_encode_the_same() {
        Python::initialize();
        Python::attach(|py| {
            let one = 1i64.into_pyobject(py).unwrap().into_any();
            let yes = PyBool::new(py, true).to_owned().into_any();
            assert_eq!(canonical_key(&one), canonical_key(&yes));
            let text = PyString::new(py, "a").into_any();
            let bytes = PyBytes::new(py, b"a").into_any();
            assert_ne!(canonical_key(&text), canonical_key(&bytes));
            let tuple = PyTuple::new(py, [1i64, 2]).unwrap().into_any();
            assert!(canonical_key(&tuple).is_some());
            let big = py.eval(c"10**30", None, None).unwrap();
            assert!(canonical_key(&big).is_some());
            let list = py.eval(c"[1]", None, None).unwrap();
            assert!(canonical_key(&list).is_none());
        });
    }

    #[test]
    fn canonical_keys_decode_to_equal_keys() {
        Python::initialize();
        Python::attach(|py| {
            for text in [
                c"'a'",
                c"b'\\x00b'",
                c"-7",
                c"10**30",
                c"-(10**30)",
                c"(1, ('x', b'y'), None)",
                c"()",
            ] {
                let key = py.eval(text, None, None).unwrap();
                let bytes = canonical_key(&key).unwrap();
                let back = key_from_canonical(py, &bytes).unwrap();
                assert!(back.eq(&key).unwrap(), "{text:?}");
                assert_eq!(canonical_key(&back).unwrap(), bytes);
            }
            assert!(key_from_canonical(py, b"s\x05\0\0\0\0\0\0\0ab").is_none());
            assert!(key_from_canonical(py, b"q").is_none());
        });
    }
}
