//! Unit tests of the routing of records between workers ([`super::route`]):
//! a chain with one keyed state step on worker 0 of 3, fed one batch.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::Arc;

use pyo3::prelude::*;

use super::*;
use crate::control::RunControl;
use crate::plan::OnError;
use crate::routing::{canonical_key, RoutingTable};
use crate::sources::{Pos, PosStyle, SourceInfo};
use crate::state::StateStore;
use crate::steps::{Kind, Step};

const WORKERS: usize = 3;

fn eval<'py>(py: Python<'py>, code: &str) -> Py<PyAny> {
    let code = CString::new(code).expect("no NUL in test code");
    py.eval(&code, None, None)
        .expect("test expression evaluates")
        .unbind()
}

/// A chain `decode -> keyed state step (key: the record's first letter,
/// with a timer) -> encode` routed over `WORKERS` workers.
fn keyed_chain(py: Python<'_>, routing: &Arc<RoutingTable>) -> Chain {
    let store = StateStore::new(py, "s".into(), eval(py, "list"), Arc::default());
    Chain {
        pipeline: "p".into(),
        source: SourceInfo {
            label: "file in.txt".into(),
            style: PosStyle::Lines,
        },
        decode: eval(py, "lambda b: b.decode()"),
        steps: vec![Step {
            name: "count".into(),
            func: eval(py, "lambda x, s: (x, False)"),
            kind: Kind::State {
                store: Arc::new(store),
                partition: Some(eval(py, "lambda x: x[0]")),
                u64_keys: false,
                multi: false,
                routing: Some(routing.clone()),
                tick: Some(eval(py, "lambda states, end: None")),
                share: None,
                origin: false,
            },
        }],
        encode: Some(eval(py, "lambda x: x")),
        on_error: OnError::Stop,
        bad: Arc::default(),
        metrics: Arc::default(),
        batch_counts: Default::default(),
        cluster: true,
        serialize: None,
        deserialize: None,
        control: RunControl::new(),
        sequence: None,
    }
}

fn line(index: u64, text: &str) -> Frame {
    Frame {
        payload: text.as_bytes().to_vec(),
        pos: Pos {
            stream: 0,
            index,
            offset: index * 10,
        },
        read_ns: 0,
    }
}

/// What each worker got from one batch: `(key, value, record number)`, in
/// the order the part holds them.
type Received = BTreeMap<usize, Vec<(String, String, u64)>>;

/// Run `frames` through the chain on worker 0 and route what it emitted.
fn route_batch(py: Python<'_>, chain: &Chain, mut frames: Vec<Frame>) -> Received {
    let codec = Codec::with(py, None, None).expect("the default codec");
    let mut emitted = Emitted::default();
    chain
        .process(py, 0, &mut frames, &mut emitted)
        .expect("the chain runs");
    let fanout = Fanout {
        me: 0,
        peers: WORKERS,
        downstream: true,
    };
    let batch = BatchId { reader: 0, seq: 7 };
    let (routed, failure) = route(py, chain, &codec, fanout, batch, emitted);
    assert!(failure.is_none());
    assert!(
        routed.outputs.is_empty(),
        "a keyed step's records wait for their owner"
    );
    let text = |object: &Py<PyAny>| object.bind(py).extract::<String>().unwrap_or_default();
    let mut received = Received::new();
    for part in &routed.local {
        assert_eq!(part.batch, batch);
        let records = part
            .records
            .iter()
            .map(|r| (text(&r.key.0), text(&r.value.0), r.order.index));
        received.entry(0).or_default().extend(records);
    }
    for part in &routed.remote {
        assert_eq!(part.batch, batch);
        let pairs = if part.data.is_empty() {
            Vec::new()
        } else {
            codec.decode(py, &part.data).expect("a part decodes")
        };
        assert_eq!(pairs.len(), part.records.len());
        let records = part
            .records
            .iter()
            .zip(&pairs)
            .map(|((order, _step), (key, value))| (text(key), text(value), order.index));
        let owner = usize::try_from(part.owner).unwrap_or(usize::MAX);
        received.entry(owner).or_default().extend(records);
    }
    received
}

#[test]
fn keys_land_on_their_owner_in_source_order_and_a_tick_reaches_every_worker() {
    Python::initialize();
    Python::attach(|py| {
        let routing = Arc::new(RoutingTable::new(WORKERS, &[]));
        let chain = keyed_chain(py, &routing);
        let words = [
            "apple", "bean", "avocado", "corn", "bread", "almond", "date", "cherry",
        ];
        let mut frames: Vec<Frame> = (0u64..).zip(words).map(|(i, w)| line(i, w)).collect();
        frames.push(Frame::marker(false));
        let received = route_batch(py, &chain, frames);

        // Every worker gets a part (the state step must know the batch is whole).
        assert_eq!(received.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
        let owner_of = |key: &str| {
            let key = pyo3::types::PyString::new(py, key);
            routing.owner(&canonical_key(key.as_any()).expect("a str key"))
        };
        let mut landed = 0;
        for (worker, records) in &received {
            let (ticks, records): (Vec<_>, Vec<_>) = records
                .iter()
                .partition(|(key, _, _)| key.starts_with('\0'));
            assert_eq!(ticks.len(), 1, "worker {worker} gets the tick once");
            for (key, value, _) in &records {
                assert_eq!(owner_of(key), *worker, "{value} lands on its key's owner");
                assert!(value.starts_with(key.as_str()));
            }
            // Per key, the records keep the order they were read in.
            for key in ["a", "b", "c", "d"] {
                let of_key: Vec<u64> = records.iter().filter(|r| r.0 == key).map(|r| r.2).collect();
                assert!(of_key.windows(2).all(|w| w[0] < w[1]), "{key}: {of_key:?}");
            }
            landed += records.len();
        }
        assert_eq!(landed, words.len(), "every record lands once");
    });
}

#[test]
fn keys_the_application_declared_land_where_the_table_puts_them() {
    Python::initialize();
    Python::attach(|py| {
        let declared: Vec<Vec<u8>> = ["c", "b", "a"]
            .iter()
            .map(|k| canonical_key(pyo3::types::PyString::new(py, k).as_any()).expect("a str key"))
            .collect();
        // Declared keys go round the workers in declaration order.
        let routing = Arc::new(RoutingTable::new(WORKERS, &declared));
        let chain = keyed_chain(py, &routing);
        let frames = vec![line(0, "a1"), line(1, "b1"), line(2, "c1"), line(3, "a2")];
        let received = route_batch(py, &chain, frames);
        let keys = |worker: usize| -> Vec<(String, u64)> {
            received[&worker]
                .iter()
                .map(|(key, _, index)| (key.clone(), *index))
                .collect()
        };
        assert_eq!(keys(0), [("c".to_owned(), 2)]);
        assert_eq!(keys(1), [("b".to_owned(), 1)]);
        assert_eq!(keys(2), [("a".to_owned(), 0), ("a".to_owned(), 3)]);
    });
}
