//! A connection's queue of live events: one producer (the hub's dispatch task), one consumer (the socket task),
//! bounded by count and by bytes, and empty-handed while idle. The queues of a node can also share a [`Budget`]:
//! bytes held by all of them together, so many slow sockets cannot add up to more memory than the node has.
//!
//! Why not `tokio::sync::mpsc`: its channel allocates its first block of 32 slots when it is created, 3.6 KB per
//! connection for `Live`, and an edge holds mostly idle connections. This queue allocates nothing until the first
//! frame arrives, and gives back a grown buffer once it drains, so an idle connection costs a few dozen bytes
//! here, and a burst's memory does not outlive the burst.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Capacity kept when the queue drains; above it the buffer is given back (a burst's high-water mark).
const KEEP_CAPACITY: usize = 16;

/// An item that knows its size in bytes, for the byte bound.
pub trait ByteLen {
    /// Bytes this item holds (its frame).
    fn byte_len(&self) -> usize;
}

/// Bytes queued by every queue that shares it, and the most they may hold together.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes queued now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `len` bytes unless that would pass the limit.
    fn take(&self, len: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(len).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, len: usize) {
        self.used.fetch_sub(len, Ordering::Relaxed);
    }
}

/// Why [`Sender::try_send`] refused an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<T> {
    /// The queue holds `capacity` items, or adding this one would pass the byte bound.
    Full(T),
    /// Adding this one would pass the [`Budget`] the queue shares with others.
    OverBudget(T),
    /// The receiver is gone.
    Closed(T),
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    bytes: usize,
    sender_gone: bool,
    receiver_gone: bool,
}

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the receiver; a notification sent while it is not waiting is kept (one permit).
    ready: Notify,
    capacity: usize,
    max_bytes: usize,
    budget: Option<Arc<Budget>>,
}

impl<T> Shared<T> {
    /// Empties the queue, giving its bytes back to the budget.
    fn clear(&self, state: &mut State<T>) {
        state.items = VecDeque::new();
        if let Some(budget) = &self.budget {
            budget.give_back(state.bytes);
        }
        state.bytes = 0;
    }
}

/// The producing end.
#[derive(Debug)]
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The consuming end.
#[derive(Debug)]
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A queue holding at most `capacity` items and `max_bytes` bytes; a single item larger than `max_bytes` still
/// fits an empty queue, so one big frame is delivered rather than taken for a slow consumer.
pub fn bounded<T: ByteLen>(capacity: usize, max_bytes: usize) -> (Sender<T>, Receiver<T>) {
    with_budget(capacity, max_bytes, None)
}

/// A [`bounded`] queue whose bytes also count against `budget`, shared with other queues.
pub fn bounded_within<T: ByteLen>(
    capacity: usize,
    max_bytes: usize,
    budget: Arc<Budget>,
) -> (Sender<T>, Receiver<T>) {
    with_budget(capacity, max_bytes, Some(budget))
}

fn with_budget<T: ByteLen>(
    capacity: usize,
    max_bytes: usize,
    budget: Option<Arc<Budget>>,
) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            bytes: 0,
            sender_gone: false,
            receiver_gone: false,
        }),
        ready: Notify::new(),
        capacity: capacity.max(1),
        max_bytes,
        budget,
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

impl<T: ByteLen> Sender<T> {
    /// Queues `item` without waiting, or says why not.
    pub fn try_send(&self, item: T) -> Result<(), Refused<T>> {
        let mut state = self.shared.state.lock().expect("queue lock");
        if state.receiver_gone {
            return Err(Refused::Closed(item));
        }
        let len = item.byte_len();
        let full = state.items.len() >= self.shared.capacity
            || (!state.items.is_empty() && state.bytes + len > self.shared.max_bytes);
        if full {
            return Err(Refused::Full(item));
        }
        if let Some(budget) = &self.shared.budget
            && !budget.take(len)
        {
            return Err(Refused::OverBudget(item));
        }
        state.bytes += len;
        state.items.push_back(item);
        drop(state);
        self.shared.ready.notify_one();
        Ok(())
    }
}

impl<T> Sender<T> {
    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.state.lock().expect("queue lock").bytes
    }

    /// Drops everything queued now (the connection is being closed; its client resumes from the buffer), giving
    /// the bytes back at once rather than when the socket's task ends.
    pub fn clear(&self) {
        let mut state = self.shared.state.lock().expect("queue lock");
        self.shared.clear(&mut state);
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.state.lock().expect("queue lock").sender_gone = true;
        self.shared.ready.notify_one();
    }
}

impl<T: ByteLen> Receiver<T> {
    /// The next item; `None` once the queue is empty and the sender is gone. Cancel-safe: an item is only taken
    /// by a call that returns it.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut state = self.shared.state.lock().expect("queue lock");
                if let Some(item) = Self::pop(&self.shared, &mut state) {
                    return Some(item);
                }
                if state.sender_gone {
                    return None;
                }
            }
            // A send between the check above and this wait left a permit, so this returns at once.
            self.shared.ready.notified().await;
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        Self::pop(
            &self.shared,
            &mut self.shared.state.lock().expect("queue lock"),
        )
    }

    fn pop(shared: &Shared<T>, state: &mut State<T>) -> Option<T> {
        let item = state.items.pop_front()?;
        let len = item.byte_len();
        state.bytes -= len;
        if let Some(budget) = &shared.budget {
            budget.give_back(len);
        }
        if state.items.is_empty() && state.items.capacity() > KEEP_CAPACITY {
            state.items = VecDeque::new();
        }
        Some(item)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().expect("queue lock");
        state.receiver_gone = true;
        // What was queued goes now, not when the sender goes.
        self.shared.clear(&mut state);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    impl ByteLen for Vec<u8> {
        fn byte_len(&self) -> usize {
            self.len()
        }
    }

    #[tokio::test]
    async fn delivers_in_order_and_refuses_past_the_count_bound() {
        let (tx, mut rx) = bounded::<Vec<u8>>(3, 1 << 20);
        for i in 0..3u8 {
            tx.try_send(vec![i]).unwrap();
        }
        assert_eq!(tx.try_send(vec![9]), Err(Refused::Full(vec![9])));
        assert_eq!(rx.recv().await, Some(vec![0]));
        tx.try_send(vec![3]).unwrap();
        assert_eq!(rx.try_recv(), Some(vec![1]));
        assert_eq!(rx.recv().await, Some(vec![2]));
        assert_eq!(rx.recv().await, Some(vec![3]));
        assert_eq!(rx.try_recv(), None);
    }

    #[test]
    fn the_byte_bound_counts_what_is_queued_and_an_oversized_item_fits_an_empty_queue() {
        let (tx, mut rx) = bounded::<Vec<u8>>(100, 10);
        tx.try_send(vec![0; 25]).expect("alone it fits");
        assert_eq!(tx.try_send(vec![1]), Err(Refused::Full(vec![1])));
        assert_eq!(rx.try_recv().map(|v| v.len()), Some(25));
        tx.try_send(vec![0; 6]).unwrap();
        tx.try_send(vec![0; 4]).unwrap();
        assert_eq!(
            tx.try_send(vec![2]),
            Err(Refused::Full(vec![2])),
            "10 of 10"
        );
        rx.try_recv();
        tx.try_send(vec![0; 6])
            .expect("the bytes taken out are free again");
    }

    #[tokio::test]
    async fn recv_wakes_on_send_and_ends_when_the_sender_goes() {
        let (tx, mut rx) = bounded::<Vec<u8>>(8, 1 << 20);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(v) = rx.recv().await {
                got.push(v[0]);
            }
            got
        });
        for i in 0..5u8 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx.try_send(vec![i]).unwrap();
        }
        tx.try_send(vec![5]).unwrap();
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the reader ends")
            .unwrap();
        assert_eq!(
            got,
            [0, 1, 2, 3, 4, 5],
            "what was queued before the sender left arrives"
        );
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_nothing() {
        let (tx, mut rx) = bounded::<Vec<u8>>(8, 1 << 20);
        let timed_out = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await;
        assert!(timed_out.is_err());
        tx.try_send(vec![7]).unwrap();
        assert_eq!(rx.recv().await, Some(vec![7]));
    }

    #[test]
    fn sending_to_a_dropped_receiver_is_closed_and_a_drained_queue_gives_back_its_memory() {
        let (tx, mut rx) = bounded::<Vec<u8>>(1000, 1 << 20);
        for i in 0..200u8 {
            tx.try_send(vec![i]).unwrap();
        }
        let mut drained = Vec::new();
        while let Some(v) = rx.try_recv() {
            drained.push(v[0]);
            // A grown buffer is kept while anything is left in it; the queue ends with the default capacity.
            if drained.len() == 100 {
                assert!(rx.shared.state.lock().unwrap().items.capacity() >= 100);
            }
        }
        assert_eq!(
            drained,
            (0..200u8).collect::<Vec<_>>(),
            "nothing dropped on the way"
        );
        assert_eq!(rx.shared.state.lock().unwrap().items.capacity(), 0);
        // At the kept capacity exactly, the buffer stays.
        for _ in 0..KEEP_CAPACITY {
            tx.try_send(vec![0]).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert!(rx.shared.state.lock().unwrap().items.capacity() > 0);
        drop(rx);
        assert_eq!(tx.try_send(vec![1]), Err(Refused::Closed(vec![1])));
    }

    #[test]
    fn queues_sharing_a_budget_are_refused_past_it_together_and_give_bytes_back_every_way() {
        let budget = Budget::new(10);
        let (a, mut a_rx) = bounded_within::<Vec<u8>>(100, 100, budget.clone());
        let (b, b_rx) = bounded_within::<Vec<u8>>(100, 100, budget.clone());
        a.try_send(vec![0; 6]).unwrap();
        b.try_send(vec![0; 4]).unwrap();
        assert_eq!(budget.used(), 10);
        assert_eq!(b.try_send(vec![1]), Err(Refused::OverBudget(vec![1])));
        assert_eq!(
            (a.queued_bytes(), b.queued_bytes()),
            (6, 4),
            "a refusal takes nothing"
        );
        // Taken out by the socket.
        a_rx.try_recv();
        assert_eq!(budget.used(), 4);
        a.try_send(vec![0; 3]).unwrap();
        a.try_send(vec![0; 3]).unwrap();
        // Cleared by the hub closing the connection.
        a.clear();
        assert_eq!((budget.used(), a.queued_bytes()), (4, 0));
        assert_eq!(a_rx.try_recv(), None);
        // Dropped with the socket's task.
        drop(b_rx);
        assert_eq!(budget.used(), 0);
        // The per-queue bound still applies within the budget.
        let (c, _c_rx) = bounded_within::<Vec<u8>>(1, 100, budget.clone());
        c.try_send(vec![0]).unwrap();
        assert_eq!(c.try_send(vec![0]), Err(Refused::Full(vec![0])));
        assert_eq!(budget.used(), 1);
    }
}
