//! The two streams Flowhouse carries, events and log lines, each with its topic and its table.

use crate::contract::TopicArgs;

/// Events or log lines: what a topic, a table, a batch or a request body holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    Events,
    Logs,
}

impl Stream {
    pub const ALL: [Stream; 2] = [Stream::Events, Stream::Logs];

    /// The raw table the stream is stored in.
    pub fn table(self) -> &'static str {
        match self {
            Stream::Events => "events",
            Stream::Logs => "logs",
        }
    }

    /// The word for its items, in messages and metric labels.
    pub fn plural(self) -> &'static str {
        match self {
            Stream::Events => "events",
            Stream::Logs => "logs",
        }
    }

    /// The stream's topic among the configured ones.
    pub fn topic(self, topics: &TopicArgs) -> &str {
        match self {
            Stream::Events => &topics.events_topic,
            Stream::Logs => &topics.logs_topic,
        }
    }
}
