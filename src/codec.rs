//! The record codec: how Python objects become bytes and back, for records
//! crossing workers, states in snapshots and states handed over.
//!
//! A batch of records made only of plain data goes with `marshal` (two to
//! three times faster than pickle for a JSON-like event, same types back);
//! anything else with pickle, or with the application's own `serialize` /
//! `deserialize` for values when it defines both.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// How records cross workers: one serialized list per batch and destination,
/// and the application's own `serialize` / `deserialize` for each value when
/// it defines them.
///
/// A batch made only of plain data (dict, list, tuple, str, bytes, int,
/// float, bool, None: what a JSON or msgpack decoder returns) goes with
/// `marshal` instead, which writes and reads it two to three times faster
/// and gives back the same types; anything else, a subclass included, goes
/// with pickle. The first byte of a batch says which.
pub struct Codec {
    /// `pickle.dumps`, called with the highest protocol.
    dumps: Py<PyAny>,
    protocol: Py<PyAny>,
    loads: Py<PyAny>,
    marshal_dumps: Py<PyAny>,
    marshal_loads: Py<PyAny>,
    own: Option<(Py<PyAny>, Py<PyAny>)>,
}

/// First byte of a batch of records written with pickle.
const PICKLED: u8 = b'P';
/// First byte of a batch of records written with marshal.
const MARSHALLED: u8 = b'M';
/// The marshal format version used (Python 3.4 and later read it).
const MARSHAL_VERSION: u8 = 4;
/// Containers nested deeper than this go with pickle (and a cycle cannot
/// make the check run forever).
const PLAIN_DEPTH: usize = 24;

/// Whether `obj` is plain data that marshal gives back as the same types:
/// exact dict, list, tuple, str, bytes, int, float, bool or None, nested at
/// most [`PLAIN_DEPTH`] deep. (marshal would turn a bytearray or any other
/// buffer into bytes, and refuses other types.)
fn plain(obj: &Bound<'_, PyAny>, depth: usize) -> bool {
    if obj.is_exact_instance_of::<PyString>()
        || obj.is_exact_instance_of::<PyInt>()
        || obj.is_none()
        || obj.is_exact_instance_of::<PyBool>()
        || obj.is_exact_instance_of::<PyFloat>()
        || obj.is_exact_instance_of::<PyBytes>()
    {
        return true;
    }
    if depth == 0 {
        return false;
    }
    if let Ok(dict) = obj.cast_exact::<PyDict>() {
        return dict
            .iter()
            .all(|(key, value)| plain(&key, depth - 1) && plain(&value, depth - 1));
    }
    if let Ok(list) = obj.cast_exact::<PyList>() {
        return list.iter().all(|item| plain(&item, depth - 1));
    }
    if let Ok(tuple) = obj.cast_exact::<PyTuple>() {
        return tuple.iter().all(|item| plain(&item, depth - 1));
    }
    false
}

impl Codec {
    pub fn with(
        py: Python<'_>,
        serialize: Option<&Py<PyAny>>,
        deserialize: Option<&Py<PyAny>>,
    ) -> PyResult<Codec> {
        let pickle = py.import("pickle")?;
        let marshal = py.import("marshal")?;
        let own = match (serialize, deserialize) {
            (Some(s), Some(d)) => Some((s.clone_ref(py), d.clone_ref(py))),
            _ => None,
        };
        Ok(Codec {
            dumps: pickle.getattr("dumps")?.unbind(),
            protocol: pickle.getattr("HIGHEST_PROTOCOL")?.unbind(),
            loads: pickle.getattr("loads")?.unbind(),
            marshal_dumps: marshal.getattr("dumps")?.unbind(),
            marshal_loads: marshal.getattr("loads")?.unbind(),
            own,
        })
    }

    /// `pickle.dumps(obj, HIGHEST_PROTOCOL)`.
    pub fn dump<'py>(
        &self,
        py: Python<'py>,
        obj: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.dumps.bind(py).call1((obj, self.protocol.bind(py)))
    }

    /// Serialize `(key, value)` pairs for another worker; on failure, the
    /// index of the pair that could not be serialized.
    pub fn encode(
        &self,
        py: Python<'_>,
        pairs: &[(Py<PyAny>, Py<PyAny>)],
    ) -> Result<Vec<u8>, (usize, PyErr)> {
        let mut items = Vec::with_capacity(pairs.len());
        for (index, (key, value)) in pairs.iter().enumerate() {
            let value = match &self.own {
                Some((serialize, _)) => serialize
                    .bind(py)
                    .call1((value,))
                    .map_err(|err| (index, err))?
                    .unbind(),
                None => value.clone_ref(py),
            };
            let pair = PyTuple::new(py, [key.clone_ref(py), value]);
            items.push(pair.map_err(|err| (index, err))?);
        }
        let written = PyList::new(py, items).and_then(|list| {
            let (tag, data) = if plain(list.as_any(), PLAIN_DEPTH) {
                let dumps = self.marshal_dumps.bind(py);
                (MARSHALLED, dumps.call1((list, MARSHAL_VERSION))?)
            } else {
                (PICKLED, self.dump(py, list.as_any())?)
            };
            let data = data.cast::<PyBytes>()?.as_bytes();
            let mut bytes = Vec::with_capacity(data.len() + 1);
            bytes.push(tag);
            bytes.extend_from_slice(data);
            Ok(bytes)
        });
        written.map_err(|err| {
            // Find the record pickle refused, for the message.
            let culprit = pairs
                .iter()
                .position(|(key, value)| {
                    let pair = PyTuple::new(py, [key, value]);
                    pair.and_then(|pair| self.dump(py, pair.as_any())).is_err()
                })
                .unwrap_or(0);
            (culprit, err)
        })
    }

    /// Serialize a state for a snapshot (the app's `serialize`, else pickle).
    pub fn encode_value(&self, py: Python<'_>, state: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
        let bytes = match &self.own {
            Some((serialize, _)) => serialize.bind(py).call1((state,))?,
            None => self.dump(py, state)?,
        };
        Ok(bytes.cast::<PyBytes>()?.as_bytes().to_vec())
    }

    /// The inverse of [`Codec::encode_value`].
    pub fn decode_value<'py>(&self, py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let loads = match &self.own {
            Some((_, deserialize)) => deserialize.bind(py),
            None => self.loads.bind(py),
        };
        loads.call1((PyBytes::new(py, bytes),))
    }

    /// A key and its state, serialized to move to another worker.
    pub fn encode_state(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        state: &Bound<'_, PyAny>,
    ) -> PyResult<(Vec<u8>, Vec<u8>)> {
        let key = self.dump(py, key)?;
        let state = match &self.own {
            Some((serialize, _)) => serialize.bind(py).call1((state,))?,
            None => self.dump(py, state)?,
        };
        Ok((
            key.cast::<PyBytes>()?.as_bytes().to_vec(),
            state.cast::<PyBytes>()?.as_bytes().to_vec(),
        ))
    }

    /// The inverse of [`Codec::encode_state`].
    pub fn decode_state<'py>(
        &self,
        py: Python<'py>,
        key: &[u8],
        state: &[u8],
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let key = self.loads.bind(py).call1((PyBytes::new(py, key),))?;
        let loads = match &self.own {
            Some((_, deserialize)) => deserialize.bind(py),
            None => self.loads.bind(py),
        };
        let state = loads.call1((PyBytes::new(py, state),))?;
        Ok((key, state))
    }

    /// The `(key, value)` pairs of a batch from another worker.
    pub fn decode(&self, py: Python<'_>, data: &[u8]) -> PyResult<Vec<(Py<PyAny>, Py<PyAny>)>> {
        let loads = match data.first() {
            Some(&MARSHALLED) => self.marshal_loads.bind(py),
            Some(&PICKLED) => self.loads.bind(py),
            _ => {
                return Err(PyValueError::new_err(
                    "a batch of records without its format byte",
                ))
            }
        };
        let list = loads.call1((PyBytes::new(py, &data[1..]),))?;
        let mut pairs = Vec::new();
        for item in list.try_iter()? {
            let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
            let value = match &self.own {
                Some((_, deserialize)) => deserialize.bind(py).call1((value,))?,
                None => value,
            };
            pairs.push((key.unbind(), value.unbind()));
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;

    use super::*;

    type Pairs = Vec<(Py<PyAny>, Py<PyAny>)>;

    fn eval<'py>(py: Python<'py>, code: &str) -> Bound<'py, PyAny> {
        let code = CString::new(code).expect("no NUL in test code");
        py.eval(&code, None, None)
            .expect("test expression evaluates")
    }

    /// Encode `(key, value)` pairs and decode them again; the format byte too.
    fn round_trip<'py>(py: Python<'py>, codec: &Codec, values: &Bound<'py, PyList>) -> (u8, Pairs) {
        let pairs: Pairs = values
            .iter()
            .enumerate()
            .map(|(i, v)| (i.into_pyobject(py).unwrap().into_any().unbind(), v.unbind()))
            .collect();
        let bytes = codec.encode(py, &pairs).map_err(|(_, e)| e).unwrap();
        (bytes[0], codec.decode(py, &bytes).unwrap())
    }

    fn same_values_and_types(
        py: Python<'_>,
        sent: &Bound<'_, PyList>,
        got: &[(Py<PyAny>, Py<PyAny>)],
    ) {
        assert_eq!(sent.len(), got.len());
        for (i, (value, (key, back))) in sent.iter().zip(got).enumerate() {
            let back = back.bind(py);
            assert_eq!(key.bind(py).extract::<usize>().unwrap(), i);
            assert!(value.eq(back).unwrap(), "{value} came back as {back}");
            assert!(
                value.get_type().is(back.get_type()),
                "{value} of type {} came back as type {}",
                value.get_type(),
                back.get_type()
            );
        }
    }

    #[test]
    fn plain_data_round_trips_with_marshal_keeping_every_type() {
        Python::initialize();
        Python::attach(|py| {
            let codec = Codec::with(py, None, None).unwrap();
            let values = eval(
                py,
                "[{'a': 1, 'b': [1.5, None, True]}, [1, 'x', b'y'], ('t', (1, 2)), 'text', \
                 b'bytes', 12, 2**100, -3, 1.25, True, False, None, {}, [], ()]",
            );
            let values = values.cast::<PyList>().unwrap();
            let (format, got) = round_trip(py, &codec, values);
            assert_eq!(format, MARSHALLED);
            same_values_and_types(py, values, &got);
        });
    }

    #[test]
    fn anything_else_falls_back_to_pickle_and_keeps_its_type() {
        Python::initialize();
        Python::attach(|py| {
            let codec = Codec::with(py, None, None).unwrap();
            for other in [
                "bytearray(b'ab')",
                "{1, 2}",
                "frozenset({3})",
                "__import__('collections').OrderedDict(a=1)",
                "__import__('decimal').Decimal('1.5')",
                "[{'inner': bytearray(b'x')}]",
            ] {
                let values = eval(py, &format!("[{{'plain': 1}}, {other}]"));
                let values = values.cast::<PyList>().unwrap();
                let (format, got) = round_trip(py, &codec, values);
                assert_eq!(format, PICKLED, "{other} must go with pickle");
                same_values_and_types(py, values, &got);
            }
        });
    }

    #[test]
    fn nesting_deeper_than_the_limit_goes_with_pickle() {
        Python::initialize();
        Python::attach(|py| {
            let codec = Codec::with(py, None, None).unwrap();
            let shallow = eval(py, &format!("[{}1{}]", "[".repeat(20), "]".repeat(20)));
            let deep = eval(py, &format!("[{}1{}]", "[".repeat(30), "]".repeat(30)));
            let (format, _) = round_trip(py, &codec, shallow.cast::<PyList>().unwrap());
            assert_eq!(format, MARSHALLED);
            let deep = deep.cast::<PyList>().unwrap();
            let (format, got) = round_trip(py, &codec, deep);
            assert_eq!(format, PICKLED);
            same_values_and_types(py, deep, &got);
        });
    }

    #[test]
    fn a_value_nothing_can_write_names_its_index() {
        Python::initialize();
        Python::attach(|py| {
            let codec = Codec::with(py, None, None).unwrap();
            let values = eval(py, "[1, 2, lambda: 3, 4]");
            let pairs: Pairs = values
                .try_iter()
                .unwrap()
                .map(|v| (py.None(), v.unwrap().unbind()))
                .collect();
            let (index, _) = codec.encode(py, &pairs).unwrap_err();
            assert_eq!(index, 2);
        });
    }

    #[test]
    fn a_batch_without_its_format_byte_is_refused() {
        Python::initialize();
        Python::attach(|py| {
            let codec = Codec::with(py, None, None).unwrap();
            assert!(codec.decode(py, b"").is_err());
            assert!(codec.decode(py, b"Xabc").is_err());
        });
    }

    #[test]
    fn the_applications_own_serialize_writes_values_and_states() {
        Python::initialize();
        Python::attach(|py| {
            let serialize = eval(py, "lambda v: ('<' + v + '>').encode()").unbind();
            let deserialize = eval(py, "lambda b: b.decode()[1:-1]").unbind();
            let codec = Codec::with(py, Some(&serialize), Some(&deserialize)).unwrap();
            let values = eval(py, "['a', 'bc']");
            let (_, got) = round_trip(py, &codec, values.cast::<PyList>().unwrap());
            let back: Vec<String> = got.iter().map(|(_, v)| v.extract(py).unwrap()).collect();
            assert_eq!(back, ["a", "bc"]);

            let state = eval(py, "'st'");
            assert_eq!(codec.encode_value(py, &state).unwrap(), b"<st>");
            let value = codec.decode_value(py, b"<st>").unwrap();
            assert_eq!(value.extract::<String>().unwrap(), "st");

            let key = eval(py, "('k', 1)");
            let (key_bytes, state_bytes) = codec.encode_state(py, &key, &state).unwrap();
            assert_eq!(state_bytes, b"<st>");
            let (key_back, state_back) = codec.decode_state(py, &key_bytes, &state_bytes).unwrap();
            assert!(key_back.eq(&key).unwrap());
            assert_eq!(state_back.extract::<String>().unwrap(), "st");
        });
    }

    #[test]
    fn states_go_with_pickle_without_the_applications_serialize() {
        Python::initialize();
        Python::attach(|py| {
            let codec = Codec::with(py, None, None).unwrap();
            let state = eval(py, "{'count': 3, 'seen': {1, 2}}");
            let bytes = codec.encode_value(py, &state).unwrap();
            assert!(codec.decode_value(py, &bytes).unwrap().eq(&state).unwrap());
            let key = eval(py, "b'key'");
            let (k, s) = codec.encode_state(py, &key, &state).unwrap();
            let (key_back, state_back) = codec.decode_state(py, &k, &s).unwrap();
            assert!(key_back.eq(&key).unwrap());
            assert!(state_back.eq(&state).unwrap());
        });
    }
}
