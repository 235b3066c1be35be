//! The endpoint's metrics (Prometheus names, on `/metrics`), named once here.

pub const ACCEPTED: &str = "flowhouse_endpoint_accepted_total";
pub const REFUSED: &str = "flowhouse_endpoint_refused_total";
pub const REQUEST_SECONDS: &str = "flowhouse_endpoint_request_seconds";
pub const DEAD_LETTERED: &str = "flowhouse_endpoint_dead_lettered_total";
pub const WEBSOCKETS: &str = "flowhouse_endpoint_websockets";
pub const IN_FLIGHT: &str = "flowhouse_endpoint_in_flight_messages";
pub const DELIVERY_SECONDS: &str = "flowhouse_endpoint_delivery_seconds";

/// Registers descriptions, so that `/metrics` explains each series.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        ACCEPTED,
        "Events and log lines acknowledged by Kafka, by kind and transport."
    );
    describe_counter!(REFUSED, "Requests refused, by HTTP status.");
    describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Time to accept one HTTP batch, Kafka's acknowledgement included, by kind."
    );
    describe_counter!(
        DEAD_LETTERED,
        "Invalid events received on a websocket and sent to the dead-letter topic."
    );
    describe_gauge!(WEBSOCKETS, "Open /events/in websockets.");
    describe_gauge!(
        IN_FLIGHT,
        "Messages handed to the producer and not yet acknowledged by Kafka."
    );
    describe_histogram!(
        DELIVERY_SECONDS,
        metrics::Unit::Seconds,
        "From handing a message to the producer to Kafka's answer, by outcome (ok, error)."
    );
}
