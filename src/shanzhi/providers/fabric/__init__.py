"""The tenant fabric shared by the clouds whose instances live on it (`netns` processes,
`libvirt` VMs with `--option network=fabric`): namespaces, links and routes (`topology`), the
policy in nftables (`nft`), and flow collection (`netlink`, `collector`). `member` gives a
provider the fabric-facing half of its surface."""
