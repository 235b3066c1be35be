//! The shape of Flowhouse's data, defined once and shared by every service.

pub mod migrate;
