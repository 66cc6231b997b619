//! Hostile-input tests: what an attacker, a broken disk, a misbehaving provider or a
//! careless edit can do to a running server, and what it gets. One module per area.

mod support;

mod hostile {
    mod chain_disk;
    mod config_edits;
}
