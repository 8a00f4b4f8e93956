//! shelfboot card agent: the sans-IO boot conversation and the flash trait, shared by init and simulated cards.

pub mod agent;
pub mod boot;
pub mod command;
pub mod driver;
pub mod flash;
pub mod resident;
pub mod sim;
