//! Several sinks fed by one pipeline (0.5/0.6 `to_sinks`): one sink thread
//! whose writer hands each record to the sink its [`Output::sink`] names.

use super::{BatchWriter, Output};

/// The writers of a pipeline's sinks, in `to_sinks` order.
pub struct ManyWriter {
    writers: Vec<Box<dyn BatchWriter>>,
}

impl ManyWriter {
    /// Write to `writers`; a record goes to `writers[record.sink]`.
    pub fn new(writers: Vec<Box<dyn BatchWriter>>) -> ManyWriter {
        ManyWriter { writers }
    }

    fn each(
        &mut self,
        mut f: impl FnMut(&mut Box<dyn BatchWriter>) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut first_error = None;
        for writer in &mut self.writers {
            if let Err(e) = f(writer) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl BatchWriter for ManyWriter {
    fn write_batch(&mut self, batch: &[Output]) -> std::io::Result<u64> {
        let mut parts: Vec<Vec<Output>> = vec![Vec::new(); self.writers.len()];
        for record in batch {
            if let Some(part) = parts.get_mut(usize::from(record.sink)) {
                part.push(record.clone());
            }
        }
        let mut parts = parts.into_iter();
        let mut delivered = 0;
        self.each(|writer| match parts.next() {
            Some(part) if !part.is_empty() => {
                delivered += writer.write_batch(&part)?;
                Ok(())
            }
            _ => Ok(()),
        })?;
        Ok(delivered)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.each(|w| w.flush())
    }

    fn idle(&mut self) {
        self.writers.iter_mut().for_each(|w| w.idle());
    }

    fn label(&self) -> String {
        let labels: Vec<String> = self.writers.iter().map(|w| w.label()).collect();
        labels.join(" + ")
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.each(|w| w.finish())
    }

    fn sync(&mut self, snapshot: u64) -> std::io::Result<()> {
        self.each(|w| w.sync(snapshot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>, &'static str);

    impl BatchWriter for Recorder {
        fn write_batch(&mut self, batch: &[Output]) -> std::io::Result<u64> {
            let mut seen = self
                .0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?;
            seen.extend(batch.iter().map(|r| r.value.clone()));
            Ok(batch.len() as u64)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
        fn label(&self) -> String {
            self.1.to_owned()
        }
    }

    fn output(value: &[u8], sink: u16) -> Output {
        Output {
            value: value.to_vec(),
            sink,
            ..Output::default()
        }
    }

    #[test]
    fn each_record_goes_to_the_sink_it_names() {
        let (a, b) = (Arc::default(), Arc::default());
        let mut many = ManyWriter::new(vec![
            Box::new(Recorder(Arc::clone(&a), "a")),
            Box::new(Recorder(Arc::clone(&b), "b")),
        ]);
        let batch = [
            output(b"1", 0),
            output(b"2", 1),
            output(b"3", 0),
            output(b"x", 7),
        ];
        // Delivered: what the sinks said they delivered (no sink 7).
        assert_eq!(many.write_batch(&batch).expect("write"), 3);
        assert_eq!(*a.lock().expect("lock"), vec![b"1".to_vec(), b"3".to_vec()]);
        assert_eq!(*b.lock().expect("lock"), vec![b"2".to_vec()]);
        assert_eq!(many.label(), "a + b");
    }
}
