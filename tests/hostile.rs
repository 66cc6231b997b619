//! Hostile-input tests: what a broken or hostile peer (a caller who reaches the gRPC port,
//! an identity provider, a resource API) can make tokenvend spend or do. One module per
//! area.

mod support;

mod hostile {
    mod connections;
    mod echo;
    mod provider_values;
    mod rejected_storm;
    mod statuses;
    mod streams;
}
