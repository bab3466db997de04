"""Throughput harness for shipper: a load generator and an end-to-end benchmark."""
