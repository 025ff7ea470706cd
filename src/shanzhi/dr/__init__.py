"""Disaster recovery's engines, configured: Patroni and etcd, as pure functions.

Split brain is the failure that matters and home-made consensus is how it happens, so Shanzhi
runs the engines trusted for it: etcd for the quorum, Patroni for PostgreSQL's leader key,
fencing, synchronous replication and rewind. This package says how they are configured (a
member's Patroni YAML, an etcd member's command line, a connection string) and reads what
they report (a member's role, timeline and lag). No I/O here: the DR controller runs the
processes and the store keeps what they need.
"""
