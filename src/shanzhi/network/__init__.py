"""Tenant networks as pure functions: address plans and the nftables policy compiled from VDCs,
apps and their `spec.network`.

Nothing here touches a kernel: the netns provider applies what these functions return, and the
tests check them without root. (The kernel adapters live beside the provider that uses them,
`shanzhi.providers.fabric`.)
"""
