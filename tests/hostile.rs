//! Hostile-input tests: what a broken or hostile peer (an identity provider, a resource
//! API, a caller) can make tokenvend do. One module per area.

mod support;

mod hostile {
    mod echo;
    mod provider_values;
    mod rejected_storm;
}
