//! Hostile-input tests: what a hostile or broken peer (a caller who reaches the gRPC port,
//! an identity provider, a resource API), a broken disk or a careless edit can make
//! tokenvend spend or do, and what it gets. One module per area.

mod support;

mod hostile {
    mod admin;
    mod chain_disk;
    mod config_edits;
    mod connections;
    mod echo;
    mod failover;
    mod identities;
    mod provider_values;
    mod rejected_storm;
    mod statuses;
    mod streams;
}
