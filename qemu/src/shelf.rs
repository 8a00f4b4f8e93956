//! A shelf: a [`Backplane`] with one [`Card`] per tap, started together and torn down in
//! the right order (cards first, since QEMU holds the taps, then the namespace). Scenarios
//! build on it; it knows nothing about the master or the init protocol.
//!
//! What it does not do: start the master (run it with `backplane().exec(..)`), or run
//! waits on several cards concurrently (waits are cheap file polls, done in turn).

use std::time::{Duration, Instant};

use crate::backplane::{Backplane, BackplaneError};
use crate::card::{Card, CardConfig, CardError, Matched, Nic, NicModel, Pattern};

/// Errors of a shelf.
#[derive(Debug, thiserror::Error)]
pub enum ShelfError {
    /// The backplane could not be built.
    #[error("cannot build the shelf's backplane")]
    Backplane(#[source] BackplaneError),
    /// A card failed.
    #[error("shelf card {index}")]
    Card {
        /// Card index.
        index: usize,
        /// The cause.
        #[source]
        source: Box<CardError>,
    },
}

/// Cards on a backplane. Field order matters: cards drop before the backplane.
#[derive(Debug)]
pub struct Shelf {
    cards: Vec<Card>,
    backplane: Backplane,
}

/// The MAC address the shelf gives card `i`: locally administered 52:54:00:5b, then
/// i + 1 as two bytes (a shelf never has 65535 cards).
pub fn card_mac(i: usize) -> [u8; 6] {
    let [hi, lo] = u16::try_from(i + 1).unwrap_or(u16::MAX).to_be_bytes();
    [0x52, 0x54, 0x00, 0x5b, hi, lo]
}

impl Shelf {
    /// Builds a backplane with `n` taps and starts `n` cards; `configure(i)` returns each
    /// card's configuration, whose NIC the shelf sets (virtio-net on tap i, [`card_mac`]).
    pub fn start(
        n: usize,
        mut configure: impl FnMut(usize) -> CardConfig,
    ) -> Result<Self, ShelfError> {
        let backplane = Backplane::new(n).map_err(ShelfError::Backplane)?;
        let mut shelf = Self {
            cards: Vec::with_capacity(n),
            backplane,
        };
        for i in 0..n {
            let mut cfg = configure(i);
            cfg.nic = Some(Nic {
                netns: shelf.backplane.netns().to_string(),
                tap: format!("tap{i}"),
                mac: card_mac(i),
                model: NicModel::VirtioNet,
            });
            let card = Card::start(cfg).map_err(|source| ShelfError::Card {
                index: i,
                source: Box::new(source),
            })?;
            shelf.cards.push(card);
        }
        Ok(shelf)
    }

    /// The backplane.
    pub fn backplane(&self) -> &Backplane {
        &self.backplane
    }

    /// Card `i`.
    pub fn card(&mut self, i: usize) -> Option<&mut Card> {
        self.cards.get_mut(i)
    }

    /// All cards.
    pub fn cards(&mut self) -> &mut [Card] {
        &mut self.cards
    }

    /// Waits until every card printed a line matching `pattern`, all within one deadline.
    pub fn wait_all(
        &mut self,
        pattern: impl Into<Pattern>,
        timeout: Duration,
    ) -> Result<Vec<Matched>, ShelfError> {
        let pattern = pattern.into();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(self.cards.len());
        for (index, card) in self.cards.iter_mut().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            out.push(
                card.wait_for(pattern.clone(), left)
                    .map_err(|source| ShelfError::Card {
                        index,
                        source: Box::new(source),
                    })?,
            );
        }
        Ok(out)
    }

    /// Power-cycles every card (cut, then start again).
    pub fn power_cycle_all(&mut self) -> Result<(), ShelfError> {
        for (index, card) in self.cards.iter_mut().enumerate() {
            card.power_cycle().map_err(|source| ShelfError::Card {
                index,
                source: Box::new(source),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_distinct_and_local() {
        assert_eq!(card_mac(0), [0x52, 0x54, 0, 0x5b, 0, 1]);
        assert_ne!(card_mac(1), card_mac(2));
        assert_eq!(card_mac(0)[0] & 0x02, 0x02);
        assert_eq!(card_mac(255), [0x52, 0x54, 0, 0x5b, 1, 0]);
    }
}
