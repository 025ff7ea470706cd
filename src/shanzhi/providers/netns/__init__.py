"""The `netns` provider: hosts and instances as Linux network namespaces on a routed fabric,
with the tenant policy enforced by nftables on every host (see `provider`)."""
