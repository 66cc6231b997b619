//! Hostile callers: what someone who reaches the gRPC port can make the server spend, and
//! what it answers to requests no honest client sends. One module per area.

mod support;

mod hostile {
    mod connections;
    mod statuses;
    mod streams;
}
