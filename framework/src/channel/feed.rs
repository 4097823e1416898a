//! Feeds: readers of named events on one worker instance — a Server-Sent Events stream, a
//! resuming WebSocket client — sharing one subscription per name on the instance's channel
//! client, each resumed from the positions it last saw (`channel::history`).
//!
//! A reader that follows names from positions is first *catching up*: it is registered for the
//! live events (held for it) before each name's history is read, so nothing published in
//! between is missed; then it gets what the history holds after its positions, in order, then
//! the held live events that came after those (by offset: none twice), and is live from then
//! on. Where a name's history no longer covers its position (trimmed, expired, another epoch)
//! it is told so ([`FeedEvent::Ready`]'s `lost`) and goes on from where the name stands now.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use bytes::Bytes;

use super::history::{Page, Position};
use super::php_serde::Key;
use super::{ChannelError, Client};

/// Most live events held for a reader while its history is read; past it the reader is told
/// everything it follows is lost, and goes on live.
pub const MAX_HELD: usize = 10_000;

/// What a reader is told, in order.
#[derive(Debug)]
pub enum FeedEvent<'a> {
    /// Caught up: what follows is live (and, before, what the history held). `lost` is `None`
    /// when no positions were given, else the indexes of the names whose history did not
    /// cover them (empty: everything missed was recovered). `positions` stand before the
    /// events that follow.
    Ready {
        /// Names (by index) not recovered, when positions were given.
        lost: Option<Vec<usize>>,
        /// Each name's position now.
        positions: &'a [Position],
    },
    /// An event of name `index`; `positions` include it.
    Message {
        /// Which name (its index in what the reader follows).
        index: usize,
        /// The event's PHP-serialized data.
        data: &'a Bytes,
        /// Each name's position after it.
        positions: &'a [Position],
    },
    /// Name `index`'s history started again while the reader followed it (the backend lost
    /// it: a channel server restarted): events may have been missed.
    Lost {
        /// Which name.
        index: usize,
        /// Each name's position now.
        positions: &'a [Position],
    },
}

type Sink = Box<dyn Fn(FeedEvent<'_>)>;
/// See [`Feeds::after_delivery`].
type AfterFn = Rc<dyn Fn(&Key, &Bytes, usize)>;
/// A live event held for a reader: its name's index, position and data.
type Held = (usize, Option<Position>, Bytes);
/// Each name's readers, by registration id.
type ReadersOf = HashMap<Key, Vec<(u64, Weak<Reader>)>>;
/// The history pages of a reader's names, as they come in.
type Pages = Rc<RefCell<Vec<Option<Result<Page, ChannelError>>>>>;

/// One reader: its names, where it stands, what waits for it while it catches up.
struct Reader {
    names: Vec<Key>,
    positions: RefCell<Vec<Position>>,
    /// `Some` while catching up: live events held, or `None` once too many came.
    held: RefCell<Option<Vec<Held>>>,
    overflowed: Cell<bool>,
    sink: Sink,
}

impl Reader {
    /// A live event of name `index`: held while catching up, else given (unless already
    /// given from the history).
    fn event(&self, index: usize, pos: Option<Position>, data: &Bytes) {
        {
            let mut held = self.held.borrow_mut();
            if let Some(h) = held.as_mut() {
                if h.len() >= MAX_HELD {
                    h.clear();
                    self.overflowed.set(true);
                } else if !self.overflowed.get() {
                    h.push((index, pos, data.clone()));
                }
                return;
            }
        }
        self.give(index, pos, data);
    }

    fn give(&self, index: usize, pos: Option<Position>, data: &Bytes) {
        let mut lost = false;
        if let Some(p) = pos {
            let mut ps = self.positions.borrow_mut();
            let cur = ps[index];
            if p.epoch == cur.epoch && p.offset <= cur.offset {
                return; // given already (from the history)
            }
            lost = cur != Position::NONE && p.epoch != cur.epoch;
            ps[index] = p;
        }
        let ps = self.positions.borrow().clone();
        if lost {
            (self.sink)(FeedEvent::Lost {
                index,
                positions: &ps,
            });
        }
        (self.sink)(FeedEvent::Message {
            index,
            data,
            positions: &ps,
        });
    }

    /// The histories are in: give what they hold after each position, then what was held.
    fn caught_up(&self, pages: Vec<Result<Page, ChannelError>>, since: Option<&[Position]>) {
        let mut lost = Vec::new();
        let mut items = Vec::new();
        {
            let mut ps = self.positions.borrow_mut();
            for (i, page) in pages.into_iter().enumerate() {
                let asked = since.map(|s| s[i]);
                match page {
                    Ok(page) if asked.is_some() && page.recovered => {
                        ps[i] = asked.unwrap_or(Position::NONE);
                        items.extend(page.items.into_iter().map(|(o, d)| (i, o, page.epoch, d)));
                    }
                    Ok(page) => {
                        ps[i] = page.last().unwrap_or(Position::NONE);
                        if asked.is_some() {
                            lost.push(i);
                        }
                    }
                    Err(e) => {
                        log::info!("feed: history of {} not read: {e}", self.names[i]);
                        if asked.is_some() {
                            lost.push(i);
                        }
                    }
                }
            }
        }
        let held = self.held.borrow_mut().take().unwrap_or_default();
        if self.overflowed.get() {
            lost = (0..self.names.len()).collect();
            items.clear();
        }
        let ps = self.positions.borrow().clone();
        (self.sink)(FeedEvent::Ready {
            lost: since.map(|_| lost),
            positions: &ps,
        });
        for (i, offset, epoch, data) in items {
            self.give(i, Some(Position { epoch, offset }), &data);
        }
        for (i, pos, data) in held {
            self.give(i, pos, &data);
        }
    }
}

struct FeedsInner {
    client: Client,
    /// Each followed name's readers.
    readers: RefCell<ReadersOf>,
    /// Names that stay subscribed without readers (see [`Feeds::keep_subscribed`]).
    pinned: RefCell<Vec<Key>>,
    /// Names whose events the owner of the client hands in (see [`Feeds::fed_by_owner`]).
    external: RefCell<Vec<Key>>,
    /// Told of each event these feeds took themselves, with the readers it reached.
    after: RefCell<Option<AfterFn>>,
    next: Cell<u64>,
}

/// One worker instance's feeds, on its channel client (keep it with the instance's data).
#[derive(Clone)]
pub struct Feeds(Rc<FeedsInner>);

/// A reader's registration: dropping it stops the reader (and the subscription of a name no
/// other reader follows).
pub struct Follow {
    id: u64,
    reader: Rc<Reader>,
    feeds: Weak<FeedsInner>,
}

impl Feeds {
    /// Feeds on `client` (subscriptions are made as readers come).
    pub fn new(client: &Client) -> Feeds {
        Feeds(Rc::new(FeedsInner {
            client: client.clone(),
            readers: RefCell::new(HashMap::new()),
            pinned: RefCell::new(Vec::new()),
            external: RefCell::new(Vec::new()),
            after: RefCell::new(None),
            next: Cell::new(1),
        }))
    }

    /// `name` is subscribed by the client's owner, who hands its events in with
    /// [`Feeds::deliver`] (a client takes one callback per name: a WebSocket node's
    /// `Broadcast` callback serves its plain connections and these readers).
    pub fn fed_by_owner(&self, name: impl Into<Key>) {
        self.0.external.borrow_mut().push(name.into());
    }

    /// An event of a name [`Feeds::fed_by_owner`], for its readers: how many it reached.
    pub fn deliver(&self, name: &Key, pos: Option<Position>, data: &Bytes) -> usize {
        if self.0.readers.borrow().is_empty() {
            return 0;
        }
        self.0.dispatch(name, pos, data)
    }

    /// Call `f` after each event of a name these feeds subscribed themselves, with the readers
    /// it reached (a push app reports what a push reached from there).
    pub fn after_delivery(&self, f: impl Fn(&Key, &Bytes, usize) + 'static) {
        *self.0.after.borrow_mut() = Some(Rc::new(f));
    }

    /// Once followed, `name` stays subscribed when its last reader goes: for a name whose
    /// subscriber count others watch (the push app's `Broadcast`, whose publisher reports a
    /// broadcast that reached fewer instances than lately).
    pub fn keep_subscribed(&self, name: impl Into<Key>) {
        self.0.pinned.borrow_mut().push(name.into());
    }

    /// The channel client under these feeds.
    pub fn client(&self) -> &Client {
        &self.0.client
    }

    /// Follow `names` — from `since` (a position per name) when resuming — telling `sink`
    /// what happens ([`FeedEvent`]). `Disconnected` at once when the channel is not
    /// connected.
    pub fn follow(
        &self,
        names: Vec<Key>,
        since: Option<Vec<Position>>,
        sink: impl Fn(FeedEvent<'_>) + 'static,
    ) -> Result<Follow, ChannelError> {
        if !self.0.client.is_connected() {
            return Err(ChannelError::Disconnected);
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != names.len() || names.is_empty() {
            return Err(ChannelError::Refused(
                "follow one name or more, each once".into(),
            ));
        }
        if since.as_ref().is_some_and(|s| s.len() != names.len()) {
            return Err(ChannelError::Refused(
                "one position per name to resume".into(),
            ));
        }
        let id = self.0.next.get();
        self.0.next.set(id + 1);
        let reader = Rc::new(Reader {
            positions: RefCell::new(vec![Position::NONE; names.len()]),
            names: names.clone(),
            held: RefCell::new(Some(Vec::new())),
            overflowed: Cell::new(false),
            sink: Box::new(sink),
        });
        for name in &names {
            let first = {
                let mut readers = self.0.readers.borrow_mut();
                let list = readers.entry(name.clone()).or_default();
                list.push((id, Rc::downgrade(&reader)));
                list.len() == 1
            };
            if first && !self.0.external.borrow().contains(name) {
                let weak = Rc::downgrade(&self.0);
                let key = name.clone();
                self.0.client.on_kept(name.clone(), move |pos, data| {
                    if let Some(f) = weak.upgrade() {
                        let n = f.dispatch(&key, pos, data);
                        let after = f.after.borrow().clone();
                        if let Some(after) = after {
                            after(&key, data, n);
                        }
                    }
                });
            }
        }
        // Registered (and subscribed, in order on the client's connection) before the reads.
        let pages: Pages = Rc::new(RefCell::new((0..names.len()).map(|_| None).collect()));
        let since = Rc::new(since);
        for (i, name) in names.iter().enumerate() {
            let (pages, weak, since) = (pages.clone(), Rc::downgrade(&reader), since.clone());
            let from = since.as_ref().as_ref().map(|s| s[i]);
            self.0.client.history(name.clone(), from, move |page| {
                let all = {
                    let mut p = pages.borrow_mut();
                    p[i] = Some(page);
                    p.iter().all(Option::is_some)
                };
                if !all {
                    return;
                }
                let Some(reader) = weak.upgrade() else { return };
                let pages = std::mem::take(&mut *pages.borrow_mut())
                    .into_iter()
                    .map(|p| p.unwrap_or(Err(ChannelError::Unconfirmed)))
                    .collect();
                reader.caught_up(pages, since.as_deref());
            });
        }
        Ok(Follow {
            id,
            reader,
            feeds: Rc::downgrade(&self.0),
        })
    }

    /// Readers following now (for stats and tests).
    pub fn readers(&self) -> usize {
        let mut ids: Vec<u64> = self
            .0
            .readers
            .borrow()
            .values()
            .flatten()
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }
}

impl FeedsInner {
    /// A live event of `name`: to each of its readers; how many.
    fn dispatch(&self, name: &Key, pos: Option<Position>, data: &Bytes) -> usize {
        let readers: Vec<Rc<Reader>> = self
            .readers
            .borrow()
            .get(name)
            .map(|l| l.iter().filter_map(|(_, r)| r.upgrade()).collect())
            .unwrap_or_default();
        // To more than a few readers the sends are queued (`connection::fan_out`).
        let mut sent = 0;
        crate::connection::fan_out::to_many(
            readers.len() > crate::worker::instance::WRITE_NOW_MAX,
            || {
                for r in &readers {
                    for (i, n) in r.names.iter().enumerate() {
                        if n == name {
                            r.event(i, pos, data);
                            sent += 1;
                        }
                    }
                }
            },
        );
        if sent > 0 {
            crate::metrics::delivered_here(sent);
        }
        readers.len()
    }
}

impl Follow {
    /// Where the reader stands, name by name.
    pub fn positions(&self) -> Vec<Position> {
        self.reader.positions.borrow().clone()
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let Some(feeds) = self.feeds.upgrade() else {
            return;
        };
        let mut gone = Vec::new();
        {
            let mut readers = feeds.readers.borrow_mut();
            for name in &self.reader.names {
                if let Some(list) = readers.get_mut(name) {
                    list.retain(|(id, _)| *id != self.id);
                    if list.is_empty() {
                        readers.remove(name);
                        let keep = feeds.pinned.borrow().contains(name)
                            || feeds.external.borrow().contains(name);
                        if !keep {
                            gone.push(name.clone());
                        }
                    }
                }
            }
        }
        if !gone.is_empty() {
            feeds.client.unsubscribe(gone);
        }
    }
}
