//! Kubernetes API source (being written).
