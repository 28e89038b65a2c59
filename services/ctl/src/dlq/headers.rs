//! Reading a record's headers without trusting rdkafka with a name that is not UTF-8.
//!
//! Kafka's protocol wants header names in UTF-8, but a client that writes the protocol itself can send any bytes,
//! the broker stores them as they are, and librdkafka hands them on. rdkafka (0.39) then panics in
//! `Headers::try_get` (`CStr::to_str().unwrap()`), and it offers no other way to the name's bytes; the workspace
//! forbids the `unsafe` code that would read them from librdkafka directly. So each header is read on its own
//! under `catch_unwind`: a header whose name is not UTF-8 becomes [`Header::Unreadable`] (its name and value stay
//! unknown), every other header of the record is read as usual, and `cesctl` goes on. The panic message is kept
//! off stderr while a header is read, so such a record prints no Rust backtrace noise; any other panic is reported
//! as before.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use rdkafka::message::Headers;

use super::letter::Header;

thread_local! {
    /// Set while this thread reads one header, so the panic hook stays silent for rdkafka's panic.
    static READING_HEADER: Cell<bool> = const { Cell::new(false) };
}

/// Installs, once per process, a panic hook that stays silent while [`READING_HEADER`] is set and otherwise
/// reports as the previous hook did.
fn quiet_while_reading() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !READING_HEADER.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Every header of `headers` in order; one whose name rdkafka cannot hand over is [`Header::Unreadable`].
pub(crate) fn read<H: Headers + ?Sized>(headers: Option<&H>) -> Vec<Header> {
    let Some(hs) = headers else {
        return Vec::new();
    };
    quiet_while_reading();
    (0..hs.count()).map(|i| one(hs, i)).collect()
}

fn one<H: Headers + ?Sized>(hs: &H, index: usize) -> Header {
    READING_HEADER.with(|r| r.set(true));
    let read = catch_unwind(AssertUnwindSafe(|| {
        hs.try_get(index)
            .map(|h| Header::Named(h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
    }));
    READING_HEADER.with(|r| r.set(false));
    // `None` cannot happen below `count()`; if it did, the header is as unknown as an unreadable one.
    read.ok().flatten().unwrap_or(Header::Unreadable)
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Header as KafkaHeader;

    use super::*;

    /// Headers that behave like rdkafka's for a record whose second header name is not UTF-8: reading it panics.
    struct Hostile;

    impl Headers for Hostile {
        fn count(&self) -> usize {
            3
        }

        fn try_get(&self, idx: usize) -> Option<KafkaHeader<'_, &[u8]>> {
            match idx {
                0 => Some(KafkaHeader {
                    key: "trace-id",
                    value: Some(b"t-1"),
                }),
                1 => panic!("called `Result::unwrap()` on an `Err` value: Utf8Error"),
                2 => Some(KafkaHeader {
                    key: "empty",
                    value: None,
                }),
                _ => None,
            }
        }
    }

    #[test]
    fn a_header_rdkafka_cannot_read_is_unreadable_and_the_others_are_read() {
        assert_eq!(
            read(Some(&Hostile)),
            vec![
                Header::named("trace-id", b"t-1"),
                Header::Unreadable,
                Header::Named("empty".into(), None),
            ]
        );
        assert!(!READING_HEADER.with(Cell::get));
        assert_eq!(read::<Hostile>(None), Vec::new());
    }

    #[test]
    fn other_panics_still_unwind() {
        let caught = catch_unwind(|| {
            let _ = read(Some(&Hostile));
            panic!("a panic of cesctl's own");
        });
        assert!(caught.is_err());
        assert!(!READING_HEADER.with(Cell::get));
    }
}
