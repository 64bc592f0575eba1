//! The MQTT worker pool (being built).
